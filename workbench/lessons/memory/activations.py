"""The estimate's saved activations as tables: what each tensor is, why backward needs it, how it grows.

* ``activation_table(model, batch_size, seq_len)``: the estimate's per-tensor list
  (``workbench.engine.memory.estimate_activation_bytes``), with what each tensor is and how
  it grows with B and S;
* ``activation_kinds(tables)``: several of those side by side, summed over the blocks;
* ``kinds_summary(kinds, lora, full)``: the kinds gathered into what LoRA does to them;
* ``effective_seq_len(model, batch_size, activation_bytes)``: the length at which the
  estimate reproduces a measurement (a real batch is padded to its longest sentence).
"""

from __future__ import annotations

import re
from typing import Mapping

import numpy as np
import pandas as pd
from torch import nn

from workbench.engine.memory import estimate_activation_bytes
from workbench.util.checks import check_positive_int
from workbench.util.units import MB

#: What each kind of saved tensor is (labels of ``estimate_activation_bytes`` without
#: their "layerN." prefix), and why backward needs it.
TENSOR_KINDS: dict[str, str] = {
    "input": "block input = input of query/key/value: kept for dW (or LoRA's dA) of a trained q/k/v",
    "q_copy": "attention's copy of Q: dK = dSᵀ Q",
    "k_copy": "attention's copy of K: dQ = dS K",
    "v_copy": "attention's copy of V: dP = dO Vᵀ",
    "q": "Q, handed to a fused attention kernel",
    "k": "K, handed to a fused attention kernel",
    "v": "V, handed to a fused attention kernel",
    "logsumexp": "per-row softmax normaliser of a fused kernel (it recomputes P in backward)",
    "attn_mask": "the fused kernel's copy of the attention mask (B x S x S)",
    "softmax": "attention probabilities P (B x heads x S x S): softmax backward needs its output",
    "attn_dropout_mask": "dropout mask on P (B x heads x S x S)",
    "dropped_probs": "dropout(P) (B x heads x S x S): dV = Pᵀ dO",
    "context": "attention output = input of attention.output.dense: kept only if that weight trains",
    "attn_out.dropout.mask": "dropout mask after attention.output.dense",
    "ln1_in": "input of the first LayerNorm (residual sum)",
    "ln1.stats": "mean and 1/std per token of the first LayerNorm",
    "ln1_out": "first LayerNorm's output = input of intermediate.dense: kept only if that weight trains",
    "act_in": "GELU input (T x FFN width): GELU's backward needs it, trained or not",
    "act_out": "GELU output = input of output.dense (T x FFN width): kept only if that weight trains",
    "ffn_out.dropout.mask": "dropout mask after output.dense",
    "ln2_in": "input of the second LayerNorm (residual sum)",
    "ln2.stats": "mean and 1/std per token of the second LayerNorm",
    "emb.sum": "sum of the three embeddings = input of the embedding LayerNorm",
    "emb.ln.stats": "mean and 1/std per token of the embedding LayerNorm",
    "emb.dropout.mask": "dropout mask after the embeddings",
    "input_ids": "token ids: the embedding table's gradient scatters into these rows",
    "token_type_ids": "token-type ids, for the token-type embedding's gradient",
    "position_ids": "position ids, for the position embedding's gradient",
    "final_hidden": "last block's output: the pooler reads its [CLS] vector (a view keeps it all)",
    "pooler.tanh_out": "pooler output: tanh's backward needs its output",
    "head.dropout.mask": "dropout mask before the classifier",
    "head.dropout_out": "dropped pooler output = the classifier's input",
    "loss.log_probs": "log-softmax of the logits, for the cross-entropy backward",
    "loss.labels": "the labels",
    "loss.total_weight": "the loss's normaliser (a scalar)",
}

_LAYER = re.compile(r"^layer(\d+)\.(.+)$")
_LORA = re.compile(r"^(.+)\.lora\d+\.(Ax|dropout_out|dropout_mask)$")


def _kind_of(label: str) -> tuple[str, str]:
    """(block, kind) of an estimate label: ("layer3", "act_in"), ("embeddings", "emb.sum"), ..."""
    m = _LAYER.match(label)
    if m:
        return f"layer{m.group(1)}", m.group(2)
    if label.startswith("emb.") or label in ("input_ids", "token_type_ids", "position_ids"):
        return "embeddings", label
    return "head", label


def _describe(kind: str) -> str:
    if kind in TENSOR_KINDS:
        return TENSOR_KINDS[kind]
    m = _LORA.match(kind)
    if m:
        layer, what = m.groups()
        return {"Ax": f"LoRA's A x on {layer} (T x r): dB = dYᵀ (A x)",
                "dropout_out": f"LoRA's dropped input on {layer}: dA needs it",
                "dropout_mask": f"LoRA's dropout mask on {layer}"}[what]
    return ""


def _growth(r_b: float, r_s: float) -> str:
    """How a size grows, from its ratios when B doubles (r_b) and when S doubles (r_s)."""
    b = {1: "", 2: "B"}.get(round(r_b, 6))
    s = {1: "", 2: "S", 4: "S²"}.get(round(r_s, 6))
    if b is None or s is None:
        return f"x{r_b:.3g} per 2B, x{r_s:.3g} per 2S"
    return "·".join(x for x in (b, s) if x) or "constant"


def activation_table(model: nn.Module, batch_size: int, seq_len: int, *, dropout: bool = True,
                     device: str = "cpu", padded: bool = False) -> pd.DataFrame:
    """The estimate's saved activations, one row per tensor, with what it is and how it grows.

    Columns: ``label`` (as ``estimate_activation_bytes`` names it), ``block``
    ("embeddings", "layer0", ..., "head"), ``kind`` (the label without its block), ``bytes``,
    ``MB``, ``grows with`` ("B·S", "B·S²", ...: read off the estimate at 2B and at 2S),
    ``what`` (what the tensor is and why backward needs it).  The model's
    ``requires_grad`` flags say what trains, so the same model before and after LoRA
    gives the two tables to compare.
    """
    check_positive_int("batch_size", batch_size)
    check_positive_int("seq_len", seq_len)
    kw = dict(dropout=dropout, device=device, padded=padded)
    base = estimate_activation_bytes(model, batch_size, seq_len, **kw)
    twice_b = estimate_activation_bytes(model, 2 * batch_size, seq_len, **kw)
    twice_s = estimate_activation_bytes(model, batch_size, 2 * seq_len, **kw)
    rows = []
    for label, nbytes in base.items():
        block, kind = _kind_of(label)
        grows = _growth(twice_b.get(label, 0) / nbytes, twice_s.get(label, 0) / nbytes) if nbytes else ""
        rows.append({"label": label, "block": block, "kind": kind, "bytes": int(nbytes), "MB": nbytes / MB,
                     "grows with": grows, "what": _describe(kind)})
    return pd.DataFrame(rows, columns=["label", "block", "kind", "bytes", "MB", "grows with", "what"])


def activation_kinds(tables: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """Several ``activation_table``s side by side, summed over blocks: MB per kind of tensor.

    Index: the kind of tensor; one MB column per table (its key), "grows with" and
    "what".  A kind missing from a table is 0 there: that method saves no such tensor.
    Rows are ordered by the largest value, so the big items come first; a ``total``
    row ends the table.
    """
    if not isinstance(tables, Mapping) or not tables:
        raise ValueError("tables must be a non-empty mapping {name: activation_table(...)}")
    sums, info = {}, {}
    for name, t in tables.items():
        missing = {"kind", "bytes", "grows with", "what"} - set(t.columns)
        if missing:
            raise ValueError(f"tables[{name!r}] is not an activation_table: missing {sorted(missing)}")
        sums[name] = t.groupby("kind", sort=False)["bytes"].sum() / MB
        for row in t.itertuples(index=False):
            info.setdefault(row.kind, (row[t.columns.get_loc("grows with")], row.what))
    out = pd.DataFrame(sums).fillna(0.0)
    out = out.loc[out.max(axis=1).sort_values(ascending=False, kind="stable").index]
    out["grows with"] = [info[k][0] for k in out.index]
    out["what"] = [info[k][1] for k in out.index]
    total = {name: float(out[name].sum()) for name in tables}
    out.loc["total"] = {**total, "grows with": "", "what": "all saved activations"}
    out.index.name = "kind"
    return out


def effective_seq_len(model: nn.Module, batch_size: int, activation_bytes: int, max_seq_len: int = 512, *,
                      dropout: bool = True, device: str = "cpu", padded: bool = True) -> int | None:
    """The sequence length at which the estimate gives exactly ``activation_bytes``, or None.

    Why: a real batch is padded to its longest sentence, so a run's measured activations
    belong to that length, not to ``max_length``.  The estimate grows strictly with S, so
    a binary search over 1..``max_seq_len`` finds the S that reproduces the measurement
    (None when no length gives exactly that many bytes, and when the estimate does not
    depend on S at all, as for head-only training, whose saved tensors are B x H).
    """
    check_positive_int("batch_size", batch_size)
    check_positive_int("max_seq_len", max_seq_len)
    kw = dict(dropout=dropout, device=device, padded=padded)

    def act(s: int) -> int:
        return sum(estimate_activation_bytes(model, batch_size, s, **kw).values())

    if act(1) == act(max_seq_len):
        return None  # the length leaves no trace in the activations
    lo, hi = 1, max_seq_len
    while lo < hi:  # the smallest s with act(s) >= target
        mid = (lo + hi) // 2
        if act(mid) < activation_bytes:
            lo = mid + 1
        else:
            hi = mid
    return lo if act(lo) == activation_bytes else None


def kinds_summary(kinds: pd.DataFrame, lora: str, full: str) -> pd.DataFrame:
    """``activation_kinds``' rows gathered into what LoRA does to them, MB per method.

    Groups (the ``total`` row left out): "dropped under LoRA" (saved by full fine-tuning,
    not under LoRA: the inputs of frozen linear layers), "kept alike" (the same bytes under
    both: what backprop must pass through), "more under LoRA" (the adapters' own inputs
    and thin products) and "less under LoRA" (any other kind); each with its number of
    kinds.  Groups with no kind are left out.  A short view of the long table for a first
    lesson; the table itself stays the reference.
    """
    for col in (lora, full):
        if col not in kinds.columns:
            raise ValueError(f"{col!r} is not a column of the kinds table; columns: {list(kinds.columns)}")
    rows = kinds.drop(index="total", errors="ignore")
    a, b = rows[lora].astype(float), rows[full].astype(float)
    group = np.select([(a == 0) & (b > 0), (a == b) & (a > 0), a > b], ["dropped under LoRA", "kept alike", "more under LoRA"],
                      default="less under LoRA")
    order = ["dropped under LoRA", "kept alike", "more under LoRA", "less under LoRA"]
    out = pd.DataFrame({"kinds": rows.groupby(group).size(), lora: a.groupby(group).sum(), full: b.groupby(group).sum()})
    out = out.reindex([g for g in order if g in out.index])
    out.loc["total"] = [int(out["kinds"].sum()), float(a.sum()), float(b.sum())]
    out["kinds"] = out["kinds"].astype(int)
    out.index.name = "group"
    return out
