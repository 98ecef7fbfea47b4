"""Closed forms and measures: what a rank-r update must miss, and how close a learned one came.

In Frobenius norm the best rank-r approximation misses the Eckart-Young tail (Eckart &
Young 1936): the best rank-r matrix is the SVD truncated after r terms, and

    min_{rank M <= r} ||Delta W* - M||_F^2 = s_{r+1}^2 + ... + s_k^2.

The student is measured on outputs, so the bound that holds for the layer's outputs is the
same theorem applied to Delta W* X^T (``output_singular_values``).  Pure functions of
tensors: no model here.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from workbench.lessons.delta_w import SPECTRUM_FLOOR, singular_values
from workbench.util.checks import check_integer

__all__ = ["eckart_young_fraction", "tail_and_total", "output_singular_values", "output_error", "delta_error",
           "captured_energy"]


def eckart_young_fraction(s: torch.Tensor | Sequence[float], rank: int) -> float:
    """(s_{r+1}^2 + ... + s_n^2) / (s_1^2 + ... + s_n^2): what the best rank-r matrix misses.

    By Eckart-Young, truncating the SVD of a matrix M after r terms gives the closest
    rank-r matrix in Frobenius norm, and the squared error left is the sum of the
    dropped squared singular values.  With M = Delta W* and equal s_i this is (k - r) / k
    for r < k, and 0 for any r >= k.  Values below ``SPECTRUM_FLOOR`` * s_1 count as the
    exact zeros they are (an SVD returns them as rounding noise, about 1e-16 s_1).
    """
    tail, total = tail_and_total(s, rank)
    if total == 0:
        raise ValueError("the singular values are all zero: a zero matrix has no best approximation to measure")
    return tail / total


def tail_and_total(s: torch.Tensor | Sequence[float], rank: int) -> tuple[float, float]:
    check_integer("rank", rank, minimum=0)
    sv = torch.as_tensor(s, dtype=torch.float64).flatten().sort(descending=True).values
    if len(sv) and float(sv[0]) > 0:  # values under SPECTRUM_FLOOR * s_1 are rounding of exact zeros
        sv = torch.where(sv > SPECTRUM_FLOOR * sv[0], sv, torch.zeros_like(sv))
    return float((sv[int(rank):] ** 2).sum()), float((sv**2).sum())


def output_singular_values(delta: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
    """Singular values of Delta W X^T: the update as the layer's inputs see it.

    The student is measured on outputs, so the Eckart-Young bound that applies is the
    one for Delta W* X^T (out x tokens): among rank-r updates Delta W,

        min ||(Delta W - Delta W*) X^T||_F^2 = sum_{i>r} sigma_i(Delta W* X^T)^2,

    since every rank-r matrix with rows in the row space of X^T is some Delta W X^T,
    and the truncated SVD of Delta W* X^T is one.  Directions of Delta W* that the
    inputs rarely visit count little here, however large s_i is.
    """
    return singular_values(delta.to(torch.float64) @ inputs.to(torch.float64).T)


def output_error(learned: torch.Tensor, planted: torch.Tensor, inputs: torch.Tensor) -> float:
    """||(Delta W - Delta W*) X^T||_F / ||Delta W* X^T||_F: the learned update's error on the real inputs.

    Unlike ``delta_error`` this ignores what the inputs never excite (for example the
    all-ones direction, which a LayerNorm with its initial weights removes from every
    input): no training signal can recover Delta W* there, so it is no fault of the student.
    """
    x = inputs.to(torch.float64).T
    p = planted.detach().to(torch.float64) @ x
    return float(torch.linalg.matrix_norm(learned.detach().to(torch.float64) @ x - p) / torch.linalg.matrix_norm(p))


def delta_error(learned: torch.Tensor, planted: torch.Tensor) -> float:
    """||Delta W - Delta W*||_F / ||Delta W*||_F: how close the learned update is to the planted one."""
    d = learned.detach().to(torch.float64) - planted.detach().to(torch.float64)
    return float(torch.linalg.matrix_norm(d) / torch.linalg.matrix_norm(planted.detach().to(torch.float64)))


def captured_energy(learned: torch.Tensor, planted: torch.Tensor, tol: float = 1e-6) -> float:
    """The share of ||Delta W*||_F^2 inside the row and column spaces of the learned Delta W.

        ||P_U Delta W* P_V||_F^2 / ||Delta W*||_F^2,   P_U, P_V: projections onto the
        left and right singular vectors of Delta W with sigma > tol * sigma_1.

    1 when the student found all of Delta W*'s directions; at most r / k for equal planted
    singular values and a rank-r student.
    """
    u, sv, vh = torch.linalg.svd(learned.detach().to(torch.float64), full_matrices=False)
    if float(sv[0]) == 0.0:
        return 0.0
    keep = sv > tol * sv[0]
    u, v = u[:, keep], vh[keep].T
    p = planted.detach().to(torch.float64)
    inside = u.T @ p @ v
    return float((inside**2).sum() / (p**2).sum())
