"""What the panel's tests share: the tiny setup, states and views over a temporary store, fake runs.

tiny-bert on the "tiny" preset: a few seconds per run.  ``fake_run`` writes a run's
record without training (a loss curve and a final accuracy), for the tests of what the
panel shows about stored runs.
"""

from __future__ import annotations

import base64
import re
from pathlib import Path

import pandas as pd

from workbench.engine.config import PRESETS, RunConfig
from workbench.engine.training import prepare_model
from workbench.lora.config import LoRAConfig
from workbench.lora.params import count_parameters
from workbench.ui.model_layers import ModelLayers
from workbench.ui.state import PanelState
from toy_models import tiny_bert_classifier

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
MODEL, PRESET = "tiny-bert", "tiny"
ROOT = Path(__file__).resolve().parents[2]
# tiny-bert: hidden 32, FFN 64, 2 blocks, a head of 32 * 2 + 2.
HEAD = 32 * 2 + 2
KINDS = ("query", "key", "value", "attention output", "FFN in", "FFN out", "pooler")


def make_state(tmp_path: Path, layers: ModelLayers | None = None, **kwargs) -> PanelState:
    kwargs.setdefault("background", False)
    return PanelState(model=MODEL, preset=PRESET, runs_dir=tmp_path / "runs", reports_dir=tmp_path / "reports",
                      layers=layers, **kwargs)


def tiny_config(**changes) -> RunConfig:
    """The tiny preset for tiny-bert, written out (not through preset())."""
    lora = changes.pop("lora", LoRAConfig())
    return RunConfig(**(PRESETS[PRESET] | dict(model=MODEL) | changes), lora=lora)


def engine_count(cfg: RunConfig):
    """What the engine's own count gives for a config, on a fresh model."""
    model = tiny_bert_classifier()
    prepare_model(cfg, model)
    return count_parameters(model), model


def pngs(output) -> list[bytes]:
    """The PNG images an Output widget holds."""
    return [base64.b64decode(o["data"]["image/png"]) for o in output.outputs if "image/png" in o.get("data", {})]


def table_rows(panel) -> int:
    """Rows of the runs table as the HTML shows it."""
    body = re.search(r"<tbody>(.*)</tbody>", panel.table.value, re.S)
    return len(re.findall(r"<tr", body.group(1))) if body else 0


def make_panel(tmp_path: Path, layers: ModelLayers, **kwargs):
    from workbench.ui.panel import Workbench

    return Workbench(state=make_state(tmp_path, layers, **kwargs))


def fake_run(cfg: RunConfig, losses: list[float], accuracy: float, status: str = "completed",
             message: str = "", minute: int = 0) -> "RunResult":
    """A RunResult with this loss curve and a final validation accuracy (evaluated at the last step)."""
    import numpy as np

    from workbench.engine.config import ParamCounts, RunResult, Timing

    n = len(losses)
    history = pd.DataFrame({"step": np.arange(1, n + 1), "train_loss": losses, "lr": cfg.lr,
                            "eval_loss": [np.nan] * (n - 1) + [losses[-1]],
                            "eval_accuracy": [np.nan] * (n - 1) + [accuracy]})
    return RunResult(config=cfg, status=status, history=history, params=ParamCounts(1_090, 100_000), memory=None,
                     timing=Timing(0.05, 1000.0, 7.5 + minute), message=message,
                     environment={"started": f"2026-12-01T10:{minute:02d}:00+00:00"})


# The tiny preset's eval set, read independently: the first 32 rows of the bundled validation file.
def bundled_chance(n: int) -> float:
    from workbench.engine.data import load_texts

    labels = load_texts("default", "validation").labels[:n]
    return max(labels.count(v) for v in set(labels)) / len(labels)
