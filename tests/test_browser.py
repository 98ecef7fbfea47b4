"""The workbench in a real browser: JupyterLab and Voila served on 127.0.0.1, driven by
Debian's Chromium through Playwright, as a workshop attendee would use them.

Works on a copy of notebooks/workbench.ipynb whose parameters cell is set to the tiny
preset (so a run takes seconds) and to temporary run and report folders.  Screenshots go
to test-artifacts/ (kept on failure too).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
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


@contextmanager
def _browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1800})
            yield page
        finally:
            browser.close()


def _shot(page, name: str) -> None:
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def _table_rows(page) -> int:
    return page.locator(".widget-html table tbody tr, .widget-output table tbody tr").count()


def test_workbench_in_jupyterlab(workspace):
    port = _free_port()
    cmd = [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--allow-root", "--IdentityProvider.token=",
           "--ServerApp.password=", "--ServerApp.ip=127.0.0.1", f"--port={port}",
           f"--ServerApp.root_dir={workspace['dir']}", "--LabApp.expose_app_in_browser=True"]
    base = f"http://127.0.0.1:{port}"
    with _server(cmd, f"{base}/api/status", workspace["env"], workspace["tmp"] / "lab.log"), _browser() as page:
        try:
            page.goto(f"{base}/lab/tree/workbench.ipynb")
            page.wait_for_selector(".jp-NotebookPanel [data-status='idle']", timeout=90_000)
            page.wait_for_selector(".jp-NotebookPanel .jp-Cell", timeout=30_000)
            page.locator(".jp-NotebookPanel .jp-Cell").first.click()
            train = page.locator("button.jupyter-button:has-text('Train')")
            for attempt in range(3):  # a Run All sent while the notebook is still settling can stop early
                page.evaluate("window.jupyterapp.commands.execute('notebook:run-all-cells')")
                try:
                    train.wait_for(timeout=60_000)
                    break
                except Exception:
                    if attempt == 2:
                        raise
            assert page.locator("text=Loading widget").count() == 0
            rows_before = _table_rows(page)

            slider = page.locator(".widget-hslider:has-text('rank')")
            before = slider.locator(".widget-readout").inner_text()
            slider.locator(".noUi-handle").click()
            page.keyboard.press("ArrowRight")
            page.wait_for_function(
                "([el, old]) => el.innerText.trim() !== old.trim()",
                arg=[slider.locator(".widget-readout").element_handle(), before], timeout=10_000,
            )
            rank = int(slider.locator(".widget-readout").inner_text())
            assert rank == int(before) + 1

            train.click()
            page.wait_for_selector(".widget-output img", timeout=120_000)
            page.wait_for_function(
                "(n) => document.querySelectorAll('.widget-html table tbody tr, .widget-output table tbody tr').length > n",
                arg=rows_before, timeout=180_000,
            )
            assert page.locator(f"text=LoRA r={rank}").count() > 0

            reports = workspace["tmp"] / "reports"
            page.locator("button.jupyter-button:has-text('Export')").click()
            deadline = time.time() + 60
            while time.time() < deadline and not list(reports.rglob("runs.csv")):
                time.sleep(0.5)
            written = {p.name for p in reports.rglob("*") if p.is_file()}
            assert {"runs.csv", "runs.md", "loss_curves.png", "loss_curves.svg"} <= written
            page.wait_for_selector("text=Wrote", timeout=10_000)
            _shot(page, "workbench-jupyterlab")
        except Exception:
            _shot(page, "workbench-jupyterlab-failure")
            raise


def test_workbench_as_voila_app(workspace):
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
            train = page.locator("button.jupyter-button:has-text('Train')")
            train.wait_for(timeout=120_000)
            assert page.locator(".widget-hslider:has-text('rank')").count() == 1
            # the code is hidden: no editor, no source text (markdown renders inside input areas, so look for code)
            assert page.locator(".jp-InputArea-editor:visible, .cm-editor:visible").count() == 0
            assert page.locator("text=from workbench.ui.panel import Workbench").count() == 0
            train.click()
            page.wait_for_selector(".widget-output img", timeout=120_000)
            _shot(page, "workbench-voila")
        except Exception:
            _shot(page, "workbench-voila-failure")
            raise
        assert not errors, errors
