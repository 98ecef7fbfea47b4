"""LoRA adapters on disk, in Hugging Face PEFT's format.

A folder holds ``adapter_config.json`` (PEFT's ``LoraConfig`` fields: rank, alpha,
targets, rsLoRA, dropout, the base model's name or path, ...) and
``adapter_model.safetensors`` with PEFT's key names::

    base_model.model.<module path>.lora_A.weight          (r x in)
    base_model.model.<module path>.lora_B.weight          (out x r)
    base_model.model.<module path>.lora_magnitude_vector  (out; DoRA only, "use_dora": true)
    base_model.model.<head path>.weight                   (a trained head, "modules_to_save")

so ``peft.PeftModel.from_pretrained(base, folder)`` loads what ``save_adapter`` writes,
and ``load_adapter`` loads what PEFT saved.  Loading checks every key and shape before
it touches the model: a file that does not fit changes nothing.

PiSSA adapters are saved as PEFT saves them by default: ``"init_lora_weights": "pissa"``
and the trained A, B, meant for the ORIGINAL base model.  Loading (ours and PEFT's)
builds the layers with PiSSA init first, which turns the base weight into the residual
``W - s B0 A0`` again by the same SVD, and then puts the trained A and B in place.  So
the base you load into must be the original model, not an already-residual one, and the
SVD must give the same top-r subspace (true unless singular values r and r+1 tie).

Several adapters on one base: ``load_adapter(model, folder, name="sql")`` loads each under
a name (``workbench.lora.serving``: switching, and one adapter per row of a batch).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from workbench.util.fileio import atomic_write, atomic_write_json, atomic_write_text
from workbench.lora.config import LoRAConfig
from workbench.lora.inject import add_lora, remove_lora
from workbench.lora.layer import Conv1D, layer_shape
from workbench.lora.roles import peft_target_modules
from workbench.lora.serving import add_named_adapter, beside_problem, check_adapter_name, name_adapter, plain_view
from workbench.lora.targets import find_targets

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
PREFIX = "base_model.model."
_TASK_TYPES = {"ForSequenceClassification": "SEQ_CLS", "ForCausalLM": "CAUSAL_LM", "LMHeadModel": "CAUSAL_LM",
               "ForTokenClassification": "TOKEN_CLS"}


PISSA_NOTE = (
    "\nPiSSA: this adapter was initialised with PiSSA (`init_lora_weights: \"pissa\"`).  Load it into\n"
    "the ORIGINAL base model: loading recomputes the SVD of each target weight, replaces the weight\n"
    "by the residual W - s B0 A0, then loads the trained A and B (PEFT does the same).  Do not load it\n"
    "into a model whose weights already are the residual.\n"
)
# Inits that rewrite the base weight in a way this loader cannot redo: a file made with
# one of them is refused rather than loaded onto the wrong base weights.
_BASE_CHANGING_INITS = ("olora", "corda", "loftq", "lora_ga")


class AdapterError(ValueError):
    """An adapter folder that is missing, corrupt, or does not fit the model."""


def _task_type(model: nn.Module) -> str | None:
    cls = type(model).__name__
    return next((t for suffix, t in _TASK_TYPES.items() if cls.endswith(suffix)), None)


def adapter_config(model: nn.Module) -> dict:
    """The PEFT ``adapter_config.json`` contents describing the model's LoRA layers."""
    s = getattr(model, "lora_settings", None)
    if s is None:
        raise ValueError("the model has no LoRA layers to save; call add_lora first")
    fan_in_fan_out = any(
        Conv1D is not None and isinstance(model.get_submodule(n).base_layer, Conv1D) for n in s.wrapped
    )
    base = getattr(model, "workbench_name", None) or getattr(model, "name_or_path", None) or None
    return {
        "peft_type": "LORA",
        "task_type": _task_type(model),
        "base_model_name_or_path": base,
        **s.config.to_peft(),
        # Roles ("FFN in") mean nothing to PEFT: name the wrapped layers as PEFT matches them.
        "target_modules": peft_target_modules(model),
        "layers_pattern": None,
        "bias": "none",
        "fan_in_fan_out": fan_in_fan_out,
        "modules_to_save": list(s.modules_to_save) or None,
        "inference_mode": True,
    }


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The LoRA A/B weights (DoRA: and magnitudes) and trained head weights, under PEFT's key names."""
    s = getattr(model, "lora_settings", None)
    if s is None:
        raise ValueError("the model has no LoRA layers to save; call add_lora first")
    parts = ("lora_A.weight", "lora_B.weight") + (("lora_magnitude_vector",) if s.config.dora else ())
    keep = {f"{n}.{part}" for n in s.wrapped for part in parts}
    heads = tuple(h + "." for h in s.modules_to_save)
    state = {}
    for name, tensor in model.state_dict().items():
        if name in keep or name.startswith(heads):
            state[PREFIX + name] = tensor.detach().to("cpu").contiguous()
    return state


@dataclass
class AdapterFiles:
    """An adapter's files, held in memory: what ``save_adapter`` writes, without the model.

    A run in a worker process sends this back (megabytes of A and B) instead of the whole
    trained model (the base too: a socket's worth of copying, and the caller importing the
    model's classes to unpickle it) when only the adapter is to be saved."""

    config: dict
    state: dict[str, torch.Tensor]
    readme: str

    def write(self, folder: str | os.PathLike) -> Path:
        """Write the three files atomically into ``folder``."""
        from safetensors.torch import save_file

        folder = Path(folder)
        atomic_write(folder / WEIGHTS_FILE, lambda tmp: save_file(self.state, tmp, metadata={"format": "pt"}))
        atomic_write_json(folder / CONFIG_FILE, self.config)
        atomic_write_text(folder / "README.md", self.readme)
        return folder


def adapter_files(model: nn.Module) -> AdapterFiles:
    """The model's adapter as files in memory: PEFT's config, the weights, a short README."""
    config = adapter_config(model)
    s = model.lora_settings
    c = s.config
    readme = (
        f"# LoRA adapter\n\nWritten by LoRA Workbench in Hugging Face PEFT's format.\n\n"
        f"- base model: `{config['base_model_name_or_path']}`\n- {c.label()}, alpha {c.alpha:g}, dropout {c.dropout:g}\n"
        f"- targets: `{config['target_modules']}`"
        f"{f' in blocks {list(c.layers)}' if c.layers is not None else ''} ({len(s.wrapped)} layers)\n"
        f"- trained head: {', '.join(s.modules_to_save) or 'none'}\n\n"
        "Load with `workbench.load_adapter(base, folder)` or `peft.PeftModel.from_pretrained(base, folder)`.\n"
        + (PISSA_NOTE if c.init == "pissa" else "")
    )
    return AdapterFiles(config, adapter_state_dict(model), readme)


def save_adapter(model: nn.Module, folder: str | os.PathLike) -> Path:
    """Write the adapter (config, weights, a short README) atomically into ``folder``."""
    return adapter_files(model).write(folder)


def read_adapter(folder: str | os.PathLike) -> tuple[dict, dict[str, torch.Tensor]]:
    """Read and check the config and weights of an adapter folder (ours or PEFT's)."""
    folder = Path(folder)
    cfg_path = folder / CONFIG_FILE
    if not cfg_path.is_file():
        raise AdapterError(f"{folder} is not an adapter folder: {CONFIG_FILE} is missing")
    try:
        config = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise AdapterError(f"{cfg_path} is corrupt: {e}") from None
    if not isinstance(config, dict):
        raise AdapterError(f"{cfg_path} is corrupt: expected a JSON object")
    if config.get("peft_type", "LORA") != "LORA":
        raise AdapterError(f"only LoRA adapters can be loaded; this one is {config.get('peft_type')!r}")
    for key in ("r", "lora_alpha", "target_modules"):
        if key not in config:
            raise AdapterError(f"{cfg_path} lacks the field {key!r}")
    for key in ("rank_pattern", "alpha_pattern"):
        if config.get(key):
            raise AdapterError(f"{cfg_path} uses {key}, which this loader does not support")
    init = config.get("init_lora_weights", True)
    if isinstance(init, str) and (init.lower() in _BASE_CHANGING_INITS or init.lower().startswith("pissa_niter")):
        raise AdapterError(
            f"{cfg_path} was made with init_lora_weights={init!r}, which changes the base weights in a way "
            f"this loader cannot reproduce; supported: True/False, 'gaussian', 'pissa' (full SVD)"
        )
    if config.get("bias", "none") != "none":
        raise AdapterError(f"{cfg_path} trains biases (bias={config['bias']!r}); only bias='none' is supported")
    weights = folder / WEIGHTS_FILE
    try:
        if weights.is_file():
            from safetensors.torch import load_file

            state = load_file(str(weights))
        elif (folder / "adapter_model.bin").is_file():
            state = torch.load(folder / "adapter_model.bin", map_location="cpu", weights_only=True)
        else:
            raise AdapterError(f"{folder} has no {WEIGHTS_FILE}")
    except AdapterError:
        raise
    except Exception as e:  # safetensors raises its own error types for a damaged file
        raise AdapterError(f"{weights} is corrupt or unreadable: {e}") from None
    return config, state


def _check_fits(model: nn.Module, config: dict, state: dict[str, torch.Tensor]) -> tuple[list[str], list[str]]:
    """Raise on the first key or shape that does not fit; return (targets, heads) to load."""
    try:
        settings = LoRAConfig.from_peft(config)
        names = find_targets(model, settings.targets, settings.layers)
    except (ValueError, TypeError) as e:
        raise AdapterError(f"the adapter does not fit this {type(model).__name__}: {e}") from None
    expected: dict[str, tuple[int, ...]] = {}
    rank = settings.rank
    for n in names:
        fan_in, fan_out = layer_shape(model.get_submodule(n))
        expected[f"{PREFIX}{n}.lora_A.weight"] = (rank, fan_in)
        expected[f"{PREFIX}{n}.lora_B.weight"] = (fan_out, rank)
        if settings.dora:
            expected[f"{PREFIX}{n}.lora_magnitude_vector"] = (fan_out,)
    # PEFT lists every usual head name (e.g. both "classifier" and "score") and skips the
    # ones a model lacks; a head's weights in the file with no module to take them fail below.
    heads = [
        n for n, _ in model.named_modules()
        if n and any(n == h or n.endswith("." + h) for h in config.get("modules_to_save") or [])
    ]
    for h in heads:
        for pname, p in model.get_submodule(h).named_parameters():
            expected[f"{PREFIX}{h}.{pname}"] = tuple(p.shape)
    for key, shape in expected.items():
        if key not in state:
            raise AdapterError(f"the adapter file lacks {key!r} that this model needs (expected shape {list(shape)})")
        if tuple(state[key].shape) != shape:
            raise AdapterError(
                f"shape mismatch for {key!r}: the file has {list(state[key].shape)}, this model needs {list(shape)}"
            )
    extra = sorted(set(state) - set(expected))
    if extra:
        raise AdapterError(f"the adapter file has {key_list(extra)} that this model has no place for")
    return names, heads


def key_list(keys: list[str]) -> str:
    return f"{keys[0]!r}" + (f" and {len(keys) - 1} more key(s)" if len(keys) > 1 else "")


def load_adapter(model: nn.Module, folder: str | os.PathLike, name: str | None = None) -> list[str]:
    """Add the LoRA layers an adapter describes to a plain base model, then load its weights.

    Reads our adapters and PEFT's.  Returns the wrapped module paths.  On any mismatch
    (missing or extra key, wrong shape, corrupt file) raises ``AdapterError`` and leaves
    the model exactly as it was.

    ``name``: load it as a named adapter (``workbench.lora.serving``); then a model that
    already has adapters takes it beside them (``set_adapter`` switches, ``generate(...,
    adapters=[...])`` mixes them in one batch).  The first adapter of a model keeps its
    place in the layers' own ``lora_A``/``lora_B``; a model adapted without a name has one
    adapter called "default".
    """
    if name is not None:
        check_adapter_name(name)
        if getattr(model, "lora_settings", None) is not None:
            return _load_beside(model, folder, name)
    if getattr(model, "lora_settings", None) is not None:
        raise AdapterError("the model already has LoRA layers; load the adapter into a plain base model, or load "
                           "it beside them under a name: load_adapter(model, folder, name=...)")
    config, state = read_adapter(folder)
    names, heads = _check_fits(model, config, state)
    # PiSSA rebuilds the residual base by the same SVD; see the module doc.
    add_lora(model, LoRAConfig.from_peft(config), train_head=bool(heads))
    try:
        with torch.no_grad():
            for n in names:
                layer = model.get_submodule(n)
                for part in ("lora_A", "lora_B"):
                    w = getattr(layer, part).weight
                    w.copy_(state[f"{PREFIX}{n}.{part}.weight"].to(w.dtype))
                if layer.config.dora:
                    m = layer.lora_magnitude_vector
                    m.copy_(state[f"{PREFIX}{n}.lora_magnitude_vector"].to(m.dtype))
            for h in heads:
                for pname, p in model.get_submodule(h).named_parameters():
                    p.copy_(state[f"{PREFIX}{h}.{pname}"].to(p.dtype))
    except Exception:  # pragma: no cover - shapes were checked; undo for safety all the same
        remove_lora(model)
        raise
    for h in heads:
        model.get_submodule(h).requires_grad_(True)
    model.lora_settings.modules_to_save = heads
    if name is not None:
        name_adapter(model, name)
    return names


def _refuse_beside(model: nn.Module, name: str, settings: LoRAConfig | None = None) -> None:
    """Why the adapter cannot join the model's adapters, if it cannot (``serving.beside_problem``)."""
    problem = beside_problem(model, name, settings)
    if problem is not None:
        raise AdapterError(problem)


def _load_beside(model: nn.Module, folder: str | os.PathLike, name: str) -> list[str]:
    """Load the adapter in ``folder`` under ``name`` beside the adapters the model has (inference only:
    its weights are frozen; ``workbench.lora.serving``).  Checked whole before anything changes, as
    ``load_adapter`` is."""
    _refuse_beside(model, name)
    config, state = read_adapter(folder)
    try:
        settings = LoRAConfig.from_peft(config)
    except (ValueError, TypeError) as e:
        raise AdapterError(f"{Path(folder) / CONFIG_FILE} has settings this workbench cannot use: {e}") from None
    _refuse_beside(model, name, settings)
    with plain_view(model):  # the targets and shapes of the base, as for a first adapter
        names, heads = _check_fits(model, config, state)
    if heads:
        raise AdapterError(f"adapter {name!r} trains a head ({', '.join(heads)}); a batch cannot switch heads per "
                           "row, so only a model's first adapter may have one")
    weights = {n: (state[f"{PREFIX}{n}.lora_A.weight"], state[f"{PREFIX}{n}.lora_B.weight"]) for n in names}
    return add_named_adapter(model, name, settings, weights)
