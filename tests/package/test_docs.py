"""Every code block of the README and of ``docs/`` runs, as written.

A page a newcomer copies from must work when copied.  This test reads every fenced block of
``README.md`` and ``docs/*.md`` and runs it in a fresh interpreter (``python``) or shell
(``bash``), from an empty folder, offline:

* the README's python blocks run **twice in one session** (a notebook cell run again must
  work again); the pages' blocks once;
* a bash block runs with ``python`` and ``.venv/bin/python`` being this environment's;
* a block that cannot run here (it starts a server, needs a cluster, or is a benchmark of
  many minutes) says so in the line above it, ``<!-- docs-test: skip, <reason> -->``, and
  only a few may: every other block runs.

Running the blocks trains the real bundled models, so those tests are ``slow``; the checks on
the pages themselves (every block runs or says why not, every page linked, every link
resolves) are quick.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
#: The languages a block may be written in: run as python or bash, or ``text`` (a diagram, not code).
RUNNERS = ("python", "bash")
SKIP = re.compile(r"^<!-- docs-test: skip, (?P<reason>\S.*?) -->$")
FENCE = re.compile(r"^```(?P<lang>[\w-]*)\n(?P<code>.*?)^```$", re.M | re.S)
#: At most this share of the runnable-looking blocks may be skipped ("sparingly").
MAX_SKIPPED_SHARE = 0.4


@dataclass(frozen=True)
class Block:
    page: Path
    line: int
    lang: str
    code: str
    skip: str | None  # the reason given in the markdown, or None: the block runs

    @property
    def id(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def pages() -> list[Path]:
    return [README] + sorted(DOCS.glob("*.md"))


def blocks(page: Path) -> list[Block]:
    text = page.read_text(encoding="utf-8")
    found = []
    for m in FENCE.finditer(text):
        line = text.count("\n", 0, m.start()) + 1
        before = [l.strip() for l in text[: m.start()].splitlines() if l.strip()]
        skip = SKIP.match(before[-1]) if before else None
        found.append(Block(page, line, m.group("lang"), m.group("code"), skip.group("reason") if skip else None))
    return found


def all_blocks() -> list[Block]:
    return [b for page in pages() for b in blocks(page)]


def _runnable(lang: str) -> list[Block]:
    return [b for b in all_blocks() if b.lang == lang and b.skip is None]


def _env() -> dict[str, str]:
    """Offline, this checkout first on the path, this environment's python first on PATH."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONHOME",)}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               PYTHONPATH=os.pathsep.join([str(ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]),
               PATH=os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")]))
    return env


def _run(cmd: list[str], cwd: Path, block: Block, timeout: float = 1200) -> None:
    env = _env()
    env["MPLCONFIGDIR"] = str(cwd / ".mpl")
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, (f"the block at {block.id} failed ({done.returncode}):\n{block.code}"
                                  f"\n--- stdout\n{done.stdout[-3000:]}\n--- stderr\n{done.stderr[-5000:]}")


# ----------------------------------------------------------------------- the pages themselves


def test_the_pages_have_blocks_and_the_readme_has_the_api():
    assert len(pages()) >= 7, [p.name for p in pages()]
    readme = blocks(README)
    assert any(b.lang == "python" and b.skip is None and "wb.train(" in b.code for b in readme)


def test_every_block_runs_or_says_why_not():
    problems = [f"{b.id}: a block in {b.lang or 'no language'!r}: write it as python or bash (or text, for a "
                f"diagram)" for b in all_blocks() if b.lang not in RUNNERS + ("text",)]
    code = [b for b in all_blocks() if b.lang in RUNNERS]
    skipped = [b for b in code if b.skip is not None]
    print("\n".join(f"skipped {b.id}: {b.skip}" for b in skipped))
    assert not problems, "\n".join(problems)
    assert len(skipped) <= MAX_SKIPPED_SHARE * len(code), (
        f"{len(skipped)} of {len(code)} blocks are skipped: " + "; ".join(f"{b.id} ({b.skip})" for b in skipped))
    stray = [f"{p.relative_to(ROOT)}:{i}" for p in pages()
             for i, l in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
             if "docs-test" in l and not SKIP.match(l.strip())]
    assert not stray, f"a docs-test marker the test does not understand: {stray}"


def test_every_docs_page_is_linked_from_the_readme():
    text = README.read_text(encoding="utf-8")
    unlinked = [p.name for p in DOCS.glob("*.md") if f"](docs/{p.name})" not in text]
    assert not unlinked, f"docs pages the README does not link: {unlinked}"
    assert len(text.splitlines()) <= 250, "the README is for a newcomer: move the depth into docs/"


def test_relative_links_resolve():
    broken = []
    for page in pages():
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text(encoding="utf-8")):
            if re.match(r"[a-z]+:", target) or target.startswith("#"):
                continue
            path = (page.parent / target.split("#", 1)[0]).resolve()
            if not path.exists():
                broken.append(f"{page.relative_to(ROOT)} -> {target}")
    assert not broken, "links to nothing:\n  " + "\n  ".join(broken)


def test_no_project_tracker_words_in_the_pages():
    """The pages are read by attendees and users, not by the project's tracker: no "issue 20", no "the
    issue's call" (they had crept into docs/qlora.md and docs/benchmarks.md)."""
    found = [f"{page.relative_to(ROOT)}:{i}: {line.strip()[:80]}"
             for page in [*pages(), ROOT / "data" / "README.md"]
             for i, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1)
             if re.search(r"\bissues? \d+|\bthe issue's\b|\(issue\b", line, re.I)]
    assert not found, "tracker words:\n  " + "\n  ".join(found)


# ----------------------------------------------------------------------- the blocks, run


@pytest.mark.slow  # trains the real bundled models
@pytest.mark.parametrize("block", _runnable("python"), ids=lambda b: b.id)
def test_python_block_runs(block: Block, tmp_path: Path):
    times = 2 if block.page == README else 1
    script = textwrap.dedent(f"""
        code = compile({block.code!r}, {block.id!r}, "exec")
        session = {{"__name__": "__main__"}}
        for _ in range({times}):
            exec(code, session)
    """)
    _run([sys.executable, "-c", script], tmp_path, block)


@pytest.mark.slow  # trains the real bundled models through the CLI
@pytest.mark.parametrize("block", _runnable("bash"), ids=lambda b: b.id)
def test_bash_block_runs(block: Block, tmp_path: Path):
    (tmp_path / ".venv").symlink_to(sys.prefix, target_is_directory=True)  # `.venv/bin/python` is this one
    _run(["bash", "-euo", "pipefail", "-c", block.code], tmp_path, block)
