"""The ``runs`` fixture of the figure tests: four made-up runs (see ``figure_runs``)."""

from __future__ import annotations

import pytest
from figure_runs import sample_runs

from workbench.engine.config import RunResult


@pytest.fixture()
def runs() -> list[RunResult]:
    return sample_runs()
