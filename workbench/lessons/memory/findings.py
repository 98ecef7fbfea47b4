"""What notebook 03 shows, as data: its tables, its two paragraphs, and every claim its text makes.

The notebook calls these and shows what they return; its self-test and the unit tests
assert on the same data:

* ``run_table(results)``: each run's measurement beside its estimate (section 1);
* ``qlora_weights(qlora_run, lora_run)``: how much QLoRA's stored weights save, and why
  (``QLoRAWeights.markdown`` is the paragraph under the runs' figure);
* ``agreement(run_table)``: how closely the runs' estimates match (``Agreement.markdown``);
* ``savings_table(exact)``, ``budget_table(grid, ...)``, ``quadratic_share(...)``: the
  tables of sections 2 and 3;
* ``findings(...)``: every sentence of the notebook that a measurement could contradict,
  as ``{claim: holds}``; ``Findings.failed()`` lists the ones this run does not bear out.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

import pandas as pd
from torch import nn

from workbench.engine.memory import compare_breakdowns, parameter_bytes
from workbench.lessons.memory.activations import activation_table
from workbench.lessons.memory.measured import MemoryComparison
from workbench.lora.quantize import is_quantized_layer, logical_numel, nf4_bits_per_weight
from workbench.util.units import MB

__all__ = [
    "run_table",
    "QLoRAWeights",
    "qlora_weights",
    "Agreement",
    "agreement",
    "savings_table",
    "budget_table",
    "quadratic_share",
    "Findings",
    "findings",
    "EXACT_TOLERANCE",
]

#: How close a synthetic step's estimate must be to its measurement, per component (a fraction).
EXACT_TOLERANCE = 0.005
#: How close the runs' activation estimates must be (percent): the runs see real, padded batches.
RUN_TOLERANCE_PCT = 0.5


def run_table(results: Sequence[Any]) -> pd.DataFrame:
    """Each run's measured memory beside its estimate (``compare_breakdowns``), indexed by (run, component)."""
    return pd.concat({r.config.label(): compare_breakdowns(r.memory, r.memory_estimate).set_index("component")
                      for r in results}, names=["run"])


@dataclass
class QLoRAWeights:
    """QLoRA's stored weights against LoRA's: bytes, and where the model's weights sit.

    ``quantized``: weights stored in NF4 (the block linear layers); ``embeddings``: the
    input embeddings' weights, the bulk of what stays in float32; counts are numbers of
    weights (``logical_numel``: a packed NF4 tensor holds two per byte).
    """

    lora_bytes: int
    qlora_bytes: int
    weights: int
    quantized: int
    embeddings: int
    bits_per_weight: float
    lora_peak: int | None = None  # the runs' measured peaks (bytes) and seconds per step, when they have them
    qlora_peak: int | None = None
    lora_step_s: float | None = None
    qlora_step_s: float | None = None
    lora_start: Any = None  # ``resident.Resident`` of each run's set-up, when measured
    qlora_start: Any = None

    @property
    def saving_pct(self) -> float:
        """How much less QLoRA's weights take than LoRA's, in percent."""
        return 100 * (1 - self.qlora_bytes / self.lora_bytes)

    def markdown(self) -> str:
        """The paragraph under the runs' figure."""
        return (f"QLoRA's weights (hatched) take **{self.qlora_bytes / MB:.2f} MB** against LoRA's "
                f"{self.lora_bytes / MB:.2f} MB ({self.saving_pct:.0f}% less): its block linear layers hold "
                f"{100 * self.quantized / self.weights:.0f}% of the model's weights and store each in about "
                f"{self.bits_per_weight:.3f} bits instead of 32; the rest, mostly the embeddings "
                f"({100 * self.embeddings / self.weights:.0f}% of the weights), stays in float32. Its gradients and "
                "optimizer state are LoRA's: the same A, B and head train." + self._peak_and_time())

    def _peak_and_time(self) -> str:
        """The measured peaks and step times, read in the direction they went (with ``lora_start`` and
        ``qlora_start``, the resident memory each run's set-up left before its first step, split in two)."""
        text = ""
        if self.lora_peak and self.qlora_peak:
            text += (f" The measured **peaks** (each run's own process, from its first step on): QLoRA "
                     f"{self.qlora_peak / MB:.0f} MB, LoRA {self.lora_peak / MB:.0f} MB. ")
            if self.qlora_peak > self.lora_peak:
                text += (f"QLoRA's is the higher one, by {(self.qlora_peak - self.lora_peak) / MB:.0f} MB, although its "
                         "weights are smaller. The peak starts at the first step, after the model was loaded, so the "
                         "float copy of the base that loading makes before it quantizes is not in it. ")
                if self.lora_start is not None and self.qlora_start is not None:
                    qs, ls = self.qlora_start.before_training, self.lora_start.before_training
                    q_add, l_add = self.qlora_start.training_added, self.lora_start.training_added
                    text += (f"Each run repeated in a fresh process (set up as `train` does, then its steps) splits it: "
                             f"before its first step QLoRA's process held {qs / MB:.0f} MB against LoRA's "
                             f"{ls / MB:.0f} MB ({(qs - ls) / MB:+.0f} MB"
                             + (": the bitsandbytes library and the code it loads, beside the smaller NF4 model"
                                if self.qlora_start.loaded_bitsandbytes and qs > ls else "")
                             + f"), and training added {q_add / MB:.0f} MB to QLoRA's against {l_add / MB:.0f} MB to "
                             f"LoRA's ({(q_add - l_add) / MB:+.0f} MB"
                             + ("; every step turns each NF4 layer's codes back into float weights for its matmuls"
                                if q_add > l_add else "") + "). These repeats are processes of their own, so their "
                             "figures need not add up to the peaks above; "
                             "read each as the difference between QLoRA and LoRA. ")
                text += "The saving is in the weights bar, not in this CPU process peak."
            else:
                text += "QLoRA's is the lower one, as its smaller weights suggest."
        if self.lora_step_s and self.qlora_step_s:
            ratio = self.qlora_step_s / self.lora_step_s
            text += (f" **Time**: a QLoRA step took {self.qlora_step_s:.3f} s against LoRA's {self.lora_step_s:.3f} s "
                     f"({ratio:.2f}x)" + (": each NF4 weight is dequantized for every matmul, so QLoRA saves memory, "
                                          "not time." if ratio > 1.1 else
                                          ": about the same time (within 10%), so QLoRA saved memory, not time."
                                          if ratio >= 0.9 else "."))
        return text


def qlora_weights(qlora_run: Any, lora_run: Any, starts: Mapping[str, Any] | None = None) -> QLoRAWeights:
    """Read a QLoRA run and the same LoRA run (``RunResult``s trained with ``keep_model=True``); ``starts``:
    ``{"lora": ..., "qlora": ...}`` from ``resident.resident_before_training`` of their configs, if measured."""
    model = qlora_run.model
    if model is None:
        raise ValueError("the QLoRA run kept no model: train it with keep_model=True")
    return QLoRAWeights(
        lora_bytes=int(lora_run.memory.weights), qlora_bytes=int(qlora_run.memory.weights),
        weights=sum(logical_numel(p) for p in model.parameters()),
        quantized=sum(logical_numel(m.weight) for m in model.modules() if is_quantized_layer(m)),
        embeddings=sum(p.numel() for p in model.get_input_embeddings().parameters()),
        bits_per_weight=nf4_bits_per_weight(),
        lora_peak=lora_run.memory.peak, qlora_peak=qlora_run.memory.peak,
        lora_step_s=_step_seconds(lora_run), qlora_step_s=_step_seconds(qlora_run),
        lora_start=(starts or {}).get("lora"), qlora_start=(starts or {}).get("qlora"),
    )


def _step_seconds(run: Any) -> float | None:
    """A run's median seconds per step (None when it has no timing)."""
    timing = getattr(run, "timing", None)
    return None if timing is None else float(timing.seconds_per_step)


@dataclass
class Agreement:
    """How closely the runs' activation estimates match their measurements."""

    activation_error_pct: float  # the largest |error %| of the runs' activations

    def markdown(self, max_length: int) -> str:
        """The paragraph under the runs' table (``max_length``: the runs' ``RunConfig.max_length``)."""
        return (
            "Weights, gradients and optimizer state agree to the byte: they are closed forms of the parameter counts. "
            f"The **activations** agree too (largest error {self.activation_error_pct:.3f}%), because the run's "
            "estimate is made for the shape of the batch its first step actually saw. That shape is not `max_length`: "
            "real data is padded per batch to that batch's *longest* sentence (dynamic padding). The estimate grows "
            "strictly with $S$, so we can ask which length reproduces the measurement (`effective_seq_len`), against "
            f"`max_length` = {max_length}; head-only activations do not depend on $S$ at all.")


def agreement(table: pd.DataFrame) -> Agreement:
    """``run_table``'s activations: the largest relative error of their estimates."""
    return Agreement(float(table.xs("activations", level="component")["error %"].abs().max()))


def savings_table(exact: Mapping[str, MemoryComparison], full: str = "full") -> tuple[pd.DataFrame, pd.DataFrame]:
    """(savings, ratios): MB per component of each measured step, and full fine-tuning's over each.

    ``exact``: {name: ``measure_vs_estimate`` result}; ``full`` names full fine-tuning's entry.
    ``savings`` is indexed by the comparisons' labels, with ``trainable`` and ``trainable %``;
    ``ratios`` holds ``full / this`` for gradients, optimizer, activations and total.
    """
    if full not in exact:
        raise ValueError(f"exact needs full fine-tuning's step under {full!r}; it has {sorted(exact)}")
    rows = []
    for c in exact.values():
        m = c.measured
        rows.append({"method": c.label, "trainable": c.trainable, "trainable %": 100 * c.trainable / c.total_params,
                     "weights MB": m.weights / MB, "gradients MB": m.gradients / MB, "optimizer MB": m.optimizer / MB,
                     "activations MB": m.activations / MB, "total MB": m.total / MB})
    savings = pd.DataFrame(rows).set_index("method")
    full_row = savings.loc[exact[full].label]
    ratios = (full_row / savings)[["gradients MB", "optimizer MB", "activations MB", "total MB"]]
    ratios.columns = [f"full / this: {c.removesuffix(' MB')}" for c in ratios.columns]
    return savings, ratios


def budget_table(grid: pd.DataFrame, seq_len: int) -> pd.DataFrame:
    """Per method at ``seq_len``: the fixed MB, the activation MB per sequence, sequences per GB of activations.

    ``grid``: a ``memory_grid`` table.  Memory = fixed + B x per-sequence activations.
    """
    at = grid[grid["seq_len"] == seq_len]
    if at.empty:
        raise ValueError(f"the grid has no point at seq_len {seq_len}; it has {sorted(grid['seq_len'].unique())}")
    smallest = at["batch_size"].min()
    fixed = at[at["component"].isin(["weights", "gradients", "optimizer"]) & (at["batch_size"] == smallest)]
    a = at[at["component"] == "activations"]
    per_seq = f"activations MB per sequence of {seq_len} tokens"
    budget = pd.DataFrame({
        "fixed MB (weights + gradients + optimizer)": fixed.groupby("method")["measured"].sum() / MB,
        per_seq: (a["measured"] / a["batch_size"]).groupby(a["method"]).mean() / MB,
    })
    budget["sequences per 1 GB of activations"] = 1000 / budget[per_seq]
    return budget


def quadratic_share(models: Mapping[str, nn.Module], batch_size: int, seq_lens: Iterable[int]) -> pd.DataFrame:
    """Per sequence length: the share of the estimate's activations that grows with S², and bytes per token.

    ``models``: {label: a model whose ``requires_grad`` flags say what trains}.
    """
    share = []
    for s in seq_lens:
        row: dict[str, float] = {"seq_len": s}
        for label, model in models.items():
            t = activation_table(model, batch_size, s)
            quad = t.loc[t["grows with"] == "B·S²", "bytes"].sum()
            row[f"{label}: S² share %"] = 100 * quad / t["bytes"].sum()
            row[f"{label}: bytes per token"] = t["bytes"].sum() / (batch_size * s)
        share.append(row)
    return pd.DataFrame(share).set_index("seq_len")


@dataclass
class Findings:
    """Every sentence of notebook 03 that a measurement could contradict, and whether this run bears it out.

    ``claims``: {the sentence: holds}; only the sections whose data was given are read.
    """

    claims: dict[str, bool] = field(default_factory=dict)

    def failed(self) -> list[str]:
        """The claims this run does not bear out (empty when the notebook's text holds)."""
        return [claim for claim, holds in self.claims.items() if not holds]


def _run_claims(runs: Mapping[str, Any], table: pd.DataFrame | None) -> dict[str, bool]:
    q, lo, full, head = runs["qlora"], runs["lora"], runs["full"], runs["head"]
    w = qlora_weights(q, lo)
    peaks = [r.memory for r in runs.values()]
    claims = {
        "QLoRA's weights are NF4 and counted as stored, below LoRA's":
            q.config.quantize == "nf4" and w.qlora_bytes == parameter_bytes(q.model) < w.lora_bytes,
        "QLoRA counts the same weights as LoRA, and the float rest is mostly the embeddings":
            w.weights == lo.params.total and w.embeddings > (w.weights - w.quantized) / 2,
        "QLoRA's gradients and optimizer state are LoRA's":
            (q.memory.gradients, q.memory.optimizer) == (lo.memory.gradients, lo.memory.optimizer),
        "the whole model shrinks less than 8x under QLoRA": w.lora_bytes / w.qlora_bytes < 8,
        "every run measured the same kind of peak, each in its own process or on the GPU":
            len({m.peak_kind for m in peaks}) == 1 and head.memory.peak_kind != "process VmHWM",
        "the cheapest method (head only) has a lower peak than full fine-tuning":
            head.memory.peak is not None and full.memory.peak is not None and head.memory.peak < full.memory.peak,
    }
    if table is not None:
        claims["the runs' activation estimates agree with the measurements (under 0.5%)"] = (
            agreement(table).activation_error_pct < RUN_TOLERANCE_PCT)
    return claims


def _exact_claims(exact: Mapping[str, MemoryComparison]) -> dict[str, bool]:
    claims = {}
    for c in exact.values():
        for comp in ("weights", "gradients", "optimizer", "activations", "total"):
            m, e = getattr(c.measured, comp), getattr(c.estimated, comp)
            claims[f"{c.label}: the estimated {comp} match the measurement (within 0.5%)"] = (
                abs(e - m) <= EXACT_TOLERANCE * max(m, 1))
    lo, full, q = exact["lora"].measured, exact["full"].measured, exact["qlora"].measured
    claims.update({
        "LoRA's gradients are under 5% of full fine-tuning's": lo.gradients < 0.05 * full.gradients,
        "LoRA's activations are between half and all of full fine-tuning's":
            0.5 * full.activations < lo.activations < full.activations,
        "in float32 LoRA's weights do not shrink (A and B are added)": lo.weights >= full.weights,
        "QLoRA's weights are below LoRA's": q.weights < lo.weights,
        "QLoRA's gradients, optimizer state and activations are LoRA's":
            (q.gradients, q.optimizer, q.activations) == (lo.gradients, lo.optimizer, lo.activations),
    })
    return claims


def _kinds_claims(kinds: pd.DataFrame, summary: pd.DataFrame | None, lora: MemoryComparison,
                  full: MemoryComparison) -> dict[str, bool]:
    la, fa = lora.label, full.label
    claims = {
        f"under LoRA the input of a frozen linear layer ({kind}) is not kept": bool(
            kinds.loc[kind, la] == 0 < kinds.loc[kind, fa]) if kind in kinds.index else False
        for kind in ("context", "ln1_out", "act_out")
    }
    claims["GELU keeps its input under LoRA as under full fine-tuning"] = bool(
        "act_in" in kinds.index and kinds.loc["act_in", la] == kinds.loc["act_in", fa] > 0)
    claims["the kinds table adds up to LoRA's estimated activations"] = bool(
        abs(kinds.loc["total", la] - lora.estimated.activations / MB) < 1e-6)
    if summary is not None:
        claims["the summary adds up to the kinds table"] = bool(
            abs(summary.loc["total", la] - kinds.loc["total", la]) < 1e-6)
        claims["what LoRA drops it keeps none of"] = bool(
            "dropped under LoRA" in summary.index and summary.loc["dropped under LoRA", la] == 0)
    return claims


def _grid_claims(grid: pd.DataFrame, seq_len: int, batch_size: int) -> dict[str, bool]:
    acts = grid[grid["component"] == "activations"]
    claims = {}
    for method, a in acts[acts["seq_len"] == seq_len].groupby("method"):
        per_seq = (a["measured"] / a["batch_size"]).to_numpy()
        claims[f"{method}: the activations grow in proportion to the batch size"] = bool(
            per_seq.max() <= 1.01 * per_seq.min())
    for method, a in acts[acts["batch_size"] == batch_size].groupby("method"):
        a = a.sort_values("seq_len")
        per_token = (a["measured"] / a["seq_len"]).to_numpy()
        claims[f"{method}: the activations grow faster than the sequence length (the S² term)"] = bool(
            (per_token[1:] > per_token[:-1]).all())
    return claims


def findings(runs: Mapping[str, Any] | None = None, *, runs_table: pd.DataFrame | None = None,
             exact: Mapping[str, MemoryComparison] | None = None, kinds: pd.DataFrame | None = None,
             summary: pd.DataFrame | None = None, grid: pd.DataFrame | None = None,
             seq_len: int | None = None, batch_size: int | None = None) -> Findings:
    """Notebook 03's claims, read off its data; a section is read when its data is given.

    ``runs``: {"lora", "qlora", "full", "head": ``RunResult`` with its model kept}, and
    ``runs_table`` (``run_table(results)``); ``exact``: {the same names: ``measure_vs_estimate``};
    ``kinds`` (``activation_kinds``) and ``summary`` (``kinds_summary``) of LoRA and full
    fine-tuning, with ``exact``; ``grid`` (``memory_grid``) with the ``seq_len`` at which
    batch sizes are compared and the ``batch_size`` at which lengths are.
    """
    claims: dict[str, bool] = {}
    if runs is not None:
        missing = {"lora", "qlora", "full", "head"} - set(runs)
        if missing:
            raise ValueError(f"runs needs the four runs lora, qlora, full and head; missing {sorted(missing)}")
        claims.update(_run_claims(runs, runs_table))
    if exact is not None:
        claims.update(_exact_claims(exact))
        if kinds is not None:
            claims.update(_kinds_claims(kinds, summary, exact["lora"], exact["full"]))
    elif kinds is not None:
        raise ValueError("kinds are read against the measured steps: give exact too")
    if grid is not None:
        if seq_len is None or batch_size is None:
            raise ValueError("the grid's claims need seq_len (batch sizes compared there) and batch_size")
        claims.update(_grid_claims(grid, seq_len, batch_size))
    return Findings({k: bool(v) for k, v in claims.items()})
