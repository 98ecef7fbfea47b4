"""Shared fixtures: tiny models built from configs, the bundled MiniLM, quiet logs."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
warnings.filterwarnings("ignore", message=".*fan_in_fan_out.*")

SST2 = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "sst2"


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def minilm_state():
    """The bundled MiniLM loaded once; tests get a fresh copy through `minilm`."""
    import workbench as wb

    model, tokenizer = wb.load_base("minilm", num_labels=2)
    return model, tokenizer


@pytest.fixture
def minilm(minilm_state):
    import copy

    model, tokenizer = minilm_state
    return copy.deepcopy(model).eval(), tokenizer


@pytest.fixture(scope="session")
def sst2_dir() -> Path:
    if not (SST2 / "dev.tsv").is_file():
        pytest.skip("../shared/data/sst2 is not present")
    return SST2


@pytest.fixture(scope="module")
def one_thread():
    """Models this small run fastest on one thread, and do not wait on a busy machine's other core.
    A module opts in with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
