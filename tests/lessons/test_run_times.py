"""The notebooks' printed run times into docs/workshop.md's table (workbench/lessons/run_times.py)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from workbench.lessons import run_times as rt

ROOT = Path(__file__).resolve().parents[2]


def executed(text: str) -> dict:
    """A minimal executed notebook whose last cell printed ``text`` (as nbformat stores a stream)."""
    return {"cells": [{"cell_type": "code", "outputs": [{"output_type": "stream", "name": "stdout",
                                                         "text": ["self-test passed\n", text]}]}]}


def test_printed_time_is_read_from_the_last_cells_output():
    assert rt.printed_time(executed("notebook 02b ran in 1 min 34 s\n")) == ("02b", "1 min 34 s")
    assert rt.printed_time(executed("notebook 06 ran in 22 s\n")) == ("06", "22 s")
    with pytest.raises(ValueError, match="executed to the end"):
        rt.printed_time(executed("self-test passed\n"))


@pytest.mark.parametrize("printed, s", [("1 min 7 s", 67), ("48 s", 48), ("12 min 0 s", 720)])
def test_seconds_by_hand(printed, s):
    assert rt.seconds(printed) == s


def test_seconds_refuses_what_the_stopwatch_never_prints():
    with pytest.raises(ValueError, match="1 min 7 s"):
        rt.seconds("67 seconds")


def test_records_round_trip_into_the_page_keeping_what_takes_the_time(tmp_path):
    times = tmp_path / "times.json"
    rt.record(times, "01_lora_from_scratch", executed("notebook 01 ran in 1 min 7 s\n"), 0.5, 1.5, "2026-12-07")
    rt.record(times, "06_planner", executed("notebook 06 ran in 22 s\n"), 0.25, 0.75, "2026-12-07")
    data = json.loads(times.read_text())
    assert data["01_lora_from_scratch"]["seconds"] == 67 and data["06_planner"]["printed"] == "22 s"
    data["05_planted_rank"] = {"printed": "55 s", "seconds": 55, "cpu": data["06_planner"]["cpu"], "date": "2026-12",
                               "threads": "1", "load_before": None, "load_after": None}  # an older record: no load
    doc = tmp_path / "page.md"
    doc.write_text(f"intro\n{rt.BEGIN}\n| notebook | printed run time | what takes the time |\n|---|---|---|\n"
                   f"| `06_planner` | 9 min 9 s | the plans |\n{rt.END}\noutro\n")
    page = rt.update_doc(doc, data)
    assert page == doc.read_text() and page.startswith("intro\n") and page.endswith("outro\n")
    assert "| `01_lora_from_scratch` | 1 min 7 s | 0.5, 1.5 | 2026-12-07 |  |" in page
    assert "| `06_planner` | 22 s | 0.2, 0.8 | 2026-12-07 | the plans |" in page  # 'what' kept from the old row
    assert "| `05_planted_rank` | 55 s | not recorded | 2026-12 |  |" in page
    assert "9 min 9 s" not in page and "Total 2 min 24 s" in page  # 67 + 22 + 55 s
    threads = os.environ.get("OMP_NUM_THREADS")  # what the two new records ran with, and "1" for the older one
    said = "torch's default threads" if threads is None else f"OMP_NUM_THREADS={threads}"
    assert (f"one at a time ({said})" if threads == "1" else
            f"one at a time ({' or '.join(sorted(['OMP_NUM_THREADS=1', said]))})") in page
    assert rt.update_doc(doc, data) == page  # the new layout reads back its own 'what' column


def test_update_doc_needs_its_markers(tmp_path):
    doc = tmp_path / "page.md"
    doc.write_text("no markers\n")
    with pytest.raises(ValueError, match="markers"):
        rt.update_doc(doc, {"06_planner": {"printed": "1 s"}})


def test_the_workshop_page_shows_the_recorded_times():
    """docs/workshop.md's run-time table is generated from docs/notebook_times.json, not typed by hand."""
    times = json.loads((ROOT / "docs" / "notebook_times.json").read_text())
    page = (ROOT / "docs" / "workshop.md").read_text()
    block = page.split(rt.BEGIN)[1].split(rt.END)[0]
    assert block.strip() == rt.table(times, rt.what_column(block))
    assert {p.stem for p in (ROOT / "notebooks").glob("0[1-8]*.ipynb")} <= set(times)  # every lesson 01-08 has a row
    assert set(times) <= {p.stem for p in (ROOT / "notebooks").glob("*.ipynb")}  # and no row for a notebook gone
