"""Shipped models: where a planned model's ``transformers`` config comes from.

A plan needs a config, never weights.  The configs of the models the lessons plan
(GPT-2, GPT-3 175B, Llama, Qwen2.5, RoBERTa) ship as JSON files in
``workbench/lessons/architectures/``, each written from the published sizes, so planning
works offline (``shipped_architectures()``, ``architecture(name)``).  ``load_config`` also
takes the bundled MiniLM (``"minilm"``), any ``transformers.PretrainedConfig``, a local
folder or config file, or a Hugging Face Hub name when a network is there.
"""

from __future__ import annotations

import copy
import difflib
import json
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from workbench.engine.bundled import bundled_model_path
from workbench.engine.models import BUNDLED
from workbench.lora.architectures import ENCODER_TYPES

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable  # Python 3.11+; annotations only

__all__ = ["Architecture", "shipped_architectures", "architecture", "load_config", "natural_task"]

@dataclass
class Architecture:
    """A shipped architecture: a ``transformers`` config written from published sizes."""

    name: str
    description: str
    source: str
    published_parameters: int | None
    published_as: str
    default_task: str
    config: dict[str, Any]
    lora_paper: str = ""

    def to_config(self) -> Any:
        """The ``transformers`` config object (``AutoConfig.for_model(model_type, **rest)``)."""
        from transformers import AutoConfig

        rest = dict(self.config)
        model_type = rest.pop("model_type")
        return AutoConfig.for_model(model_type, **rest)


def _architectures_dir() -> Traversable:
    """The folder of shipped JSON configs, found as package data (works from a wheel too)."""
    return resources.files("workbench.lessons").joinpath("architectures")


def shipped_architectures() -> list[str]:
    """Names ``plan`` accepts without a network: the shipped JSON configs and ``"minilm"``."""
    names = sorted(p.name[: -len(".json")] for p in _architectures_dir().iterdir()
                   if p.name.endswith(".json"))
    return names + [BUNDLED]


def architecture(name: str) -> Architecture:
    """The shipped architecture ``name`` (raises ``ValueError`` listing the shipped names)."""
    if name == BUNDLED:
        path = Path(bundled_model_path())
        cfg = json.loads((path / "config.json").read_text(encoding="utf-8"))
        return Architecture(
            name=BUNDLED,
            description="all-MiniLM-L6-v2, the project's bundled offline model (BERT, 6 layers, hidden 384, 12 heads, FFN 1536).",
            source=f"the bundled checkpoint's own config.json ({path})",
            published_parameters=22_700_000, published_as="22.7M", default_task="classification",
            config=cfg,
        )
    file = _architectures_dir().joinpath(f"{name}.json")
    if not file.is_file():
        raise ValueError(_unknown_message(name, "not a shipped architecture"))
    d = json.loads(file.read_text(encoding="utf-8"))
    return Architecture(
        name=d["name"], description=d.get("description", ""), source=d.get("source", ""),
        published_parameters=d.get("published_parameters"), published_as=d.get("published_as", ""),
        default_task=d.get("default_task", "classification"), config=d["config"],
        lora_paper=d.get("lora_paper", ""),
    )


def _unknown_message(name: str, why: str) -> str:
    names = shipped_architectures()
    close = difflib.get_close_matches(name, names, n=2)
    hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    return (f"unknown architecture {name!r}: {why}.{hint} Shipped (offline) names: "
            f"{', '.join(names)}; or pass a transformers config, a local folder or config.json, "
            "or a Hugging Face Hub name (needs a network).")


def load_config(config: Any) -> tuple[Any, str, str | None]:
    """(a private copy of the ``transformers`` config, a label, its natural task or None).

    ``config``: a ``PretrainedConfig`` (copied: ``plan`` sets ``num_labels`` on it), a
    shipped name, ``"minilm"``, a local folder or ``.json`` file, or a Hub name.
    """
    from transformers import AutoConfig, PretrainedConfig

    if isinstance(config, PretrainedConfig):
        return copy.deepcopy(config), _config_label(config), None
    if not isinstance(config, (str, os.PathLike)):
        raise TypeError(f"config must be a transformers PretrainedConfig or a name/path string, "
                        f"not {type(config).__name__}")
    name = os.fspath(config)
    if not name:
        raise ValueError(_unknown_message(name, "an empty name"))
    if name in shipped_architectures():
        arch = architecture(name)
        if name == BUNDLED:
            return AutoConfig.from_pretrained(bundled_model_path()), name, arch.default_task
        return arch.to_config(), name, arch.default_task
    path = Path(name).expanduser()
    if path.is_file():
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"{path} is not a JSON config file: {e}") from None
        if isinstance(d, dict) and isinstance(d.get("config"), dict):  # our shipped format
            arch = Architecture(name=d.get("name", path.stem), description=d.get("description", ""),
                                source=str(path), published_parameters=d.get("published_parameters"),
                                published_as=d.get("published_as", ""),
                                default_task=d.get("default_task", "classification"), config=d["config"])
            return arch.to_config(), arch.name, arch.default_task
        if not isinstance(d, dict) or "model_type" not in d:
            raise ValueError(f"{path} is not a transformers config: it needs a 'model_type' key")
        rest = dict(d)
        return AutoConfig.for_model(rest.pop("model_type"), **rest), path.stem, None
    try:
        return AutoConfig.from_pretrained(name), (path.name if path.is_dir() else name), None
    except (OSError, ValueError, KeyError) as e:
        why = ("a local folder without a loadable config.json" if path.is_dir() else
               "not a local folder, and the Hugging Face Hub could not provide it (offline?)")
        raise ValueError(_unknown_message(name, why) + f" ({type(e).__name__}: {str(e)[:200]})") from None


def _config_label(config: Any) -> str:
    """A short name for a config object: its Hub name, "minilm" for the bundled folder, or the model type."""
    source = str(getattr(config, "name_or_path", "") or "")
    if source:
        try:
            if Path(source).resolve() == Path(bundled_model_path()).resolve():
                return BUNDLED
        except ImportError:  # pragma: no cover - the bundled model is a requirement
            pass
        if not Path(source).exists():
            return source  # a Hub name
    return f"{getattr(config, 'model_type', 'model')} config"


def natural_task(config: Any) -> str:
    """classification for encoders, causal-lm for decoders (by ``architectures``, else the model
    type: ``workbench.lora.architectures.ENCODER_TYPES`` are encoders)."""
    for arch in getattr(config, "architectures", None) or []:
        if arch.endswith(("ForCausalLM", "LMHeadModel")):
            return "causal-lm"
        if arch.endswith("ForSequenceClassification"):
            return "classification"
    return "classification" if getattr(config, "model_type", "") in ENCODER_TYPES else "causal-lm"

