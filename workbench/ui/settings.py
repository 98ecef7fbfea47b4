"""The panel's settings: the choices, the run they make, what is wrong with them, the readout.

``Settings`` holds, for one model and preset (one task), in plain Python:

* the **choices** (``Choices``): method, LoRA variant, ``rank``, ``alpha``, ``rslora``,
  ``targets`` (the kinds of layer ticked), ``layer_range`` (the blocks, as LoRAConfig's
  ``layers``), ``lr``, ``steps``, ``batch_size``, ``seed``, ``quantize``: the names of
  ``RunConfig`` and ``LoRAConfig`` wherever the thing is the same;
* the **RunConfig** they make (``config()``, with its ``lora: LoRAConfig``), and what
  is wrong with them (``problem()``): a bad value is refused with a message that says
  what is allowed, never clamped or rewritten;
* the **parameter readout** from layer shapes alone: a LoRA layer of shape in -> out
  trains r * (in + out) numbers (A is r x in, B is out x r; DoRA adds out magnitudes):

      trainable = sum over chosen layers of r * (in + out)  +  head parameters.

Numbers may arrive as typed text (``update(lr="0,001")``): ``workbench.ui.typed`` reads
a plain number; anything else is kept as typed and refused by ``problem()``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import Any

from workbench.engine.config import METHODS, RunConfig, preset as make_preset
from workbench.engine.labels import label_for_kinds
from workbench.engine.sweep import FULL_LR, HEAD_LR, VARIANTS
from workbench.lora.config import LoRAConfig, lora_scaling
from workbench.lora.params import ParamCounts, lora_parameter_count
from workbench.lora.paths import layer_index
from workbench.lora.quantize import (QUANTIZE_CHOICES, int8_bits_per_weight, nf4_bits_per_weight,
                                     quantized_bytes_per_weight)
from workbench.lora.targets import LayerGroup, targets_for
from workbench.ui.model_layers import ModelLayers
from workbench.ui.typed import NUMBER_CHOICES, number_problem, read_number
from workbench.util.checks import check_choice, check_positive_int, is_integer
from workbench.util.units import format_bytes

# The methods and LoRA variants the panel offers, as (label, value).  A variant is a set
# of LoRAConfig settings (workbench.engine.sweep.VARIANTS); rsLoRA has its own checkbox.
METHOD_LABELS: tuple[tuple[str, str], ...] = (("LoRA", "lora"), ("full fine-tuning", "full"), ("head only", "head"))
VARIANT_OPTIONS: tuple[tuple[str, str], ...] = (
    ("LoRA", "lora"), ("DoRA (learned magnitude)", "dora"), ("PiSSA init (top-r SVD of W)", "pissa"),
    ("LoRA+ (B's lr x16)", "loraplus"),
)
# How the frozen base is stored under LoRA, as (label, RunConfig.quantize): QLoRA's choices.
QUANTIZE_OPTIONS: tuple[tuple[str, str | None], ...] = (
    ("float (no quantization)", None), ("NF4 (4-bit, QLoRA)", "nf4"), ("int8 (LLM.int8)", "int8"),
)
# A language model's run from the panel answers this many held-out prompts at the
# evaluations before the last (RunConfig.interim_generate_examples), and all of them at the
# end: each interim evaluation is then a short pause instead of seconds with nothing on screen.
INTERIM_PROMPTS = 20
# A learning rate this many times the method's starting one is warned about before the run.
LR_WARN_FACTOR = 100.0
# The rank never goes above this, even for wide layers: beyond it a workshop run learns
# nothing new and a slider becomes hard to aim.
RANK_CAP = 64
# Starting learning rates per method (LoRA: the preset's lr).  Full fine-tuning moves
# weights the model already relies on, so it takes small steps; LoRA's B starts at zero
# and needs larger ones; a fresh head alone tolerates the largest.
DEFAULT_LR: dict[str, float] = {"full": FULL_LR, "head": HEAD_LR}
LR_WHY: dict[str, str] = {
    "lora": "LoRA's B matrices start at zero, so the update needs larger steps than full fine-tuning",
    "full": "every weight moves, and large steps would wreck what the model already knows",
    "head": "only a small new layer learns on top of frozen features, so larger steps are safe",
}
# Why a language model gets no "head only": said where the method is chosen.
HEAD_NOT_FOR_LM = ("head only is for a classifier: a language model has no new head to train on its own (its "
                   "output layer is part of the pre-trained model and predicts the next word over the whole "
                   "vocabulary); choose LoRA or full fine-tuning")


def quantize_note(quantize: str, model: ModelLayers) -> str:
    """What a quantized base stores per weight, constants included (``workbench.lora.quantize``)."""
    if quantize == "nf4":
        bits = nf4_bits_per_weight()
        how = "4-bit codes + an 8-bit absmax per 64 weights + an fp32 scale per 256 absmax"
    else:
        widths = [g.shape[0] for g in model.targets.values() if g.type == "Linear"] or [1]
        bits = int8_bits_per_weight(min(widths))
        how = "8-bit codes + an fp32 scale per output row"
    floats, quantized, n = quantized_weight_bytes(quantize, model)
    total = 4 * model.base_parameters  # fp32, as the base loads
    mb = (f"; the weights: about {format_bytes(total)} in fp32 -> {format_bytes(total - 4 * n + quantized)} "
          f"(the block linears' {format_bytes(floats)} -> {format_bytes(quantized)})" if n else "")
    return (f"QLoRA base: the frozen block linears stored in {quantize} ({how}: about {bits:.3g} bits, "
            f"{bits / 8:.3g} byte per weight, against 4 in fp32 and 2 in bf16){mb}; LoRA trains in float on top")


def quantized_weight_bytes(quantize: str, model: ModelLayers) -> tuple[int, float, int]:
    """(fp32 bytes, quantized bytes, weights) of the block linears a quantized base stores in 4/8 bits.

    Those are the ``nn.Linear`` layers inside numbered blocks (``quantize_model``); each
    weight costs ``quantized_bytes_per_weight`` there (codes and constants), 4 bytes in fp32.
    """
    seen: set[str] = set()
    floats, quantized, n = 0, 0.0, 0
    for g in model.targets.values():
        if g.type != "Linear":
            continue
        for name in g.names:
            if name in seen or layer_index(name) is None:
                continue
            seen.add(name)
            weights = g.shape[0] * g.shape[1]
            n += weights
            floats += 4 * weights
            quantized += weights * quantized_bytes_per_weight(quantize, g.shape[0])
    return floats, quantized, n



# ---------------------------------------------------------------------------------------------- the choices


@dataclass
class Choices:
    """The panel's controls as plain values, kept as the user gave them (checked by ``problem``).

    ``targets``: the names (``ModelLayers.targets``) of the layer kinds ticked;
    ``layer_range``: the first and last block LoRA goes into (LoRAConfig's ``layers``
    is the blocks in it, or None when it covers them all).
    """

    method: str
    variant: str
    rank: int
    alpha: float
    rslora: bool
    targets: tuple[str, ...]
    layer_range: tuple[int, int]
    lr: float
    steps: int
    batch_size: int
    seed: int
    quantize: str | None = None  # QLoRA: the frozen base stored in "nf4" or "int8"; None: float (LoRA only)

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))


@dataclass(frozen=True)
class Selection:
    """One ticked layer group and the module paths of it inside the layer range.

    ``members``: the panel's target names it stands for (GPT-2's fused query, key and
    value are one Selection, "query/key/value (fused)", so its layers count once).
    """

    key: str
    group: LayerGroup
    names: list[str]
    members: tuple[str, ...] = ()


class SettingsError(ValueError):
    """The choices cannot make a run; the message says what was given and what is allowed."""


@dataclass(frozen=True)
class Readout:
    """The live parameter readout: the counts (None when the settings give none), how, and what is wrong."""

    estimate: ParamCounts | None
    detail: str
    problem: str | None = None
    base_parameters: int | None = None  # the model's own count (the header's), before LoRA adds any

    @property
    def headline(self) -> str:
        if self.estimate is None:
            return "Trainable parameters: –"
        e = self.estimate
        text = f"Trainable parameters: {e.trainable:,} of {e.total:,} ({100 * e.share:.3g}% of the model)"
        added = e.total - self.base_parameters if self.base_parameters is not None else 0
        if added > 0:
            text += f"; the total is the model's {self.base_parameters:,} plus the {added:,} LoRA adds"
        return text


def _method_label(method: str) -> str:
    return dict((v, k) for k, v in METHOD_LABELS)[method]


class Settings:
    """The choices for one model and preset, the RunConfig they make, and their readout.

    ``model``: the model's ``ModelLayers``; ``preset``: the preset's name, whose
    ``defaults`` (the preset's RunConfig for this model) the choices start from.  A new
    task is a new ``Settings`` (``PanelState.set_task``).
    """

    def __init__(self, model: ModelLayers, preset: str, defaults: RunConfig) -> None:
        self.model = model
        self.preset_name = preset
        self.defaults = defaults
        self.choices = self.default_choices()
        #: Choices an instructor has fixed for an exercise: name -> why (``lock``); empty when none.
        self.locked: dict[str, str] = {}

    @property
    def task(self) -> str:
        """"classification" (classify) or "causal-lm" (generate): the preset's ``task``."""
        return self.defaults.task

    def methods(self) -> tuple[tuple[str, str], ...]:
        """The methods offered for the task, as (label, value): no head only for a language model."""
        return tuple(m for m in METHOD_LABELS if not (self.task == "causal-lm" and m[1] == "head"))

    # ------------------------------------------------------------------ choices

    def default_choices(self) -> Choices:
        """The preset's settings, as the panel's controls show them."""
        d, lo_hi = self.defaults, (self.model.blocks[0], self.model.blocks[-1]) if self.model.blocks else (0, 0)
        wanted = self.model.targets_matching(d.lora.targets) or tuple(self.model.targets)[:1]
        if d.lora.layers:
            lo_hi = (min(d.lora.layers), max(d.lora.layers))
        variant = next((v for _, v in VARIANT_OPTIONS
                        if VARIANTS[v] and all(getattr(d.lora, k) == x for k, x in VARIANTS[v].items())), "lora")
        return Choices(method=d.method, variant=variant, rank=d.lora.rank, alpha=d.lora.alpha, rslora=d.lora.rslora,
                       targets=wanted, layer_range=lo_hi, lr=self.starting_lr(d.method), steps=d.steps,
                       batch_size=d.batch_size, seed=d.seed, quantize=d.quantize if d.method == "lora" else None)

    def update(self, **changes: Any) -> None:
        """Change some choices.  They are kept as given; ``problem()`` says what is wrong.

        Switching the method sets its starting learning rate (``starting_lr``), as the
        panel's note says; every other choice changes only the setting named.
        """
        unknown = sorted(set(changes) - set(Choices.names()))
        if unknown:
            raise TypeError(f"unknown choice(s) {', '.join(unknown)}; the choices are: {', '.join(Choices.names())}")
        for name, kind in NUMBER_CHOICES.items():
            if isinstance(changes.get(name), str):
                changes[name] = read_number(changes[name], kind)
        if "targets" in changes and not isinstance(changes["targets"], str):
            changes["targets"] = self._with_fused(tuple(changes["targets"]))
        if "layer_range" in changes and not isinstance(changes["layer_range"], str):
            changes["layer_range"] = tuple(changes["layer_range"])
        held = sorted(n for n in changes if n in self.locked and changes[n] != getattr(self.choices, n))
        if held:
            raise SettingsError(f"{', '.join(held)} {'is' if len(held) == 1 else 'are'} locked for this exercise: "
                                f"{self.locked[held[0]]}")
        if ("method" in changes and changes["method"] != self.choices.method and "lr" not in changes
                and "lr" not in self.locked):
            changes["lr"] = self.starting_lr(changes["method"])
        self.choices = replace(self.choices, **changes)

    def lock(self, values: dict[str, Any], reason: str) -> None:
        """Set these choices and keep them for an exercise (the workshop room's locked settings).

        ``values``: choice name -> value, set as ``update`` sets them (checked the same way);
        ``reason``: what the attendee is told.  A later change of one is refused with the reason;
        ``unlock`` ends it.  A new lock replaces the previous one."""
        if not isinstance(reason, str) or not reason.strip():
            raise ValueError("a lock needs a reason the attendee is told (a non-empty text)")
        self.locked = {}
        self.update(**dict(values))
        self.locked = {name: reason.strip() for name in values}

    def unlock(self) -> None:
        """Every choice can be changed again."""
        self.locked = {}

    def _with_fused(self, targets: tuple[str, ...]) -> tuple[str, ...]:
        """Targets with each fused group (GPT-2's query, key, value) all ticked or all not.

        A group that gained a member is ticked whole; one that lost a member is unticked
        whole (one layer computes them all, so LoRA adapts all of them or none).
        """
        if not self.model.fused:
            return targets
        old, new = set(self.choices.targets) if isinstance(self.choices.targets, tuple) else set(), set(targets)
        for group in set(self.model.fused.values()):
            members = set(group)
            now = members & new
            if now and now != members:
                new = (new | members) if now - old else (new - members)
        known = tuple(k for k in self.model.targets if k in new)
        return known + tuple(t for t in targets if t not in self.model.targets)

    def starting_lr(self, method: str) -> float:
        """The learning rate a method starts with: the preset's for LoRA (see ``LR_WHY``)."""
        return DEFAULT_LR.get(method, self.defaults.lr)

    def lr_note(self) -> str:
        """Why the learning rate starts where it does for the chosen method."""
        method = self.choices.method
        if method not in METHODS:
            return ""
        start, lr = self.starting_lr(method), self.choices.lr
        number = isinstance(lr, (int, float)) and not isinstance(lr, bool)
        shown = f"{lr:g}" if number else repr(lr)
        if "lr" in self.locked:  # an exercise fixed it: no invitation to change what cannot be changed
            return f"Learning rate {shown}, fixed for this exercise: {self.locked['lr']}."
        if number and lr == start:
            return (f"Learning rate set to {start:g} for {_method_label(method)}: {LR_WHY[method]}. "
                    "Switching the method resets it; change it freely.")
        return (f"Learning rate {shown} as typed; {_method_label(method)} starts at {start:g}: {LR_WHY[method]}. "
                "Switching the method resets it.")

    def lr_warning(self) -> str:
        """A warning, before any run, when the learning rate is far above where the method starts ('' if not).

        At LR_WARN_FACTOR times the starting rate or more a run usually diverges or learns
        nothing (lr = 10 for LoRA, 10,000 x its 0.001, climbed from loss 0.69 to 24.3)."""
        method, lr = self.choices.method, self.choices.lr
        if method not in METHODS or not isinstance(lr, (int, float)) or isinstance(lr, bool) or not lr > 0:
            return ""
        start = self.starting_lr(method)
        if lr < LR_WARN_FACTOR * start:
            return ""
        return (f"lr = {lr:g} is {lr / start:,.0f} x the {start:g} {_method_label(method)} starts at: at such a rate "
                "a run usually diverges or learns nothing. Train runs it anyway if you mean it.")

    def problem_field(self) -> str | None:
        """The choice the problem is about (its box is marked), or None when nothing is wrong or none is named.

        The messages name the choice first ("lr (learning rate) must be ...", "rank must be
        at most ...", "steps must be ..."), as ``number_problem`` and the config's checks say it."""
        problem = self.problem()
        if problem is None:
            return None
        said = problem.removeprefix("Cannot train with these settings: ")
        for name in ("rank", "alpha", "lr", "steps", "batch_size", "seed", "layer_range", "targets"):
            if said.startswith(name + " ") or said.startswith(name + ":"):
                return name
        if said.startswith("LoRA needs at least one target") or said.startswith("None of the ticked layers"):
            return "targets"
        return None

    def rank_max(self) -> int:
        """The highest rank any choice of targets allows: the largest min(in, out), at most ``RANK_CAP``."""
        sizes = [min(g.shape) for g in self.model.targets.values()]
        return min(RANK_CAP, max(sizes)) if sizes else RANK_CAP

    def rank_limit(self) -> tuple[int, str]:
        """The highest rank for the ticked targets, and why.

        A rank above min(in, out) of a layer adds no capacity (B A has rank <= min(in, out))
        and leaves PiSSA's top-r singular directions undefined, so it is refused.
        """
        limit, why = RANK_CAP, f"the panel's cap is {RANK_CAP}"
        for s in self.selected_layers():
            size = min(s.group.shape)
            if size < limit:
                limit, why = size, (f"{s.key} is {s.group.shape[0]} -> {s.group.shape[1]}, and a rank above "
                                    f"min(in, out) = {size} adds no capacity")
        return limit, why

    def layers(self) -> tuple[int, ...] | None:
        """LoRAConfig's ``layers``: the blocks in ``layer_range``; None when it covers every block."""
        if not self.model.blocks:
            return None
        lo, hi = self.choices.layer_range
        chosen = tuple(i for i in self.model.blocks if lo <= i <= hi)
        return None if chosen == self.model.blocks else chosen

    def selected_layers(self) -> list[Selection]:
        """The layers LoRA would wrap now, per ticked group, as ``find_targets`` would pick them.

        With a layer range narrower than the model only paths whose block index lies in it
        count (layers outside the blocks, such as the pooler, then drop out).
        """
        layers, ticked = self.layers(), set(self.choices.targets)
        out, seen = [], set()
        for key, g in self.model.targets.items():  # in the model's order, whatever order they were ticked in
            if key not in ticked:
                continue
            names = g.names if layers is None else [n for n in g.names if layer_index(n) in layers]
            members = self.model.fused.get(key, (key,))
            if members in seen:  # a fused layer already counted under its first role
                continue
            seen.add(members)
            label = key if len(members) == 1 else "/".join(members) + " (fused)"
            out.append(Selection(label, g, names, members))
        return out

    # ------------------------------------------------------------------ checks, config, readout

    def _choice_problem(self) -> str | None:
        """What only the panel can see is wrong with the choices, or None.

        The RunConfig checks itself when it is made (``RunConfig.check``: the method, the
        learning rate, the steps, a DoRA or PiSSA run on a quantized base, ...), and
        ``config()`` shows its message.  What is checked here is what the config cannot
        know: text typed where a number goes, the panel's own controls (the variant, the
        targets and the layer range of this model), and what needs the model's layers (a
        rank wider than a ticked layer, a base whose layers bitsandbytes cannot quantize).
        """
        c, m = self.choices, self.model
        lora_only = ("rank", "alpha")
        for name in NUMBER_CHOICES:
            value = getattr(c, name)
            if isinstance(value, str) and (c.method == "lora" or name not in lora_only):
                return f"Cannot train with these settings: {number_problem(name, value)}"
        if c.method == "head" and self.task == "causal-lm":  # said in the panel's words: why no head only here
            return f"Cannot train with these settings: {HEAD_NOT_FOR_LM}."
        if c.method != "lora":
            return None
        try:
            check_choice("variant", c.variant, tuple(v for _, v in VARIANT_OPTIONS))
            if isinstance(c.targets, str):
                raise ValueError(f"targets must be a tuple of names from {', '.join(m.targets)}, got {c.targets!r}")
            unknown = [t for t in c.targets if t not in m.targets]
            if unknown:
                raise ValueError(f"unknown target(s) {', '.join(map(repr, unknown))}; "
                                 f"this model has: {', '.join(m.targets)}")
            if not c.targets:
                others = "full fine-tuning" if self.task == "causal-lm" else "full fine-tuning / head only"
                return ("LoRA needs at least one target layer: tick one of "
                        f"{', '.join(m.targets)} (or choose {others}).")
            self._check_layer_range()
            if not any(s.names for s in self.selected_layers()):
                lo, hi = c.layer_range
                return (f"None of the ticked layers ({', '.join(c.targets)}) lies in layers {lo}-{hi}: "
                        "widen the layer range or tick layers inside it.")
            check_positive_int("rank", c.rank)  # before the comparison below (LoRAConfig checks it too)
            limit, why = self.rank_limit()
            if c.rank > limit:
                raise ValueError(f"rank must be at most {limit} for the ticked layers ({why}), got {c.rank}")
            if c.quantize in QUANTIZE_CHOICES and not any(g.type == "Linear" for g in m.targets.values()):
                raise ValueError(f"{m.name} computes with Conv1D layers (GPT-2 style), which bitsandbytes does not "
                                 "quantize: choose a float base")
        except ValueError as e:
            return f"Cannot train with these settings: {e}"
        return None

    def _check_layer_range(self) -> None:
        blocks = self.model.blocks
        lo_hi = self.choices.layer_range
        if not blocks:
            return
        ok = (isinstance(lo_hi, tuple) and len(lo_hi) == 2 and all(is_integer(i) for i in lo_hi)
              and blocks[0] <= lo_hi[0] <= lo_hi[1] <= blocks[-1])
        if not ok:
            raise ValueError(f"layer_range must be (first, last) with {blocks[0]} <= first <= last <= {blocks[-1]}, "
                             f"got {lo_hi!r}")

    def lora_config(self) -> LoRAConfig:
        """The LoRAConfig of the choices (checked by LoRAConfig itself: alpha > 0, ...)."""
        c = self.choices
        if self.model.roles:  # a language model's roles: the config names them (all of a fused group)
            targets: Any = tuple(k for s in self.selected_layers() if s.names for k in s.members)
        else:
            chosen = [s.group for s in self.selected_layers() if s.names]
            targets = targets_for(chosen) if chosen else ()
        return LoRAConfig(rank=c.rank, alpha=c.alpha, rslora=c.rslora, targets=targets, layers=self.layers(),
                          **VARIANTS[c.variant])

    def config(self) -> RunConfig:
        """The RunConfig the Train button would run now: the preset plus the choices.

        Raises ``SettingsError`` (a ValueError) with the message ``problem()`` gives when
        the choices are bad: the panel's own (``_choice_problem``), or the one LoRAConfig
        and RunConfig give when they refuse to be made.
        """
        problem = self._choice_problem()
        if problem:
            raise SettingsError(problem)
        try:
            return self._make_config()
        except ValueError as e:  # the config's own check, in its own words
            raise SettingsError(f"Cannot train with these settings: {e}") from None

    def _make_config(self) -> RunConfig:
        c = self.choices
        over: dict[str, Any] = dict(model=self.model.name, method=c.method, lr=c.lr, steps=c.steps,
                                    batch_size=c.batch_size, seed=c.seed)
        if self.task == "causal-lm" and self.defaults.interim_generate_examples is None:
            over["interim_generate_examples"] = INTERIM_PROMPTS
        if c.method != "lora":
            return make_preset(self.preset_name, **over)
        lora = self.lora_config()
        cfg = make_preset(self.preset_name, **over, lora=lora, quantize=c.quantize)
        if isinstance(lora.targets, str) or lora.layers is not None:
            # A regex or a layer range makes the default label unreadable: name the kinds.
            kinds = ",".join(s.key for s in self.selected_layers() if s.names)
            cfg = replace(cfg, name=label_for_kinds(cfg, kinds))
        return cfg

    def problem(self) -> str | None:
        """What is wrong with the current choices, in words (what was given, what is allowed), or None."""
        try:
            self.config()
        except SettingsError as e:
            return str(e)
        return None

    def parameter_estimate(self) -> ParamCounts:
        """Trainable and total parameters of the choices, from layer shapes alone.

        LoRA: trainable = sum over chosen layers of r * (in + out) (+ out for DoRA) + the
        head's parameters, and the total grows by the LoRA part; full: everything; head
        only: the head.  Raises ``ValueError`` when the rank is not a positive integer.
        """
        m, c = self.model, self.choices
        if c.method == "full":
            return ParamCounts(m.base_parameters, m.base_parameters)
        if c.method == "head":
            return ParamCounts(m.head_parameters, m.base_parameters)
        check_positive_int("rank", c.rank)
        dora = c.variant == "dora"
        lora = sum(len(s.names) * lora_parameter_count(*s.group.shape, c.rank, dora=dora)
                   for s in self.selected_layers())  # a fused layer is one Selection: counted once
        return ParamCounts(lora + m.head_parameters, m.base_parameters + lora)

    def readout(self) -> Readout:
        """The parameter readout with the closed form spelled out, and what is wrong (if anything)."""
        c, head = self.choices, f"classifier head {self.model.head_parameters:,}"
        lm = self.task == "causal-lm"  # no head: LoRA's layers are all that trains
        problem = self.problem()
        try:
            estimate = self.parameter_estimate()
        except ValueError:
            return Readout(None, "", problem)
        base = self.model.base_parameters
        if c.method == "full":
            return Readout(estimate, "full fine-tuning trains every parameter", problem, base)
        if c.method == "head":
            if lm:
                return Readout(None, "", problem, base)
            return Readout(estimate, f"only the {head} trains; the rest is frozen", problem, base)
        r, dora = c.rank, c.variant == "dora"
        plus = " + out" if dora else ""
        parts = [f"{s.key} {len(s.names)} × ({r}·({s.group.shape[0]}+{s.group.shape[1]}){plus}) = "
                 f"{len(s.names) * lora_parameter_count(*s.group.shape, r, dora=dora):,}" if s.names else
                 f"{s.key}: outside the chosen layers, not adapted" for s in self.selected_layers()]
        how = (f"LoRA trains r·(in+out){plus} per layer: " + "; ".join(parts) + ("" if lm else f"; + {head}")
               if parts else "no target layer ticked")
        if isinstance(c.alpha, (int, float)) and not isinstance(c.alpha, bool) and math.isfinite(c.alpha):
            formula = "α/√r" if c.rslora else "α/r"
            how += f" · scale s = {formula} = {lora_scaling(r, c.alpha, bool(c.rslora)):.3g}"
        if c.quantize in QUANTIZE_CHOICES:
            how += f" · {quantize_note(c.quantize, self.model)}"
        return Readout(estimate, how, problem, base)



__all__ = ["Settings", "Choices", "Selection", "SettingsError", "Readout", "quantize_note", "METHOD_LABELS",
           "VARIANT_OPTIONS", "QUANTIZE_OPTIONS", "RANK_CAP", "INTERIM_PROMPTS", "DEFAULT_LR", "LR_WHY", "HEAD_NOT_FOR_LM"]
