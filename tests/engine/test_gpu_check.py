"""``benchmarks/gpu_check.py`` on a machine without CUDA: every part says it was skipped and why,
the table lists them, and it exits 0 (so it can be run from a fresh clone anywhere)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"


def run(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", HF_HUB_OFFLINE="1")  # no GPU, whatever the machine has
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)


def test_without_cuda_every_part_is_skipped_with_its_reason_and_it_exits_0():
    proc = run("--fast")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "# CPU: " in out and "threads" in out  # the machine, as every benchmark prints it
    parts = ("tests", "qlora", "adapters", "speed", "ray")
    for part in parts:
        assert f"[{part}] skipped: no CUDA device here" in out
    table = [line for line in out.splitlines() if line.startswith("| ")]
    assert table[0] == "| part | check | status | detail | part s |"
    assert [line.split(" | ")[0].removeprefix("| ") for line in table[1:]] == list(parts)
    assert all("skipped: no CUDA device here" in line for line in table[1:])


def test_unknown_parts_are_refused_with_the_choices():
    proc = run("--parts", "tests,qlroa")
    assert proc.returncode == 2
    assert "unknown part(s) qlroa; parts: tests, qlora, adapters, speed, ray" in proc.stderr


def test_the_cuda_only_tests_are_found_from_their_skipif():
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import gpu_check
    finally:
        sys.path.remove(str(SCRIPT.parent))
    ids = gpu_check.cuda_test_ids()
    assert ids, "the suite has a CUDA-only test (tests/lessons/test_planner_memory.py)"
    for node in ids:
        file, name = node.split("::")
        lines = (ROOT / file).read_text(encoding="utf-8").splitlines()
        at = next(i for i, line in enumerate(lines) if line.startswith(f"def {name}("))
        assert any("skipif" in line and "cuda.is_available" in line for line in lines[max(0, at - 5):at]), node
