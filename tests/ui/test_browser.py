"""The workbench in a real browser: JupyterLab and Voila served on 127.0.0.1, driven by
Debian's Chromium through Playwright at a 1366 x 657 viewport (a laptop's browser window),
as a workshop attendee would use them.

Works on a copy of notebooks/workbench.ipynb whose parameters cell is set to the tiny
preset (so a run takes seconds) and to temporary run and report folders.  Checked: the
panel is in view after Run All (JupyterLab) and on opening (Voila); bad numbers (lr 0,
"abc", "0,001") are refused with a message and start no run; an lr = 10 run is flagged,
not shown as a success; while a run trains, the controls, the progress bar and the live
plot are all in the viewport; two runs differing only in lr are named apart in the run
list, the table and the export; Hide and Delete (with its confirmation); Export's files
are readable by others (mode 0o644 under umask 022) and Voila's download link yields
them.  Generate mode (JupyterLab and Voila): the task switch brings the language model's
role toggles and no "head only"; a short run of the bundled story-lm (4 steps typed in
the box) ends with its exact match, and under "Try it" the base model's and the run's
answers to the same prompt stand side by side, in view, without a click, and again after
one; the runs table shows exact match and each run's last answer, and its answers per
evaluation.  JupyterLab also: the Run All instruction is shown (Voila hides it: an app has no
cells); leaving the tall Runs tab leaves no blank page below the panel; a default-length
generate run prints the time of each phase as the panel measured it, and the time from the first
Train click to the first loss on screen; and the checkout's own
notebooks/workbench.ipynb, opened and run as ``make lab`` serves it (its --config), is not
marked changed on open and is byte-for-byte the committed file after a save.  Screenshots go
to test-artifacts/ (kept on failure too).
"""

from __future__ import annotations

import json
import os
import re
import stat
import zipfile
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = ROOT / "test-artifacts"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed (make test installs it)"),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(url: str, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except Exception:
            time.sleep(0.3)
    raise TimeoutError(f"{url} did not answer within {timeout} s")


@contextmanager
def _server(cmd: list[str], url: str, env: dict, log: Path):
    """Run a server in its own process group; stop the whole group afterwards."""
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            _wait_http(url)
            yield proc
        finally:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=15)
            except Exception:
                os.killpg(proc.pid, signal.SIGKILL)


@pytest.fixture
def workspace(tmp_path):
    """A notebook copy set to the tiny preset, and a private Jupyter environment."""
    nb_dir = tmp_path / "nb"
    nb_dir.mkdir()
    nb = json.loads((ROOT / "notebooks" / "workbench.ipynb").read_text())
    params = next(c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", []))
    params["source"] = (
        f'preset = "tiny"\nmodel = "tiny-bert"\nruns_dir = {str(tmp_path / "runs")!r}\n'
        f'reports_dir = {str(tmp_path / "reports")!r}\nself_test = False\n'
    )
    (nb_dir / "workbench.ipynb").write_text(json.dumps(nb))
    # The notebook's setup helper beside it (it then finds the installed editable workbench).
    (nb_dir / "_setup.py").write_text((ROOT / "notebooks" / "_setup.py").read_text())
    settings = tmp_path / "settings"
    for plugin, body in {
        "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"autoStartDefaultKernel": True},
        "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false", "checkForUpdates": False},
    }.items():
        path = settings / plugin
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(body))
    env = dict(os.environ)
    for var, sub in {"JUPYTER_CONFIG_DIR": "cfg", "JUPYTER_RUNTIME_DIR": "rt", "IPYTHONDIR": "ipy", "MPLCONFIGDIR": "mpl",
                     "JUPYTERLAB_WORKSPACES_DIR": "ws"}.items():
        (tmp_path / sub).mkdir()
        env[var] = str(tmp_path / sub)
    env["JUPYTERLAB_SETTINGS_DIR"] = str(settings)
    env["HF_HUB_OFFLINE"] = "1"
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    ARTIFACTS.mkdir(exist_ok=True)
    return {"dir": nb_dir, "env": env, "tmp": tmp_path}


VIEWPORT = {"width": 1366, "height": 657}


@contextmanager
def _browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        try:
            page = browser.new_page(viewport=VIEWPORT, accept_downloads=True)
            yield page
        finally:
            browser.close()


def _shot(page, name: str) -> None:
    """What the user sees (the viewport, not the whole page: the point is what fits)."""
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"))


def _make_lab_config() -> str:
    """The ``--config=`` flag ``make lab`` starts JupyterLab with (read from the Makefile, so the test uses it too)."""
    (flag,) = re.findall(r"--config=\S+", (ROOT / "Makefile").read_text())
    return flag.replace("--config=", f"--config={ROOT}/")


@contextmanager
def _jupyterlab_after_run_all(workspace, failure_shot: str, root: Path | None = None,
                              notebook: str = "workbench.ipynb", on_open=None):
    """JupyterLab on the workspace's notebook copy, Run All done, the panel drawn: yields the page.

    The one way in for every JupyterLab test (server on a free loopback port, the notebook
    opened, its kernel idle, Run All until Train is drawn); a failure inside is shot as
    ``failure_shot``.  ``root``/``notebook``: another server root and notebook (the checkout's own);
    ``on_open(page)`` is called once the notebook is open, before Run All.  The server gets
    ``make lab``'s ``--config`` (its pre-save hook)."""
    port = _free_port()
    cmd = [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--allow-root", "--IdentityProvider.token=",
           "--ServerApp.password=", "--ServerApp.ip=127.0.0.1", f"--port={port}",
           f"--ServerApp.root_dir={root or workspace['dir']}", "--LabApp.expose_app_in_browser=True",
           _make_lab_config()]
    base = f"http://127.0.0.1:{port}"
    with _server(cmd, f"{base}/api/status", workspace["env"], workspace["tmp"] / "lab.log"), _browser() as page:
        try:
            page.goto(f"{base}/lab/tree/{notebook}")
            page.wait_for_selector(".jp-NotebookPanel [data-status='idle']", timeout=90_000)
            page.wait_for_selector(".jp-NotebookPanel .jp-Cell", timeout=30_000)
            if on_open is not None:
                on_open(page)
            page.locator(".jp-NotebookPanel .jp-Cell").first.click()
            train = page.locator(".workbench-panel button.jupyter-button:has-text('Train')")
            for attempt in range(3):  # a Run All sent while the notebook is still settling can stop early
                page.evaluate("window.jupyterapp.commands.execute('notebook:run-all-cells')")
                try:
                    train.wait_for(timeout=60_000)
                    break
                except Exception:
                    if attempt == 2:
                        raise
            page.wait_for_timeout(1500)  # let Run All's scrolling settle
            yield page
        except Exception:
            _shot(page, failure_shot)
            raise


def _in_view(page, locator) -> bool:
    """The element is drawn wholly inside the viewport (no scrolling needed to see it)."""
    box = locator.bounding_box()
    return (box is not None and box["width"] > 0 and box["y"] >= 0 and box["x"] >= 0
            and box["y"] + box["height"] <= VIEWPORT["height"] + 1 and box["x"] + box["width"] <= VIEWPORT["width"] + 1)


def _panel(page):
    return page.locator(".workbench-panel")


def _tab(page, title: str) -> None:
    _panel(page).locator(".lm-TabBar-tab", has_text=title).first.click()


def _field(page, name: str):
    return _panel(page).locator(".widget-text").filter(
        has=page.locator("label.widget-label", has_text=re.compile(f"^{name}$"))).locator("input")


def _message(page) -> str:
    return _panel(page).locator(".workbench-message").first.text_content()


def _runs(page) -> list[str]:
    """The run ids in the runs table (its last column), hidden tab or not."""
    cells = _panel(page).locator("table.workbench-runs tbody tr td:last-child")
    return [c.strip() for c in cells.all_text_contents()]


def _refusals(page, runs_dir: Path, name: str) -> None:
    """lr 0, 'abc' and '0,001' are refused where typed: the box is marked red, Train is off with the
    reason beside it, in view (not only in the readout below the fold), and no run starts."""
    before = sorted(p.name for p in runs_dir.iterdir()) if runs_dir.exists() else []
    train = _panel(page).locator("button.jupyter-button:has-text('Train')")
    for typed, said in [("0", "lr (learning rate) must be a positive number, got 0.0"),
                        ("abc", "got 'abc', which is not a number"),
                        ("0,001", "which has a decimal comma: type 0.001")]:
        _field(page, "lr").fill(typed)
        page.wait_for_function("(t) => [...document.querySelectorAll('.workbench-train-reason')].some("
                               "e => e.textContent.includes(t))", arg=said, timeout=10_000)
        assert train.is_disabled()
        reason = _panel(page).locator(".workbench-train-reason")
        assert _in_view(page, reason) and "Train is off until this is fixed" in reason.text_content()
        border = page.evaluate("(el) => getComputedStyle(el).borderTopColor",
                               _panel(page).locator(".widget-text").filter(has=page.locator(
                                   "label.widget-label", has_text=re.compile("^lr$"))).element_handle())
        assert border == "rgb(164, 22, 26)", border  # COLORS["error"]
    _shot(page, f"{name}-refused-at-the-field")
    after = sorted(p.name for p in runs_dir.iterdir()) if runs_dir.exists() else []
    assert after == before, "a refused value started a run"


def _train_and_watch(page, lr: str, name: str) -> str:
    """Train with this lr; while it runs, the controls, the progress and the live plot are in view.
    Returns the final message."""
    _tab(page, "Train")
    _field(page, "lr").fill(lr)
    panel = _panel(page)
    page.wait_for_function("() => !document.querySelector('.workbench-problem')", timeout=10_000)
    if float(lr) >= 1:  # flagged before the run, beside the box
        panel.locator(".workbench-lr-warning").wait_for(timeout=10_000)
        _shot(page, f"{name}-lr-warning")
    panel.locator("button.jupyter-button:has-text('Train')").click()
    page.wait_for_function("() => { const b = [...document.querySelectorAll('.workbench-panel button')]"
                           ".find(b => b.textContent.includes('Stop')); return b && !b.disabled; }", timeout=60_000)
    img = panel.locator(".widget-output img").first
    img.wait_for(timeout=120_000)
    # Until a step has been taken the plot only says "waiting"; once one has, the curve is drawn.
    page.wait_for_function("() => { const t = [...document.querySelectorAll('.workbench-panel .widget-label')]"
                           ".map(e => e.textContent).find(t => / \\/ \\d+/.test(t)); "
                           "return t && !t.startsWith('0 /'); }", timeout=120_000)
    # The loading note goes once training has started (it is said after the curve is drawn).
    page.wait_for_function("() => !document.querySelector('.workbench-message').textContent.includes('loading')",
                           timeout=60_000)
    running = page.evaluate("() => [...document.querySelectorAll('.workbench-panel button')]"
                            ".find(b => b.textContent.includes('Stop')).disabled === false")
    for what in (panel.locator("button.jupyter-button:has-text('Train')"), panel.locator(".widget-hprogress"),
                 _field(page, "lr"), img):
        assert _in_view(page, what), f"not in view during the run: {what}"
    if running:
        _shot(page, f"{name}-during-run")
    page.wait_for_function("() => { const b = [...document.querySelectorAll('.workbench-panel button')]"
                           ".find(b => b.textContent.includes('Stop')); return b && b.disabled; }", timeout=180_000)
    page.wait_for_function("() => !document.querySelector('.workbench-message').textContent.startsWith('Training')",
                           timeout=30_000)
    return _message(page)


def _generate_and_try(page, runs_dir: Path, name: str, steps: str | None = "4") -> None:
    """Switch to generate, train story-lm (for ``steps``; None: the preset's 250), and see the base and the
    adapted answers side by side.  The run's phases (training, evaluating, loading) are printed as the panel
    measured them, and an evaluation is caught on screen as it is said."""
    panel = _panel(page)
    panel.locator(".workbench-task button", has_text="generate").click()
    panel.locator(".lm-TabBar-tab", has_text="Try it").first.wait_for(timeout=60_000)
    toggles = panel.locator(".widget-toggle-button")
    page.wait_for_function("() => [...document.querySelectorAll('.workbench-panel .widget-toggle-button')]"
                           ".some(b => b.textContent.trim() === 'FFN in')", timeout=30_000)
    names = [t.strip() for t in toggles.all_text_contents()]
    assert "head only" not in names and "lm_head" not in names and "pooler" not in names, names
    assert {"query", "key", "value", "attention output", "FFN in", "FFN out"} <= set(names), names
    if steps is not None:
        _field(page, "steps").fill(steps)
    before = set(p.name for p in runs_dir.iterdir()) if runs_dir.exists() else set()
    if steps is None:  # a default run evaluates 5 times: catch one, as the panel says it
        _tab(page, "Train")
        # The first Train click of this page (the worker was warmed when the panel started): how long until a
        # loss is on screen ("k / 250, loss ..." beside the bar, the curve drawn with it). Printed, not asserted.
        clicked = time.monotonic()
        _panel(page).locator("button.jupyter-button:has-text('Train')").click()
        seen = page.wait_for_function(
            "() => { const t = [...document.querySelectorAll('.workbench-panel .widget-label')]"
            ".map(e => e.textContent).find(t => /^[1-9][0-9]* \\/ [0-9]+, loss /.test(t)); return t || false; }",
            timeout=300_000, polling=20).json_value()
        print(f"\n[{name}] the first Train click to the first loss on screen: {time.monotonic() - clicked:.2f} s "
              f"(it read {seen!r}; story-lm, the generate preset)")
        page.wait_for_function("() => [...document.querySelectorAll('.workbench-panel .widget-label')]"
                               ".some(e => e.textContent.startsWith('evaluating '))", timeout=300_000, polling=50)
        _shot(page, f"{name}-generate-evaluating")
        page.wait_for_function("() => { const b = [...document.querySelectorAll('.workbench-panel button')]"
                               ".find(b => b.textContent.includes('Stop')); return b && b.disabled; }",
                               timeout=600_000)
        page.wait_for_function("() => /^(Done|Finished)/.test(document.querySelector('.workbench-message')"
                               ".textContent)", timeout=60_000)
        said = _message(page)
        took = re.search(r"took [0-9.]+ s: [0-9.]+ s training \([0-9.]+ s/step\), [0-9.]+ s evaluating, "
                         r"[0-9.]+ s loading, [0-9.]+ s between steps", said)
        assert took, said
        print(f"\n[{name}] a default generate run (250 steps), as the panel measured it: {took.group(0)}")
        _shot(page, f"{name}-generate-done")
    else:
        said = _train_and_watch(page, _field(page, "lr").input_value(), f"{name}-generate")
    new = sorted(set(p.name for p in runs_dir.iterdir()) - before)
    assert len(new) == 1, new
    assert "exact match" in said, said
    # Try it: the newest run has answered the prompt already (no click), beside the base model.
    _tab(page, "Try it")
    newest = panel.locator(".workbench-answer[data-who='newest run'] pre")
    base = panel.locator(".workbench-answer[data-who='base model'] pre")
    newest.wait_for(timeout=60_000)
    assert new[0] in panel.locator(".workbench-answer[data-who='newest run']").text_content()
    page.wait_for_timeout(500)
    panel.locator("button.jupyter-button:has-text('Try it')").click()
    page.wait_for_function("() => document.querySelector('.workbench-message').textContent.includes('Answered by')",
                           timeout=60_000)
    b = panel.locator(".workbench-answer[data-who='base model']").bounding_box()
    n = panel.locator(".workbench-answer[data-who='newest run']").bounding_box()
    assert abs(b["y"] - n["y"]) < 2 and n["x"] >= b["x"] + b["width"], (b, n)  # side by side, one row
    assert _in_view(page, base) and _in_view(page, newest)
    assert base.text_content() and newest.text_content()
    _shot(page, f"{name}-try-it")
    _tab(page, "Runs")
    table = panel.locator("table.workbench-runs")
    header = table.locator("thead").text_content()
    assert "exact match" in header and "last answer" in header, header
    assert table.bounding_box()["width"] <= panel.bounding_box()["width"] + 1, "the table is wider than the panel"
    assert panel.locator("table.workbench-samples thead").text_content().count(f"step {steps or 250}") == 1
    _shot(page, f"{name}-generate-runs")
    _tab(page, "Compare")
    panel.locator(".widget-output img").nth(1).wait_for(timeout=30_000)
    _shot(page, f"{name}-generate-compare")


def _no_blank_page_after_the_runs_tab(page) -> None:
    """Defect: leaving the tall Runs tab, JupyterLab kept ~500 px of blank page below the panel (a
    notebook scrolls past its last cell).  Scrolled as a reader is when done with the table (the tab
    bar at the window's top), switching to Train must leave no blank page with the panel's top away."""
    _tab(page, "Runs")
    page.evaluate("() => document.querySelector('.workbench-panel .lm-TabBar').scrollIntoView({block: 'start'})")
    page.wait_for_timeout(300)
    _tab(page, "Train")
    page.wait_for_timeout(800)
    box = _panel(page).bounding_box()
    assert box["y"] >= -1 or box["y"] + box["height"] >= VIEWPORT["height"] - 40, box
    _shot(page, "jupyterlab-train-after-runs")


def _check_export_modes(folder: Path) -> set[str]:
    files = [p for p in folder.iterdir() if p.is_file()]
    assert files and {stat.S_IMODE(p.stat().st_mode) for p in files} == {0o644}, \
        {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in files}
    return {p.name for p in files}


def _zip_of(folder: Path) -> Path:
    """The zip an export writes: named after its report folder (report-<date>-<time>.zip)."""
    return folder / f"{folder.name}.zip"


def _wait_for_export(reports: Path, already: set[Path]) -> Path:
    deadline = time.time() + 60
    while time.time() < deadline:
        new = [p for p in reports.glob("report-*") if p not in already and _zip_of(p).is_file()]
        if new:
            return new[0]
        time.sleep(0.3)
    raise TimeoutError("Export wrote no zip")


def test_workbench_in_jupyterlab(workspace):
    runs_dir, reports = workspace["tmp"] / "runs", workspace["tmp"] / "reports"
    with _jupyterlab_after_run_all(workspace, "jupyterlab-failure") as page:
        train = page.locator(".workbench-panel button.jupyter-button:has-text('Train')")
        assert page.locator("text=Loading widget").count() == 0
        # After Run All the panel is in view: its header, message, tabs and Train.
        assert _in_view(page, train) and _in_view(page, _panel(page).locator(".lm-TabBar").first)
        _shot(page, "jupyterlab-after-run-all")

        _refusals(page, runs_dir, "jupyterlab")
        flagged = _train_and_watch(page, "10", "jupyterlab")
        assert re.search(r"did not learn|diverged", flagged), flagged
        assert _panel(page).locator(".workbench-message.workbench-ok").count() == 0, flagged
        _train_and_watch(page, "0.001", "jupyterlab-second")
        ids = sorted(p.name for p in runs_dir.iterdir())
        assert len(ids) == 2 and _runs(page) == ids

        _tab(page, "Runs")
        boxes = _panel(page).locator(".widget-checkbox")
        labels = boxes.all_text_contents()
        assert any("lr=10" in t for t in labels) and any("lr=0.001" in t for t in labels), labels
        table = _panel(page).locator("table.workbench-runs")
        holder = _panel(page)
        assert table.bounding_box()["width"] <= holder.bounding_box()["width"] + 1, "the table is wider than the panel"
        _shot(page, "jupyterlab-runs")
        _no_blank_page_after_the_runs_tab(page)
        _tab(page, "Compare")
        _panel(page).locator(".widget-output img").nth(1).wait_for(timeout=30_000)
        _shot(page, "jupyterlab-compare")

        _tab(page, "Export")
        _panel(page).locator("button.jupyter-button:has-text('Export')").click()
        folder = _wait_for_export(reports, set())
        names = _check_export_modes(folder)
        assert {"runs.csv", "runs.md", "loss_curves.png", _zip_of(folder).name} <= names
        import pandas as pd

        csv = pd.read_csv(folder / "runs.csv")
        assert sorted(csv["run id"]) == ids and sorted(csv["lr"]) == [0.001, 10.0]
        assert csv["run"].nunique() == 2 and any("lr=10" in r for r in csv["run"]), list(csv["run"])
        _panel(page).locator("a.workbench-download").wait_for(timeout=30_000)

        # Hide the lr = 10 run, bring it back, then delete it (after confirming).
        _tab(page, "Runs")
        _panel(page).locator("button:has-text('Select none')").click()
        page.wait_for_function("() => ![...document.querySelectorAll('.workbench-panel .widget-checkbox input')]"
                               ".some(b => b.checked)", timeout=10_000)
        bad = boxes.filter(has_text="lr=10").locator("input")
        bad.check()
        _panel(page).locator("button:has-text('Hide ticked')").click()
        page.wait_for_function("() => document.querySelectorAll('table.workbench-runs tbody tr').length === 1")
        assert (runs_dir / ids[0]).is_dir() and (runs_dir / ids[1]).is_dir()
        _panel(page).locator("button:has-text('Show hidden')").click()
        page.wait_for_function("() => document.querySelectorAll('table.workbench-runs tbody tr').length === 2")
        _panel(page).locator("button:has-text('Select none')").click()
        boxes.filter(has_text="lr=10").locator("input").check()
        _panel(page).locator("button:has-text('Delete ticked')").click()
        confirm = _panel(page).locator("button:has-text('Yes, delete')")
        confirm.wait_for(timeout=10_000)
        assert len(list(runs_dir.iterdir())) == 2  # nothing deleted before the confirmation
        _shot(page, "jupyterlab-delete-confirm")
        confirm.click()
        page.wait_for_function("() => document.querySelectorAll('table.workbench-runs tbody tr').length === 1")
        left = [p.name for p in runs_dir.iterdir()]
        assert len(left) == 1 and _runs(page) == left
        assert "lr=10" not in " ".join(boxes.all_text_contents())

        # The Run All instruction is shown here (Voila hides it): at the notebook's top, scrolled to.
        page.evaluate("() => { const el = document.querySelector('.jp-NotebookPanel .jp-WindowedPanel-outer') "
                      "|| document.querySelector('.jp-NotebookPanel .jp-Notebook'); el.scrollTop = 0; }")
        page.wait_for_timeout(800)
        # (rendered markdown: the cell's hidden source editor holds the same words)
        assert page.locator(".jp-RenderedMarkdown", has_text="In JupyterLab, run all cells").first.is_visible()
        _shot(page, "jupyterlab-notebook-top")


def test_workbench_as_voila_app(workspace):
    voila = Path(sys.executable).parent / "voila"
    if not voila.exists():
        pytest.skip("voila is not installed")
    port = _free_port()
    cmd = [str(voila), str(workspace["dir"] / "workbench.ipynb"), "--no-browser", f"--port={port}",
           "--Voila.ip=127.0.0.1"]
    runs_dir, reports = workspace["tmp"] / "runs", workspace["tmp"] / "reports"
    with _server(cmd, f"http://127.0.0.1:{port}/", workspace["env"], workspace["tmp"] / "voila.log"), _browser() as page:
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        try:
            page.goto(f"http://127.0.0.1:{port}/", timeout=120_000)
            train = page.locator(".workbench-panel button.jupyter-button:has-text('Train')")
            train.wait_for(timeout=120_000)
            # the code is hidden: no editor, no source text (markdown renders inside input areas, so look for code)
            assert page.locator(".jp-InputArea-editor:visible, .cm-editor:visible").count() == 0
            assert page.locator("text=from workbench.ui.panel import Workbench").count() == 0
            assert _in_view(page, train)
            # "run all cells" is JupyterLab's instruction: an app has no cells to run.
            assert page.get_by_text("In JupyterLab, run all cells").count() == 1
            assert not page.get_by_text("In JupyterLab, run all cells").first.is_visible()
            _shot(page, "voila-opened")
            _refusals(page, runs_dir, "voila")
            flagged = _train_and_watch(page, "10", "voila")
            assert re.search(r"did not learn|diverged", flagged), flagged

            _tab(page, "Export")
            _panel(page).locator("button.jupyter-button:has-text('Export')").click()
            folder = _wait_for_export(reports, set())
            names = _check_export_modes(folder)
            link = _panel(page).locator("a.workbench-download")
            link.wait_for(timeout=30_000)
            with page.expect_download(timeout=30_000) as info:
                link.click()
            saved = workspace["tmp"] / "downloaded.zip"
            info.value.save_as(saved)
            assert saved.read_bytes() == _zip_of(folder).read_bytes() and info.value.suggested_filename == \
                _zip_of(folder).name
            with zipfile.ZipFile(saved) as z:
                inside = set(z.namelist())
                # The zip's table names each adapter where the zip has it, not where the server keeps it.
                server = (folder / "runs.csv").read_text()
                for run in runs_dir.iterdir():
                    server = server.replace(str(run / "adapter"), f"adapters/{run.name}")
                assert z.read("runs.csv").decode() == server and str(runs_dir) not in server
            assert (names - {_zip_of(folder).name}) <= inside and "README.txt" in inside
            _shot(page, "voila-export")
        except Exception:
            _shot(page, "voila-failure")
            raise
        assert not errors, errors


def test_generate_mode_as_voila_app(workspace):
    """Voila, generate mode: switch, train story-lm for 4 steps, Try it: base and adapted answers side by side."""
    voila = Path(sys.executable).parent / "voila"
    if not voila.exists():
        pytest.skip("voila is not installed")
    port = _free_port()
    cmd = [str(voila), str(workspace["dir"] / "workbench.ipynb"), "--no-browser", f"--port={port}",
           "--Voila.ip=127.0.0.1"]
    with _server(cmd, f"http://127.0.0.1:{port}/", workspace["env"], workspace["tmp"] / "voila.log"), _browser() as page:
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        try:
            page.goto(f"http://127.0.0.1:{port}/", timeout=120_000)
            page.locator(".workbench-panel button.jupyter-button:has-text('Train')").wait_for(timeout=120_000)
            _generate_and_try(page, workspace["tmp"] / "runs", "voila")
        except Exception:
            _shot(page, "voila-generate-failure")
            raise
        assert not errors, errors


def test_generate_mode_in_jupyterlab(workspace):
    """JupyterLab, generate mode: the same as in Voila, after Run All, with a default-length run (250 steps)
    whose phases are printed: the panel's own split of its time."""
    with _jupyterlab_after_run_all(workspace, "jupyterlab-generate-failure") as page:
        _generate_and_try(page, workspace["tmp"] / "runs", "jupyterlab", steps=None)


def test_the_tracked_notebook_stays_clean_in_jupyterlab(workspace):
    """Defect: notebooks/workbench.ipynb showed as changed on open, and autosave wrote its outputs, so an
    attendee's git pull conflicted.  The checkout's own notebook, opened from the checkout's root as
    ``make lab`` does (with its --config), is not marked changed on open; after Run All and a save,
    its bytes on disk are the committed ones.

    The cause was the kernel's language details, which JupyterLab writes into the notebook when the
    kernel connects: the check waits for the kernel to be connected and idle (the panel's status
    reads "idle" before any kernel exists, which once let an earlier version of this test pass by
    looking too soon), then watches the tab for three seconds."""
    path = ROOT / "notebooks" / "workbench.ipynb"
    before = path.read_bytes()

    def not_dirty(page):
        page.wait_for_function("""() => { const w = window.jupyterapp.shell.currentWidget;
            const k = w && w.sessionContext && w.sessionContext.session && w.sessionContext.session.kernel;
            return !!k && k.connectionStatus === 'connected' && k.status === 'idle'; }""", timeout=90_000)
        for _ in range(6):
            page.wait_for_timeout(500)
            assert page.locator(".jp-NotebookPanel.jp-mod-dirty, .lm-TabBar-tab.jp-mod-dirty").count() == 0
        language = page.evaluate("window.jupyterapp.shell.currentWidget.model.getMetadata('language_info')")
        assert language["version"] == sys.version.split()[0]  # the details the server handed out are this Python's

    with _jupyterlab_after_run_all(workspace, "jupyterlab-tracked-failure", root=ROOT,
                                   notebook="notebooks/workbench.ipynb", on_open=not_dirty) as page:
        assert page.locator(".lm-TabBar-tab.jp-mod-dirty").count() == 1  # the outputs make it dirty
        page.evaluate("window.jupyterapp.commands.execute('docmanager:save')")
        page.wait_for_function("() => !document.querySelector('.lm-TabBar-tab.jp-mod-dirty')", timeout=30_000)
        _shot(page, "jupyterlab-tracked-after-run-all-and-save")
        assert path.read_bytes() == before
