"""Notebook 03 (``notebooks/03_memory.ipynb``): where the memory of a training step goes.

``workbench.engine.memory`` counts the memory of a training step exactly
(``measure_train_step``, ``measure_step``), sets a measurement beside an estimate
(``compare_breakdowns``) and predicts it from shapes alone (``estimate_memory``).  This lesson sets the two side by side for a ``RunConfig``, over a
grid of batch sizes and sequence lengths, and says what the notebook's text claims:

* ``measured``     ``measure_vs_estimate(cfg, batch_size, seq_len)``: one step of ``cfg`` on a
                   synthetic batch, measured and estimated; ``memory_grid``: the same over a grid;
* ``activations``  ``activation_table``, ``activation_kinds``, ``kinds_summary``: the estimate's
                   saved tensors, what each is and how it grows; ``effective_seq_len``;
* ``resident``     ``resident_before_training(cfg)``: a run's resident memory after its set-up, in a
                   fresh process (what its CPU peak starts from);
* ``findings``     the notebook's tables and paragraphs, and ``findings(...)``: every claim of its
                   text, read off the data (its self-test and the unit tests assert on it).

Units: bytes in the tables' ``measured``/``estimated`` columns, decimal MB (10**6 bytes)
where a column says MB.
"""

from __future__ import annotations

from workbench.lessons.memory.activations import (
    TENSOR_KINDS,
    activation_kinds,
    activation_table,
    effective_seq_len,
    kinds_summary,
)
from workbench.lessons.memory.findings import (
    Agreement,
    Findings,
    QLoRAWeights,
    agreement,
    budget_table,
    findings,
    qlora_weights,
    quadratic_share,
    run_table,
    savings_table,
)
from workbench.lessons.memory.resident import Resident, resident_before_training
from workbench.lessons.memory.measured import (
    MemoryComparison,
    measure_vs_estimate,
    memory_grid,
    prepared_model,
    synthetic_batch,
)

__all__ = [
    "MemoryComparison",
    "prepared_model",
    "synthetic_batch",
    "measure_vs_estimate",
    "memory_grid",
    "activation_table",
    "activation_kinds",
    "kinds_summary",
    "effective_seq_len",
    "TENSOR_KINDS",
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
    "Resident",
    "resident_before_training",
]
