"""A task whose true update has a known rank: the planted-rank lesson (notebook 05_planted_rank).

LoRA bets that the change a task needs, Delta W, has low rank.  On a real task nobody
knows that rank.  Here we *make* a task where we know it: a teacher is the base model
with a random rank-k update planted in chosen layers,

    W_teacher = W + Delta W*,     Delta W* = U diag(s_1 .. s_k) V^T,

with U (out x k) and V (in x k) random orthonormal columns.  A student, the base model
with LoRA of rank r in the same layers, learns to reproduce the teacher's outputs (the
last hidden state of the encoder, mean squared error).  For r >= k the student can
represent Delta W* exactly, so the loss can go to zero; for r < k it cannot, and the
best it can do leaves an error.  In Frobenius norm that error is the Eckart-Young tail
(Eckart & Young 1936): the best rank-r matrix is the SVD truncated after r terms, and

    min_{rank M <= r} ||Delta W* - M||_F^2 = s_{r+1}^2 + ... + s_k^2.

The student is measured on outputs, not on Delta W itself, so that tail is a guide, not
an identity: the layer's inputs X (tokens x in) are not isotropic, and directions they
rarely visit matter little.  The bound that holds for the layer's *outputs* is the same
theorem applied to Delta W* X^T (``output_singular_values``); the layers above still bend
the error, so it too is a guide for the final loss.  On MiniLM (k = 4) it predicted the
measured loss at r = 1 and 2 to within about 10% (0.61 and 0.34 against 0.63 and 0.38,
as fractions of the base model's loss), where the tail of Delta W* alone says 0.75 and 0.5.
``eckart_young_fraction`` turns either spectrum into the fraction that is missed.

Design choices, each for a clean "knee" at r = k (measured on MiniLM, k = 4, 300 steps):

* The update is planted in the first layer of the feed-forward network (FFN in,
  ``intermediate.dense``) of the last block.  It acts on each token separately, so what
  it changes reaches the output without being averaged over positions, as the
  attention's ``value`` vectors are.  Planted in ``value`` the knee was soft (loss ratio
  r=2 : r=4 about 2 : 1 after 200 steps); in FFN in it was about 100 : 1.
* Equal planted singular values (``profile="equal"``) make every direction as important
  as the next: r < k misses (k - r)/k of ||Delta W*||_F^2, r = k misses nothing.  A
  decaying spectrum (``profile="geometric"``) is more like a real task and gives a softer knee.
* ``alpha = r`` by default, so the LoRA scaling s = alpha / r = 1 for every rank: with
  Adam each entry of B moves by about the learning rate per step whatever r is, so each
  of the r directions of Delta W = B A grows at the same speed and ranks differ only in
  capacity, not in step size.  (With a fixed alpha, s = alpha / r shrinks the update of
  high ranks; rsLoRA's alpha / sqrt(r) is in between.)  A ``LoRAConfig`` given as the
  config's ``lora`` (its alpha, rsLoRA, dropout, init, DoRA) changes this to show the effect.
* Inputs are random token sequences from the tokenizer's vocabulary (no data needed) with
  no padding; the same seeded batches serve every rank.  Train and evaluation batches
  are distinct; the reported loss is on the evaluation batches.
* Everything below the first planted block is the same in base, teacher and student, so
  for a BERT-like encoder (blocks in ``encoder.layer``) its output is computed once per
  batch and cached, and training runs only the blocks from the first planted one up.  The
  teacher's outputs are computed once, under ``torch.no_grad``.  Planting in the last
  block (the default, ``layers=[-1]``) means a step runs one of MiniLM's six blocks.
* float32 throughout: the losses at r >= k fall to 1e-3 .. 1e-7 of the start, where
  bfloat16's 3 significant digits would blur the knee.
* Adam at lr 3e-2 (3e-3 and 1e-2 left r = k at 7x and 2x the loss after 300 steps), the
  rate following a cosine down to zero: a constant rate leaves Adam jittering around the
  optimum at a loss set by the rate, which would fill in the knee.

What the student cannot learn.  The student is judged on outputs only, so any part of
Delta W* that the layer's inputs never excite (for example the all-ones direction, which
a LayerNorm with its initial weights removes from every input) is invisible to it, and
||Delta W - Delta W*||_F (``delta_error``) stays well above zero even when the loss is
1e-6 of the start.  ``output_error`` measures the error on the real inputs instead.

The rooms of this package, one idea each (``from workbench.lessons.planted_rank import ...``
reaches every public name):

* ``config``    ``PlantedConfig``: everything that defines an experiment but the student's rank;
* ``teacher``   planting Delta W* (``make_teacher``) and where it goes (``target_paths``);
* ``task``      the seeded batches and cached teacher outputs every student shares;
* ``student``   one student of rank r, trained to imitate the teacher (``fit_student``);
* ``measures``  closed forms and measures: Eckart-Young, output and delta errors, captured energy;
* ``sweep``     one student per rank, the summary table, and the ``findings`` notebook 05 shows;
* ``figures``   loss against rank, spectra, loss curves, on the house style.
"""

from workbench.lessons.planted_rank.config import PROFILES, PlantedConfig, Profile
from workbench.lessons.planted_rank.figures import (
    PLANTED_COLOR,
    REFERENCES,
    TAIL_COLOR,
    loss_curves_figure,
    loss_vs_rank_figure,
    spectrum_comparison_figure,
    sweep_colors,
)
from workbench.lessons.planted_rank.measures import (
    captured_energy,
    delta_error,
    eckart_young_fraction,
    output_error,
    output_singular_values,
)
from workbench.lessons.planted_rank.student import PlantedResult, fit_student
from workbench.lessons.planted_rank.sweep import PlantedFindings, PlantedSweep, findings, rank_sweep, sweep_table
from workbench.lessons.planted_rank.task import PlantedTask, layer_inputs, prepare_task, random_token_batches
from workbench.lessons.planted_rank.teacher import (
    make_teacher,
    planted_delta,
    planted_singular_values,
    resolve_layers,
    target_paths,
)

__all__ = [
    "Profile", "PROFILES", "PlantedConfig",
    "planted_singular_values", "planted_delta", "resolve_layers", "target_paths", "make_teacher",
    "random_token_batches", "PlantedTask", "prepare_task", "layer_inputs",
    "PlantedResult", "fit_student",
    "eckart_young_fraction", "output_singular_values", "output_error", "delta_error", "captured_energy",
    "PlantedSweep", "sweep_table", "rank_sweep", "PlantedFindings", "findings",
    "PLANTED_COLOR", "TAIL_COLOR", "REFERENCES", "loss_vs_rank_figure", "sweep_colors",
    "spectrum_comparison_figure", "loss_curves_figure",
]
