"""Made-up runs for the figure tests: known curves, parameter counts and memory, no training.

``fake_run`` builds a ``RunResult`` whose history is ``start * decay**step`` with an
evaluation every ten steps, so a test can compare what a figure draws with the numbers
it was given.  The ``runs`` fixture (``conftest.py`` here) is four of them: LoRA r=2 and
r=8, full fine-tuning, head only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from workbench.engine.config import ParamCounts, RunConfig, RunResult, Timing
from workbench.lora.config import LoRAConfig
from workbench.viz import output

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@dataclass
class FakeMemory:
    """Stand-in for workbench.engine.memory.MemoryBreakdown (same field names)."""

    weights: int
    gradients: int
    optimizer: int
    activations: int
    peak: int | None = None
    peak_kind: str = ""


def fake_history(steps: int, start: float, decay: float, eval_every: int, acc: float) -> pd.DataFrame:
    """A loss curve start * decay**step with evaluations every eval_every steps."""
    step = np.arange(1, steps + 1)
    train = start * decay**step
    ev = step % eval_every == 0
    return pd.DataFrame({
        "step": step,
        "train_loss": train,
        "lr": np.full(steps, 1e-3),
        "eval_loss": np.where(ev, train + 0.05, np.nan),
        "eval_accuracy": np.where(ev, acc - 0.01 * (steps - step) / steps, np.nan),
    })


def fake_run(config: RunConfig, trainable: int, mem: FakeMemory | None, start: float, acc: float,
             status: str = "completed") -> RunResult:
    return RunResult(
        config=config, status=status,  # type: ignore[arg-type]
        history=fake_history(30, start, 0.97, 10, acc),
        params=ParamCounts(trainable=trainable, total=22_713_216),
        memory=mem, timing=Timing(0.1, 1000.0, 5.0),
    )


def sample_runs() -> list[RunResult]:
    """LoRA r=2 (with a measured peak), LoRA r=8, full fine-tuning (with a peak), head only."""
    return [
        fake_run(RunConfig(method="lora", lora=LoRAConfig(rank=2)), 38_402,
                 FakeMemory(90_000_000, 150_000, 300_000, 40_000_000, 131_000_000, "cuda allocated"),
                 0.70, 0.84),
        fake_run(RunConfig(method="lora", lora=LoRAConfig(rank=8)), 148_994,
                 FakeMemory(91_000_000, 600_000, 1_200_000, 41_000_000), 0.69, 0.87),
        fake_run(RunConfig(method="full"), 22_713_986,
                 FakeMemory(91_000_000, 91_000_000, 182_000_000, 45_000_000, 420_000_000,
                            "cuda allocated"),
                 0.68, 0.90),
        fake_run(RunConfig(method="head"), 770,
                 FakeMemory(91_000_000, 3_080, 6_160, 20_000_000), 0.72, 0.78),
    ]


def texts_ok(fig: Figure) -> None:
    ax = fig.axes[0]
    assert ax.get_title(loc="left").strip() and ax.get_xlabel().strip() and ax.get_ylabel().strip()


def figure_png_ok(fig: Figure) -> bool:
    return output.figure_to_png_bytes(fig, dpi=50).startswith(PNG_MAGIC)
