"""What each install command installs: pyproject.toml, requirements.txt and the Makefile agree.

* ``pyproject.toml`` declares the package's dependencies (torch pinned to the CPU build's
  2.13.0: anything looser pulls a CUDA build of several GB) and its extras;
  ``requirements.txt`` is the full set for a checkout: the dependencies plus every extra,
  requirement for requirement.
* ``make lab`` and ``make app`` install the package with the ``lab`` extra: no test,
  benchmark or cluster package.  ``make test`` (CI's command) and ``make check`` install the
  full set; ``make check`` leaves out the slow and browser tests.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
PROJECT = PYPROJECT["project"]
EXTRAS: dict[str, list[str]] = PROJECT["optional-dependencies"]
#: Packages that are test tools, benchmarks or cluster software: never in the lab set.
NOT_FOR_THE_LAB = {"pytest", "nbmake", "papermill", "playwright", "trl", "ray", "datasets"}


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~;\[ ]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def _expand(requirements: list[str]) -> set[str]:
    """Requirements with the package's references to its own extras (``lora-workbench[a,b]``) expanded."""
    out: set[str] = set()
    for req in requirements:
        own = re.fullmatch(rf"{re.escape(PROJECT['name'])}\[([\w,\s-]+)\]", req.strip())
        if own:
            for extra in own.group(1).split(","):
                out |= _expand(EXTRAS[extra.strip()])
        else:
            out.add(req.replace(" ", ""))
    return out


def _requirements_txt() -> set[str]:
    lines = (ROOT / "requirements.txt").read_text(encoding="utf-8").splitlines()
    return {line.split("#")[0].replace(" ", "") for line in lines if line.split("#")[0].strip()}


def test_torch_is_pinned_to_the_cpu_build_everywhere():
    assert "torch==2.13.0" in PROJECT["dependencies"]
    assert "torch==2.13.0" in _requirements_txt()
    everything = _expand(PROJECT["dependencies"]) | _expand(EXTRAS["all"]) | _requirements_txt()
    assert [r for r in everything if _name(r) == "torch"] == ["torch==2.13.0"]


def test_requirements_txt_is_the_package_with_every_extra():
    declared = _expand(PROJECT["dependencies"]) | _expand(EXTRAS["all"])
    every_extra = set().union(*(_expand(reqs) for name, reqs in EXTRAS.items()))
    assert _expand(EXTRAS["all"]) == every_extra, "the `all` extra misses an extra"
    assert _requirements_txt() == declared, (
        f"only in requirements.txt: {sorted(_requirements_txt() - declared)}; "
        f"only in pyproject.toml: {sorted(declared - _requirements_txt())}")


def test_the_extras_hold_the_optional_parts():
    names = {extra: {_name(r) for r in _expand(reqs)} for extra, reqs in EXTRAS.items()}
    assert names["qlora"] == {"bitsandbytes"}
    assert names["cluster"] == {"ray"}
    assert names["bench"] == {"peft", "trl"}
    assert {"pytest", "nbmake", "papermill", "playwright"} <= names["dev"]
    assert {"jupyterlab", "voila"} <= names["lab"]
    base = {_name(r) for r in PROJECT["dependencies"]}
    assert not base & (NOT_FOR_THE_LAB | {"bitsandbytes", "peft", "jupyterlab", "voila"}), base


def test_the_lab_set_has_no_test_benchmark_or_cluster_package():
    lab = {_name(r) for r in _expand(PROJECT["dependencies"]) | _expand(EXTRAS["lab"])}
    assert not lab & NOT_FOR_THE_LAB, lab & NOT_FOR_THE_LAB


def _make_dry_run(target: str) -> str:
    """What ``make <target>`` would run on a fresh machine (``-B``: as if nothing were installed)."""
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    done = subprocess.run(["make", "-n", "-B", target], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.parametrize("target", ["lab", "app"])
def test_make_lab_and_app_install_the_lab_set_only(target):
    commands = _make_dry_run(target)
    installs = [line for line in commands.splitlines() if "pip install" in line]
    assert installs and all('-e ".[lab]"' in line for line in installs), installs
    assert "requirements.txt" not in commands


@pytest.mark.parametrize("target", ["test", "check"])
def test_make_test_and_check_install_everything(target):
    commands = _make_dry_run(target)
    assert "-r requirements.txt" in commands
    pytest_line = [line for line in commands.splitlines() if "-m pytest" in line]
    assert pytest_line, commands
    if target == "check":
        assert '-m "not slow and not browser"' in pytest_line[0]
    else:
        assert " -m " not in pytest_line[0].split("pytest", 1)[1], "make test runs the whole suite"


def test_ci_runs_make_test():
    assert re.search(r"^make test$", (ROOT / ".ci" / "run").read_text(encoding="utf-8"), re.M)
