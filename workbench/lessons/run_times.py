"""The lesson notebooks' run times, as each printed it, into the workshop page's table.

Every lesson notebook ends by printing ``notebook NN ran in 1 min 7 s`` (``teaching.Stopwatch``).
An instructor deciding what to run live needs those times, measured at the defaults, with the
machine and its load named.  ``tests/package/test_notebooks.py`` (the at-defaults test) records
each executed notebook's printed time in a JSON file when ``WORKBENCH_NOTEBOOK_TIMES`` names one;
``python -m workbench.lessons.run_times <that file>`` writes the table into ``docs/workshop.md``
between its markers, so the page's numbers are the notebooks' own and are never typed by hand.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path
from typing import Any, Mapping

from workbench.engine import provenance
from workbench.util.fileio import atomic_write_text

PRINTED = re.compile(r"notebook (\w+) ran in ((?:\d+ min )?\d+ s)")
BEGIN, END = "<!-- run-times: begin (python -m workbench.lessons.run_times) -->", "<!-- run-times: end -->"


def printed_time(executed: Mapping[str, Any]) -> tuple[str, str]:
    """(notebook number, the time as printed) from an executed notebook (nbformat JSON as a dict)."""
    for cell in executed.get("cells", []):
        for out in cell.get("outputs", []):
            text = out.get("text", "")
            text = "".join(text) if isinstance(text, list) else text
            found = PRINTED.search(text)
            if found:
                return found.group(1), found.group(2)
    raise ValueError("the notebook printed no 'notebook NN ran in ...' line: was it executed to the end?")


def seconds(printed: str) -> int:
    """'1 min 7 s' -> 67, '48 s' -> 48."""
    found = re.fullmatch(r"(?:(\d+) min )?(\d+) s", printed.strip())
    if not found:
        raise ValueError(f"not a printed run time: {printed!r} (expected '1 min 7 s' or '48 s')")
    return 60 * int(found.group(1) or 0) + int(found.group(2))


def cpu_name() -> str:
    """The CPU's model name with its family and model numbers (``workbench.engine.provenance.cpu_name``),
    and how many cores this process may use."""
    return f"{provenance.cpu_name()}, {len(os.sched_getaffinity(0))} cores"


def load_average() -> float:
    """The 1-minute load average (what else was running)."""
    return os.getloadavg()[0]


def record(path: str | os.PathLike, stem: str, executed: Mapping[str, Any], load_before: float, load_after: float,
           date: str) -> dict:
    """Add one executed notebook's printed time to the JSON file at ``path`` (made if missing), atomically."""
    _, printed = printed_time(executed)
    path = Path(path)
    data = json.loads(path.read_text()) if path.is_file() else {}
    data[stem] = {"printed": printed, "seconds": seconds(printed), "cpu": cpu_name(), "date": date,
                  "threads": os.environ.get("OMP_NUM_THREADS", "torch's default"),
                  "load_before": round(load_before, 2), "load_after": round(load_after, 2)}
    atomic_write_text(path, json.dumps(dict(sorted(data.items())), indent=1) + "\n")
    return data[stem]


def table(times: Mapping[str, Mapping[str, Any]], what: Mapping[str, str]) -> str:
    """The markdown between the markers: a sentence naming the machine, then one row per notebook with its
    printed time and the load around it (a record without a load: "not recorded")."""
    if not times:
        raise ValueError("no recorded run times")
    cpus = sorted({t["cpu"] for t in times.values()})
    threads = sorted({str(t.get("threads", "torch's default")) for t in times.values()})
    threads = ["torch's default threads" if n == "torch's default" else f"OMP_NUM_THREADS={n}" for n in threads]
    head = (f"Measured on {' and '.join(cpus)}, each notebook at its defaults in a fresh kernel, one at a time "
            f"({' or '.join(threads)}). The load column is the 1-minute load average just before and "
            "just after the notebook. A notebook alone, training with torch's threads, holds it near the number of "
            "threads (about 2 here), and the figure before still carries the previous notebook's load; well above 2, "
            "other jobs shared the two cores and the time is longer than on an idle machine. "
            f"Total {_minutes(sum(t['seconds'] for t in times.values()))}.")
    rows = ["| notebook | printed run time | load before, after | measured | what takes the time |",
            "|---|---|---|---|---|"]
    for stem, t in times.items():
        load = ("not recorded" if t.get("load_before") is None else f"{t['load_before']:.1f}, {t['load_after']:.1f}")
        rows.append(f"| `{stem}` | {t['printed']} | {load} | {t['date']} | {what.get(stem, '')} |")
    return head + "\n\n" + "\n".join(rows)


def _minutes(s: int) -> str:
    return f"{s // 60} min {s % 60} s" if s >= 60 else f"{s} s"


def what_column(block: str) -> dict[str, str]:
    """{notebook: its 'what takes the time' text} from the table rows of ``block`` (the last column)."""
    return {m.group(1): m.group(2).strip() for m in re.finditer(r"^\| `([^`]+)` \|.*\| ([^|]*) \|$", block, re.M)}


def update_doc(doc: str | os.PathLike, times: Mapping[str, Mapping[str, Any]]) -> str:
    """Rewrite the table between the markers of ``doc``, keeping each row's 'what takes the time' text."""
    doc = Path(doc)
    text = doc.read_text()
    if text.count(BEGIN) != 1 or text.count(END) != 1:
        raise ValueError(f"{doc} must hold the markers {BEGIN!r} and {END!r} once each")
    before, rest = text.split(BEGIN)
    old, after = rest.split(END)
    what = what_column(old)
    new = before + BEGIN + "\n" + table(times, what) + "\n" + END + after
    atomic_write_text(doc, new)
    return new


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m workbench.lessons.run_times <times.json>  (writes docs/workshop.md's table)")
        return 2
    times = json.loads(Path(argv[0]).read_text())
    update_doc(Path(__file__).resolve().parents[2] / "docs" / "workshop.md", times)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
