"""The settings of a planted-rank experiment: ``PlantedConfig``, which checks itself when made."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Literal

from workbench.lora.config import LoRAConfig
from workbench.util.checks import (
    check_choice,
    check_integer,
    check_number,
    check_positive_int,
    check_positive_number,
    is_integer,
)

__all__ = ["Profile", "PROFILES", "PlantedConfig"]

Profile = Literal["equal", "geometric"]
PROFILES = ("equal", "geometric")


@dataclass
class PlantedConfig:
    """Everything that defines a planted-rank experiment, except the student's rank.

    ``targets`` and ``layers`` say where Delta W* is planted, and so where each student's
    LoRA goes: layer names or a regex of module paths, and block indices, negative ones
    counting from the end (-1 is the last block; ``None``: every block).  ``scale`` is
    ||Delta W*||_F / ||W||_F in each planted layer.

    ``lora``: the students' LoRA settings, a ``LoRAConfig`` whose rank and targets each
    student replaces by its own (rank r, in exactly the planted layers); its alpha,
    rsLoRA, dropout, init and DoRA apply to every student.  ``None`` (the default): alpha
    = r, so the LoRA scaling s = alpha / r is 1 at every rank, and LoRA's defaults
    otherwise (``student_lora``).
    """

    model: str = "minilm"
    targets: list[str] | str = field(default_factory=lambda: ["intermediate.dense"])
    layers: list[int] | None = field(default_factory=lambda: [-1])
    true_rank: int = 4
    scale: float = 0.4
    profile: Profile = "equal"
    decay: float = 0.5  # s_{i+1} / s_i for profile="geometric"
    seed: int = 0
    batch_size: int = 16
    seq_len: int = 32
    train_batches: int = 8
    eval_batches: int = 2
    steps: int = 300
    lr: float = 3e-2
    lora: LoRAConfig | None = None
    cache_prefix: bool = True
    threads: int | None = None  # torch CPU threads while training; None leaves torch's setting

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first field that is out of range."""
        for name in ("true_rank", "batch_size", "seq_len", "train_batches", "eval_batches", "steps"):
            check_positive_int(name, getattr(self, name))
        if not isinstance(self.model, str) or not self.model:
            raise ValueError(f"model must be a model name such as 'minilm' or 'tiny-bert', got {self.model!r}")
        if isinstance(self.targets, str):
            if not self.targets or self.targets == "all-linear":
                raise ValueError(f"targets must be layer names such as ['value'] or a regex of module paths, got {self.targets!r}")
        elif not self.targets or not all(isinstance(t, str) and t for t in self.targets):
            raise ValueError(f"targets must be a non-empty list of layer names such as ['value'], got {self.targets!r}")
        if self.layers is not None:
            if isinstance(self.layers, (str, int)) or not list(self.layers) or not all(is_integer(i) for i in self.layers):
                raise ValueError(f"layers must be None (every block) or a non-empty list of block indices, got {self.layers!r}")
        check_positive_number("scale", self.scale)
        check_positive_number("lr", self.lr)
        check_choice("profile", self.profile, PROFILES)
        check_number("decay", self.decay, 0, 1, low_open=True, what="the ratio s_(i+1) / s_i")
        check_integer("seed", self.seed)
        if self.lora is not None and not isinstance(self.lora, LoRAConfig):
            raise ValueError(f"lora must be None (alpha = r) or a LoRAConfig, got {type(self.lora).__name__}")
        if self.lora is not None and self.lora.layers is not None:
            raise ValueError(f"lora.layers must be None: the students sit in the planted layers, chosen by "
                             f"PlantedConfig.layers (got lora.layers={list(self.lora.layers)})")
        if self.threads is not None:
            check_positive_int("threads", self.threads)

    def student_lora(self, rank: int, paths: Sequence[str]) -> LoRAConfig:
        """The LoRA settings of the student of rank ``rank``, in exactly the layers ``paths``.

        ``lora`` with that rank and those targets, or (``lora`` None) alpha = r: s = 1.
        """
        check_positive_int("rank", rank)
        if self.lora is None:
            return LoRAConfig(rank=int(rank), alpha=float(rank), targets=tuple(paths))
        return self.lora.replace(rank=int(rank), targets=tuple(paths))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["lora"] = None if self.lora is None else self.lora.to_dict()
        return d
