"""``make hub``'s configuration on a real JupyterHub: the hub starts from deploy/jupyterhub_config.py
on free ports, the instructor and three attendees log in with the workshop code, a wrong code and
a name with path characters are refused, and only the instructor is the hub's admin.  The test
starts and stops its own hub (and its proxy); it skips, saying what is missing, where jupyterhub
or the npm proxy (``make hub`` installs both) is not installed."""

from __future__ import annotations

import http.cookiejar
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PROXY = ROOT / "deploy" / "node_modules" / ".bin" / "configurable-http-proxy"
HUB = Path(sys.executable).parent / "jupyterhub"
CODE = "lora-2026"
LEASE_S = 6  # the room's lease in this test: a stopped server's turn is reclaimed after it

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """The hub from deploy/jupyterhub_config.py on free ports, with the room's queue on a Ray head
    started here (as ``make hub`` does), the tiny preset, and a short lease (a stopped server's
    turn is reclaimed after it)."""
    if not HUB.exists():
        pytest.skip(f"jupyterhub is not installed ({HUB}): pip install 'jupyterhub>=6.1,<7' (make hub does)")
    if not PROXY.exists():
        pytest.skip(f"the proxy is not installed ({PROXY}): make hub installs it with npm")
    from workbench.room.ray_head import start_head

    state = tmp_path_factory.mktemp("hub")
    for plugin, body in {"apputils-extension/notification": '{"fetchNews": "false", "checkForUpdates": false}',
                         "notebook-extension/tracker": '{"autoStartDefaultKernel": true, "windowingMode": "none"}'}.items():
        path = state / "lab-settings" / "@jupyterlab" / f"{plugin}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(body)
    head = start_head(cpus=1, log=state / "ray-head.log")
    port, api, proxy_api = _free_port(), _free_port(), _free_port()
    env = dict(os.environ, WORKBENCH_WORKSHOP_CODE=CODE, WORKBENCH_INSTRUCTOR="teacher",
               WORKBENCH_HUB_STATE=str(state), WORKBENCH_HUB_PORT=str(port), WORKBENCH_HUB_API_PORT=str(api),
               WORKBENCH_PROXY_API_PORT=str(proxy_api), WORKBENCH_RAY_ADDRESS=head.address,
               WORKBENCH_PRESET="tiny", WORKBENCH_ROOM_LEASE_S=str(LEASE_S),
               JUPYTERLAB_SETTINGS_DIR=str(state / "lab-settings"),
               PATH=f"{HUB.parent}{os.pathsep}{os.environ['PATH']}")
    log = (state / "hub.log").open("w")
    proc = subprocess.Popen([str(HUB), "-f", str(ROOT / "deploy" / "jupyterhub_config.py")], cwd=state, env=env,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{base}/hub/api", timeout=5) as r:
                    version = r.read().decode()
                break
            except (urllib.error.URLError, ConnectionError, OSError):
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"the hub did not start:\n{(state / 'hub.log').read_text()[-3000:]}")
                time.sleep(0.5)
        yield base, state, version
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the hub, the proxy and the servers it started (its own session)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()
        head.stop()


def _log_in(base: str, name: str, code: str) -> tuple[urllib.request.OpenerDirector, str, str]:
    """Log in through the hub's own form (with its XSRF token); the opener keeps the cookies."""
    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    page = opener.open(f"{base}/hub/login", timeout=30).read().decode()
    xsrf = re.search(r'name="_xsrf"\s+value="([^"]+)"', page).group(1)
    data = urllib.parse.urlencode({"username": name, "password": code, "_xsrf": xsrf}).encode()
    try:
        with opener.open(urllib.request.Request(f"{base}/hub/login?next=/hub/home", data=data), timeout=60) as r:
            return opener, r.geturl(), r.read().decode()
    except urllib.error.HTTPError as e:
        return opener, e.geturl(), e.read().decode()


def test_the_hub_answers_from_the_repositorys_config(hub):
    base, state, version = hub
    assert '"version": "6.' in version
    assert (state / "room" / "room.db").is_file()  # the room exists before anyone logs in
    assert (state / "jupyterhub.sqlite").is_file()


def test_instructor_and_three_attendees_log_in_and_only_the_instructor_is_admin(hub):
    base, state, _ = hub
    for name in ("teacher", "ada", "bob", "cy"):
        opener, url, page = _log_in(base, name, CODE)
        assert url.endswith("/hub/home") and name in page, (name, url)
        try:
            status = opener.open(f"{base}/hub/admin", timeout=30).status
        except urllib.error.HTTPError as e:
            status = e.code
        assert status == (200 if name == "teacher" else 403), name
    from workbench.room.store import RoomStore
    assert RoomStore(state / "room").is_instructor("teacher") and not RoomStore(state / "room").is_instructor("ada")


@pytest.mark.parametrize("name, code", [("ada", "wrong-code"), ("../ada", CODE), ("Ada Lovelace", CODE)])
def test_a_wrong_code_or_a_name_with_path_characters_is_refused(hub, name, code):
    base, _, _ = hub
    _, url, page = _log_in(base, name, code)
    assert "/hub/login" in url and "Invalid username or password" in page


def test_an_attendee_lands_in_the_workbench_and_the_instructor_in_the_classroom(hub):
    """Each person's server starts (the simple spawner) with their notebook in their home and opens it."""
    base, state, _ = hub
    people = {"ada": "workbench.ipynb", "teacher": "classroom.ipynb"}
    openers = {name: _log_in(base, name, CODE)[0] for name in people}
    for name, opener in openers.items():  # both servers start at once
        opener.open(f"{base}/hub/spawn", timeout=120).read()
    for name, notebook in people.items():
        deadline = time.monotonic() + 240
        while True:  # the server's front page sends the person to their notebook (after the hub's OAuth)
            try:
                with openers[name].open(f"{base}/user/{name}/", timeout=30) as r:
                    landed = r.geturl()
                if landed.endswith(f"/user/{name}/lab/tree/{notebook}"):
                    break
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"{name}'s server did not open {notebook}:\n{(state / 'hub.log').read_text()[-3000:]}")
            time.sleep(1)
        assert (state / "homes" / name / notebook).is_file() and (state / "homes" / name / "_setup.py").is_file()


# --------------------------------------------------------------------------- the room in three browsers

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ARTIFACTS = ROOT / "test-artifacts"
VIEWPORT = {"width": 1366, "height": 768}
RANKS = {"cy": 2, "ada": 4, "bob": 8}  # cy first, with a long run: the one whose server is stopped mid-run
LONG_STEPS = 20000  # far more than it gets to: its server is stopped a few steps in
REASON = "the same learning rate for everyone: only the rank differs"


def _open_own_server(context, base: str, name: str):
    """Log in through the hub's form, start the server; returns the page (its notebook opening)."""
    page = context.new_page()
    page.goto(f"{base}/hub/login")
    page.fill("#username_input", name)
    page.fill("#password_input", CODE)
    page.click("#login_submit")
    page.wait_for_url(re.compile(r".*/hub/(home|spawn.*|user/.*)|.*/user/.*"), timeout=60_000)
    page.goto(f"{base}/hub/spawn")
    return page


def _run_all(page, notebook: str, ready: str) -> None:
    """The notebook open with its kernel idle, Run All from the menu, until ``ready`` is drawn."""
    page.wait_for_url(f"**/lab/tree/{notebook}", timeout=300_000)
    page.wait_for_selector(".jp-NotebookPanel [data-status='idle']", timeout=300_000)
    for attempt in range(3):  # a Run All sent while the notebook is still settling can stop early
        page.locator(".lm-MenuBar-itemLabel", has_text=re.compile("^Run$")).click()
        page.locator(".lm-Menu-itemLabel", has_text=re.compile("^Run All Cells$")).click()
        try:
            page.locator(ready).first.wait_for(timeout=240_000)
            return
        except Exception:
            if attempt == 2:
                raise


def _set(page, label: str, value: str) -> None:
    """Type a value into the panel's control labelled ``label`` (a text box or a slider's readout)."""
    box = page.locator(".workbench-panel .widget-inline-hbox").filter(
        has=page.locator("label.widget-label", has_text=re.compile(f"^{label}$"))).first
    field = box.locator("input, .widget-readout").first
    field.click()
    field.fill(value)
    field.press("Enter")


def _stored(state: Path):
    from workbench.room.store import RoomStore

    table = RoomStore(state / "room").runs("teacher")
    return {row["attendee"]: row for row in table.to_dict("records")}


def _number(value) -> float:
    """A table cell as a number (a run still training may have none yet: 0)."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return 0.0


def _until(what, timeout: float, why: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = what()
        if got:
            return got
        time.sleep(1)
    pytest.fail(f"{why} (waited {timeout:.0f} s)")


@pytest.mark.browser
@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed (make test installs it)")
def test_three_attendees_train_at_once_and_the_instructor_sees_the_room(hub):
    """Three attendees log in and train the tiny preset at ranks 2, 4 and 8 at the same time; the
    queue (two at once) makes the last one wait, saying so; the instructor's classroom shows the
    three runs with their names; one attendee cannot delete another's run; stopping cy's server
    mid-run leaves cy's run failed with its curve so far while the others complete."""
    from playwright.sync_api import sync_playwright

    from workbench.room.store import NotYours, RoomStore

    base, state, _ = hub
    ARTIFACTS.mkdir(exist_ok=True)
    RoomStore(state / "room").new_exercise("teacher", "which rank?", {"lr": 0.001}, reason=REASON)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        contexts = {name: browser.new_context(viewport=VIEWPORT) for name in (*RANKS, "teacher")}
        try:
            pages = {name: _open_own_server(contexts[name], base, name) for name in contexts}  # all start at once
            for name, rank in RANKS.items():
                page = pages[name]
                _run_all(page, "workbench.ipynb", ".workbench-panel button.jupyter-button:has-text('Train')")
                _set(page, "rank", str(rank))
                if name == "cy":
                    _set(page, "steps", str(LONG_STEPS))
            # The exercise's locked setting is greyed out, with the reason beside it.
            lr = pages["bob"].locator(".workbench-panel .widget-text").filter(
                has=pages["bob"].locator("label.widget-label", has_text=re.compile("^lr$"))).locator("input")
            assert lr.is_disabled() and lr.input_value() == "0.001"
            assert REASON in pages["bob"].locator(".workbench-locked").inner_text()
            for name in RANKS:  # one after another, as fast as the clicks go: cy and ada run, bob waits
                pages[name].locator(".workbench-panel button.jupyter-button:has-text('Train')").click()
            # Two run at once (the Ray head's queue, limit = this machine's cores); bob, last, waits and is told.
            bob = pages["bob"].locator(".workbench-panel .workbench-message").first
            told = _until(lambda: "queued:" in (bob.text_content() or "") and bob.text_content(), 120,
                          "bob's panel never said his run was queued")
            assert re.search(r"queued: \d+ ahead of you \(Stop leaves the queue\)", told), told
            pages["bob"].screenshot(path=str(ARTIFACTS / "hub-attendee-queued.png"))

            # cy's long run is mid-way (its curve checkpointed): the instructor stops cy's server.
            _until(lambda: (lambda r: r.get("cy", {}).get("status") == "running"
                            and _number(r["cy"]["steps_done"]) >= 6)(_stored(state)), 300, "cy's run did not get going")
            xsrf = next(c["value"] for c in contexts["teacher"].cookies()
                        if c["name"] == "_xsrf" and c["path"].startswith("/hub"))
            answer = contexts["teacher"].request.delete(f"{base}/hub/api/users/cy/server",
                                                        headers={"X-XSRFToken": xsrf, "Referer": f"{base}/hub/admin"})
            assert answer.status in (202, 204), (answer.status, answer.text())

            teacher = pages["teacher"]
            _run_all(teacher, "classroom.ipynb", "button.jupyter-button:has-text('Refresh')")
            rows = _until(lambda: (lambda r: len(r) == 3 and r)(_stored(state)), 300,
                          "the three runs did not all reach the room's store")
            assert {n: r["rank"] for n, r in rows.items()} == RANKS

            done = _until(lambda: (lambda r: all(r[n]["status"] == "completed" for n in ("ada", "bob")) and r)(
                _stored(state)), 300, "ada's and bob's runs did not complete")
            time.sleep(LEASE_S + 2)  # cy's kernel is gone: its turn's lease runs out
            teacher.locator("button.jupyter-button:has-text('Refresh')").click()
            cy = _until(lambda: (lambda r: r["status"] in ("failed", "stopped") and r)(_stored(state)["cy"]), 120,
                        "cy's run was not recorded as failed or stopped after the server stopped")
            from workbench.records import store as run_store

            record = run_store.load_run(RoomStore(state / "room").runs_dir("cy") / cy["run_id"])
            curve = record.history.dropna(subset=["train_loss"])
            assert 0 < len(curve) and curve["step"].max() < LONG_STEPS, "cy's curve so far is not kept"
            assert record.status == "stopped" or "server stopped" in record.message, record.message

            # An attendee may not delete another's run; the message says whose it is.
            with pytest.raises(NotYours, match=f"run '{done['bob']['run_id']}' is bob's: you \\(ada\\) can delete "
                                               "only your own runs"):
                RoomStore(state / "room").delete(done["bob"]["run_id"], "ada")
            assert (RoomStore(state / "room").runs_dir("bob") / done["bob"]["run_id"]).is_dir()

            # The instructor's page: the three runs with their names, in the refreshed output.
            out = teacher.locator(".widget-output").filter(has_text="cy").last
            for name, row in rows.items():
                teacher.wait_for_function("(t) => document.body.innerText.includes(t)", arg=row["run_id"],
                                          timeout=60_000)
            text = teacher.locator(".jp-NotebookPanel").inner_text()
            assert all(name in text for name in RANKS)
            teacher.locator("button.jupyter-button:has-text('Refresh')").scroll_into_view_if_needed()
            teacher.screenshot(path=str(ARTIFACTS / "hub-instructor-room.png"))
            out.screenshot(path=str(ARTIFACTS / "hub-instructor-room-table.png"))
        except Exception:
            for name, ctx in contexts.items():
                for i, pg in enumerate(ctx.pages):
                    pg.screenshot(path=str(ARTIFACTS / f"hub-failure-{name}-{i}.png"))
            raise
        finally:
            browser.close()
