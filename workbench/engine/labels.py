"""A run's names, all built here: its label, its slug, its short label and its id's text.

Every layer names a run the same way because every layer asks this module:

* ``label(config)``: the human label in tables, legends and messages ("LoRA r=8
  (query,value)", "QLoRA r=4 (query,value), NF4 base", "full fine-tuning", "head only");
  ``RunConfig.label()`` is this function.  The LoRA part comes from ``LoRAConfig.label()``
  (the LoRA core names its own settings; it cannot import the engine).
* ``slug(config)``: the settings part of a run id ("lora-r8", "dora-r8-pissa", "full",
  "head", "-nf4" with a quantized base); ``RunConfig.slug()`` is this function.
* ``short_label(config)``: short enough to sit next to a point in a figure ("r=8", "full").
* ``id_label(config)``: the text the run store puts in a run id (the slug, or the run's
  own name made safe for a folder name by ``path_slug``).
* ``label_for_kinds(config, kinds)``: the label with the targets named by their kinds,
  for a regular expression or a layer range whose default label would be unreadable
  (the panel names such runs so).
* ``distinct_labels(configs)``: labels for several runs shown together.  Five runs that
  differ only in learning rate would read identically in a legend, so each label gets
  every setting whose value is not the same across the runs shown::

      LoRA r=1 (query,value) · lr=0.001          LoRA r=1 (query,value) · lr=0.01

  The settings compared (``DIFFERING``) are the run's own names: lr, steps, alpha, seed,
  batch_size, dropout, model_dropout, model, data.  Method and variant are already in
  ``label()``.  Runs whose settings are all equal get " #1", " #2" in order, so no two
  labels are ever the same.

This module sits below ``workbench.engine.config`` (which calls it for ``label()`` and
``slug()``), so it reads a config by its attributes and never imports the config module.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Protocol, Sequence

from workbench.lora.config import LoRAConfig


class NamedConfig(Protocol):
    """What naming reads from a ``workbench.engine.config.RunConfig`` (which imports this
    module, so it cannot be imported here: a protocol names the attributes instead)."""

    method: str
    lora: LoRAConfig
    quantize: str | None
    name: str | None
    lr: float
    steps: int
    seed: int
    batch_size: int
    model_dropout: float | None
    model: str
    data: str

#: How a quantized base is named in labels and legends.
QUANTIZE_LABELS: dict[str, str] = {"nf4": "NF4", "int8": "int8"}

# --------------------------------------------------------------------------- one run


def label(config: NamedConfig) -> str:
    """A short human label: 'LoRA r=8 (query,value)', 'full fine-tuning', 'head only'
    (the config's own ``name`` when it has one).  A QLoRA run reads 'QLoRA r=8 (query,value),
    NF4 base': the same label with its quantized base named."""
    if config.name:
        return config.name
    if config.method == "full":
        return "full fine-tuning"
    base = f", {QUANTIZE_LABELS[config.quantize]} base" if config.quantize else ""
    if config.method == "head":
        return "head only" + base
    if config.quantize:
        return "Q" + config.lora.label() + base
    return config.lora.label()


def label_for_kinds(config: NamedConfig, kinds: str) -> str:
    """The label with the targets written as ``kinds`` (say "query,FFN out") and the block
    range: 'LoRA r=2 (query,FFN out, layer 1)', 'QLoRA r=4 (query,value, layers 0-3, NF4 base)'.

    For a run whose targets are a regular expression or a layer range: its default label
    would print the expression, which says little to a reader.
    """
    layers = config.lora.layers
    where = "" if not layers else (f", layer {layers[0]}" if len(layers) == 1
                                   else f", layers {layers[0]}-{layers[-1]}")
    if config.quantize:  # as label() says it: QLoRA, and the base's storage
        where += f", {QUANTIZE_LABELS[config.quantize]} base"
    return ("Q" if config.quantize else "") + config.lora.label(where=f"{kinds}{where}")


def slug(config: NamedConfig) -> str:
    """The settings part of a run id: 'lora-r8', 'dora-r8-pissa', 'full', 'head' ('-nf4' with quantize)."""
    text = config.lora.slug() if config.method == "lora" else config.method
    return f"{text}-{config.quantize}" if config.quantize else text


def short_label(config: NamedConfig) -> str:
    """A label short enough to sit next to a point: 'r=8', 'full', 'head' (or the run's name)."""
    if config.name:
        return config.name
    return {"full": "full", "head": "head"}.get(config.method, f"r={config.lora.rank}")


def path_slug(text: str, max_len: int = 24) -> str:
    """Lower-case letters, digits and single dashes: safe in a folder name on every OS."""
    s = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return s[:max_len].strip("-") or "run"


def id_label(config: NamedConfig) -> str:
    """The label in a run id: 'lora-r8', 'dora-r8-rslora-pissa' (``slug``, whole), 'full',
    'head', or the config's own name, made safe for a folder name and shortened."""
    return path_slug(config.name) if config.name else path_slug(slug(config), max_len=64)


# --------------------------------------------------------------------------- several runs

# Each setting that can tell runs apart: (name shown, how to read it from a config).
# LoRA settings read None for full fine-tuning and head-only runs, which have no LoRA.
DIFFERING: tuple[tuple[str, Callable[[NamedConfig], Any]], ...] = (
    ("lr", lambda c: c.lr),
    ("steps", lambda c: c.steps),
    ("alpha", lambda c: c.lora.alpha if c.method == "lora" else None),
    ("seed", lambda c: c.seed),
    ("batch_size", lambda c: c.batch_size),
    ("dropout", lambda c: c.lora.dropout if c.method == "lora" else None),
    ("model_dropout", lambda c: c.model_dropout),
    ("model", lambda c: c.model),
    ("data", lambda c: c.data),
)
SEPARATOR = " · "
# What makes an object a run's config here (RunConfig itself cannot be imported: see the docstring).
_CONFIG_FIELDS = ("method", "lora", "quantize", "name", "lr", "steps", "seed", "batch_size", "model_dropout",
                  "model", "data")


def _text(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def differing_settings(configs: Sequence[NamedConfig]) -> list[str]:
    """The names in ``DIFFERING`` whose value is not the same for all ``configs`` it applies to
    (a LoRA setting is compared among the LoRA runs only)."""
    names = []
    for name, read in DIFFERING:
        values = {repr(v) for c in configs if (v := read(c)) is not None}
        if len(values) > 1:
            names.append(name)
    return names


def distinct_labels(configs: Sequence[NamedConfig]) -> list[str]:
    """One label per config: ``label()`` plus ``name=value`` for every setting that differs among them.

    A LoRA setting is left out of a non-LoRA run's label (it has none).  Labels still equal
    after that (the same settings run twice) get " #1", " #2", ... in order.
    """
    configs = list(configs)
    for c in configs:
        if isinstance(c, type) or not all(hasattr(c, a) for a in _CONFIG_FIELDS):
            raise TypeError(f"distinct_labels needs RunConfigs, got {type(c).__name__}")
    differ = differing_settings(configs)
    readers = dict(DIFFERING)
    labels = []
    for c in configs:
        parts = [f"{n}={_text(v)}" for n in differ if (v := readers[n](c)) is not None]
        labels.append(label(c) + (SEPARATOR + " ".join(parts) if parts else ""))
    seen: dict[str, int] = {}
    out = []
    for text in labels:
        seen[text] = seen.get(text, 0) + 1
        out.append(text if labels.count(text) == 1 else f"{text} #{seen[text]}")
    return out


def _parts(config: NamedConfig) -> dict[str, str]:
    """A run's label cut into its parts: kind, rank, extras, targets, base (what ``label`` joins)."""
    if config.name:
        return {"name": config.name}
    if config.method in ("full", "head"):
        parts = {"kind": "full fine-tuning" if config.method == "full" else "head only"}
    else:
        lora = config.lora
        extras = " ".join(x for x in ("rsLoRA" if lora.rslora else "", "PiSSA" if lora.init == "pissa" else "",
                                      f"LoRA+x{lora.loraplus_ratio:g}" if lora.loraplus_ratio else "") if x)
        where = lora.targets_text()
        if lora.layers:
            where += f", layers {','.join(map(str, lora.layers))}"
        parts = {"kind": ("Q" if config.quantize else "") + lora.kind, "rank": f"r={lora.rank}", "extras": extras,
                 "targets": where}
    if config.quantize:
        parts["base"] = f"{QUANTIZE_LABELS[config.quantize]} base"
    return {k: v for k, v in parts.items() if v}


# How a part shared by every run is said once (in a figure's title): "targets query,value".
_SHARED_WORDS = {"targets": "targets {}", "extras": "{}", "kind": "{}", "rank": "{}", "base": "{}", "name": "{}"}


def _join_parts(parts: dict[str, str]) -> str:
    head = " ".join(parts[k] for k in ("name", "kind", "rank", "extras") if k in parts)
    if "targets" in parts:
        head += f" ({parts['targets']})" if head else f"({parts['targets']})"
    if "base" in parts:
        head += f", {parts['base']}" if head else parts["base"]
    return head


def compact_labels(configs: Sequence[NamedConfig]) -> tuple[list[str], str]:
    """Labels for runs shown together that leave out what they all share, and that shared part said once.

    ``distinct_labels`` repeats every run's whole label, so six generative runs each carry
    the same six-role target list and what differs (rank, lr, steps) is lost at the end of
    a long line.  Here each part of ``label`` (kind, rank, extras, targets, quantized base)
    that every run having it shares is dropped from the labels and returned in the
    ``shared`` text instead ("all runs: LoRA, r=8, targets query,value"), as are the settings that do
    not differ; the settings that do are added as in ``distinct_labels``.  A part only
    some runs have (the targets of the LoRA runs beside a full fine-tuning run) is shared
    when all of those have the same one ("LoRA runs: targets query,value").  One run keeps its whole label.  Labels still
    equal after that get " #1", " #2" ("run #1" when nothing is left).

    Returns (labels, shared); ``shared`` is "" when nothing is shared.
    """
    configs = list(configs)
    full = distinct_labels(configs)  # checks the configs
    if len(configs) < 2:
        return full, ""
    parts = [_parts(c) for c in configs]
    shared: dict[str, list[str]] = {}  # whose -> the parts they share
    for key in ("name", "kind", "rank", "extras", "targets", "base"):
        having = [p[key] for p in parts if key in p]
        if len(having) >= 2 and len(set(having)) == 1:
            whose = "all runs" if len(having) == len(parts) else "quantized runs" if key == "base" else "LoRA runs"
            shared.setdefault(whose, []).append(_SHARED_WORDS[key].format(having[0]))
            for p in parts:
                p.pop(key, None)
    differ = differing_settings(configs)
    readers = dict(DIFFERING)
    labels = []
    for c, p in zip(configs, parts):
        settings = " ".join(f"{n}={_text(v)}" for n in differ if (v := readers[n](c)) is not None)
        text = SEPARATOR.join(t for t in (_join_parts(p), settings) if t)
        labels.append(text)
    seen: dict[str, int] = {}
    out = []
    for text in labels:
        seen[text] = seen.get(text, 0) + 1
        out.append(text if text and labels.count(text) == 1 else f"{text or 'run'} #{seen[text]}")
    return out, "; ".join(f"{whose}: {', '.join(said)}" for whose, said in shared.items())


__all__ = ["NamedConfig", "QUANTIZE_LABELS", "label", "label_for_kinds", "slug", "short_label", "path_slug", "id_label",
           "distinct_labels", "compact_labels", "differing_settings", "DIFFERING", "SEPARATOR"]
