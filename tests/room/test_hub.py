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

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    if not HUB.exists():
        pytest.skip(f"jupyterhub is not installed ({HUB}): pip install 'jupyterhub>=6.1,<7' (make hub does)")
    if not PROXY.exists():
        pytest.skip(f"the proxy is not installed ({PROXY}): make hub installs it with npm")
    state = tmp_path_factory.mktemp("hub")
    port, api, proxy_api = _free_port(), _free_port(), _free_port()
    env = dict(os.environ, WORKBENCH_WORKSHOP_CODE=CODE, WORKBENCH_INSTRUCTOR="teacher",
               WORKBENCH_HUB_STATE=str(state), WORKBENCH_HUB_PORT=str(port), WORKBENCH_HUB_API_PORT=str(api),
               WORKBENCH_PROXY_API_PORT=str(proxy_api), PATH=f"{HUB.parent}{os.pathsep}{os.environ['PATH']}")
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
        os.killpg(proc.pid, signal.SIGTERM)  # the hub and the proxy it started (its own session)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


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
