"""``LoRAConfig``: every LoRA setting of a run, declared once.

The layer, ``add_lora``, ``RunConfig`` (its ``lora`` field), the adapter files (PEFT's
``adapter_config.json``), the planner, the CLI, the panel and the run store's ids and
labels all read their LoRA settings from this one dataclass, so a setting added here
shows up everywhere (as PEFT's ``LoraConfig`` is the single source of its settings).

    y = W x + s * B A dropout(x),   s = alpha / r   (rsLoRA: alpha / sqrt(r))

A config is checked when it is made: a bad value is refused with a message that says
what is allowed, never silently rewritten.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Literal, Sequence

from workbench.util.checks import is_integer, check_bool, check_positive_int, check_positive_number, check_probability

Init = Literal["kaiming", "gaussian", "pissa"]
INITS: tuple[str, ...] = ("kaiming", "gaussian", "pissa")
ALL_LINEAR = "all-linear"


def lora_scaling(rank: int, alpha: float, rslora: bool = False) -> float:
    """The factor s in  y = W x + s B A x:  alpha / r, or alpha / sqrt(r) with rsLoRA."""
    return alpha / math.sqrt(rank) if rslora else alpha / rank


def check_init(init: object) -> None:
    """``init`` must name one of ``INITS``; the error lists them."""
    if init not in INITS:
        allowed = ", ".join(repr(i) for i in INITS)
        raise ValueError(f"init must be one of {allowed}, got {init!r}")


def check_targets(targets: object) -> tuple[str, ...] | str:
    """Targets as ``find_targets`` takes them: a string (a regex of the whole path, or
    "all-linear"), or a non-empty list of non-empty roles and names (returned as a tuple).

    Whether a name is a role of the model or one of its modules is known only with the
    model at hand (``workbench.lora.roles``), so ``find_targets`` checks that."""
    if isinstance(targets, str):
        if not targets:
            raise ValueError("targets must name at least one layer (a name, a regex, or 'all-linear'), got ''")
        return targets
    targets = tuple(targets)
    if not targets:
        raise ValueError("LoRA needs at least one target layer (e.g. query and value); none is selected")
    bad = [t for t in targets if not isinstance(t, str) or not t]
    if bad:
        raise ValueError(f"target names must be non-empty strings, got {bad!r}")
    return targets


@dataclass(frozen=True)
class LoRAConfig:
    """The LoRA settings: rank, scale, where, and which variant.

    ``targets``: roles ("query", "key", "value", "attention output", "FFN in", "FFN out":
    the same part of every block in any architecture, see ``workbench.lora.roles``) and
    module names (a module matches when its path is the name or ends with ``"." + name``),
    a regular expression for the whole path, or ``"all-linear"``;
    ``layers``: only blocks with these indices (None: all).  ``init``: "kaiming"
    (PEFT's default: A kaiming-uniform, B = 0), "gaussian" (A ~ N(0, 1/r)) or "pissa"
    (A, B from the top-r singular directions of W).  ``dora``: a learned magnitude per
    output, LoRA updates the direction.  ``loraplus_ratio``: LoRA+, B learns this many
    times faster than A (an optimizer setting, kept here because it is part of the recipe).
    """

    rank: int = 8
    alpha: float = 16.0
    targets: tuple[str, ...] | str = ("query", "value")
    layers: tuple[int, ...] | None = None
    dropout: float = 0.0
    rslora: bool = False
    init: str = "kaiming"
    dora: bool = False
    loraplus_ratio: float | None = None

    def __post_init__(self) -> None:
        check_positive_int("rank", self.rank)
        check_positive_number("alpha", self.alpha)
        check_probability("dropout", self.dropout)
        check_bool("rslora", self.rslora)
        check_bool("dora", self.dora)
        check_init(self.init)
        if self.loraplus_ratio is not None:
            check_positive_number("loraplus_ratio", self.loraplus_ratio, what="B's learning rate / A's, or None")
        targets = check_targets(self.targets)
        object.__setattr__(self, "targets", targets)
        if self.layers is not None:
            layers = tuple(self.layers)
            bad = [i for i in layers if not is_integer(i) or i < 0]
            if bad or not layers:
                raise ValueError(f"layers must be None (all blocks) or block indices >= 0, got {self.layers!r}")
            object.__setattr__(self, "layers", tuple(sorted(set(layers))))
        object.__setattr__(self, "alpha", float(self.alpha))
        object.__setattr__(self, "dropout", float(self.dropout))

    # ---- what the settings mean -----------------------------------------------------------------------------

    @property
    def scaling(self) -> float:
        """s = alpha / r (rsLoRA: alpha / sqrt(r))."""
        return lora_scaling(self.rank, self.alpha, self.rslora)

    @property
    def kind(self) -> str:
        """"DoRA" or "LoRA": what the layers compute."""
        return "DoRA" if self.dora else "LoRA"

    def targets_text(self) -> str:
        return self.targets if isinstance(self.targets, str) else ",".join(self.targets)

    def label(self, where: str | None = None) -> str:
        """A short human label: 'LoRA r=8 (query,value)', 'DoRA r=8 rsLoRA PiSSA (query)'.

        ``where`` replaces the targets in the brackets (a run's label names its targets by
        kind when they are a regex; ``workbench.engine.labels`` builds run names on this)."""
        extras = "".join([
            " rsLoRA" if self.rslora else "",
            " PiSSA" if self.init == "pissa" else "",
            f" LoRA+x{self.loraplus_ratio:g}" if self.loraplus_ratio else "",
        ])
        return f"{self.kind} r={self.rank}{extras} ({self.targets_text() if where is None else where})"

    def slug(self) -> str:
        """The part of a run id that names the settings: 'lora-r8', 'dora-r8-rslora-pissa'."""
        parts = [self.kind.lower(), f"r{self.rank}"]
        if self.rslora:
            parts.append("rslora")
        if self.init != "kaiming":
            parts.append(self.init)
        if self.loraplus_ratio:
            parts.append(f"plus{self.loraplus_ratio:g}")
        return "-".join(parts)

    # ---- conversions ----------------------------------------------------------------------------------------

    def replace(self, **changes: Any) -> "LoRAConfig":
        """A copy with some settings changed (checked like a new config)."""
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["targets"] = self.targets if isinstance(self.targets, str) else list(self.targets)
        d["layers"] = None if self.layers is None else list(self.layers)
        return d

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "LoRAConfig":
        """Build from a dict, ignoring keys this version does not know."""
        known = set(cls.field_names())
        return cls(**{k: v for k, v in d.items() if k in known})

    @classmethod
    def build(cls, config: "LoRAConfig | None" = None, **settings: Any) -> "LoRAConfig":
        """A config given whole, or built from keyword settings; not both.

        ``add_lora(model, rank=4)`` and ``add_lora(model, LoRAConfig(rank=4))`` mean the
        same; an unknown keyword is refused with the list of settings that exist.
        """
        unknown = sorted(set(settings) - set(cls.field_names()))
        if unknown:
            raise TypeError(f"unknown LoRA setting(s) {', '.join(unknown)}; "
                            f"the settings are: {', '.join(cls.field_names())}")
        if config is None:
            return cls(**settings)
        if not isinstance(config, LoRAConfig):
            raise TypeError(f"config must be a LoRAConfig, got {type(config).__name__}")
        if settings:
            raise TypeError("give either a LoRAConfig or keyword settings, not both "
                            f"(got a config and {', '.join(sorted(settings))})")
        return config

    def to_peft(self) -> dict[str, Any]:
        """The fields of PEFT's ``adapter_config.json`` that these settings determine."""
        return {
            "r": self.rank,
            "lora_alpha": self.alpha,
            "lora_dropout": self.dropout,
            "target_modules": self.targets if isinstance(self.targets, str) else list(self.targets),
            "layers_to_transform": None if self.layers is None else list(self.layers),
            "use_rslora": self.rslora,
            "use_dora": self.dora,
            "init_lora_weights": True if self.init == "kaiming" else self.init,
        }

    @classmethod
    def from_peft(cls, d: dict[str, Any]) -> "LoRAConfig":
        """Settings from PEFT's ``adapter_config.json`` (``init_lora_weights: true`` is kaiming).

        A field this workbench cannot honour (an init that rewrites the base, a rank
        pattern) is refused by the adapter reader before it gets here.
        """
        init = d.get("init_lora_weights", True)  # True/False: the trained weights replace A and B anyway
        layers = d.get("layers_to_transform")
        if isinstance(layers, int) and not isinstance(layers, bool):
            layers = [layers]
        return cls(
            rank=d["r"],
            alpha=d.get("lora_alpha", 8),
            targets=d["target_modules"],
            layers=layers,
            dropout=d.get("lora_dropout", 0.0) or 0.0,
            rslora=bool(d.get("use_rslora", False)),
            init=init if init in INITS else "kaiming",
            dora=bool(d.get("use_dora", False)),
        )


def split_settings(options: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(LoRA settings, the rest) of a dict of keyword options, by ``LoRAConfig``'s field names."""
    names = set(LoRAConfig.field_names())
    return ({k: v for k, v in options.items() if k in names}, {k: v for k, v in options.items() if k not in names})


__all__: Sequence[str] = ("LoRAConfig", "INITS", "Init", "ALL_LINEAR", "lora_scaling", "check_init", "split_settings", "check_targets")
