"""Recipes: a run's settings in a YAML file that can be committed, diffed and run again.

A recipe is every field of ``RunConfig`` at the top level, the LoRA settings (every field
of ``LoRAConfig``) under ``lora:``, and optionally ``track: mlflow`` (log the run to an
experiment tracker as well; ``workbench.records.tracking``)::

    method: lora
    lora: {rank: 8, alpha: 16.0, targets: [query, value], layers: null, dropout: 0.0,
           rslora: false, init: kaiming, dora: false, loraplus_ratio: null}
    model: tiny-bert
    steps: 6
    lr: 0.001
    ...

Why YAML and this shape: axolotl, LLaMA-Factory and torchtune all run from a YAML file,
and the file's keys are the dataclasses' field names (one name for one thing: ``rank``
is ``rank`` in the file, the flag ``--rank`` and the store's column).

Reading is strict, because a recipe is a record of what ran: an unknown key (a typo such
as ``stpes``), a value of the wrong type (``rank: "8"``) or out of range (``rank: 0``) is
refused with the file, the key's path (``lora.rank``) and what is allowed.  The ranges are
the dataclasses' own checks (``RunConfig.check``, ``LoRAConfig.__post_init__``), which run
when the config is made; this module adds only what a file needs on top: keys and types.
A key left out keeps the dataclass's default, so a recipe may be short; ``recipe_text``
writes every key, so a recipe written from a run says everything that ran.

Two YAML details handled here: PyYAML reads ``1e-3`` (no dot) as a string, following
YAML 1.1, so the loader here reads it as the number it is; and a key given twice is
refused (PyYAML would keep the last one silently).
"""

from __future__ import annotations

import difflib
import os
import re
import types
import typing
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal

import yaml

from workbench.engine.config import RunConfig
from workbench.lora.config import LoRAConfig
from workbench.util.checks import is_integer, is_number
from workbench.util.fileio import atomic_write_text

__all__ = ["Recipe", "RecipeError", "TRACKERS", "RECIPE_KEYS", "read_recipe", "recipe_from_text", "recipe_text",
           "write_recipe", "yaml_value"]

#: Experiment trackers a run can also be logged to (``track:`` in a recipe, ``train(track=...)``).
TRACKERS: tuple[str, ...] = ("mlflow",)
#: Keys of a recipe that are not RunConfig fields: how a run is recorded, not what it computes.
RECIPE_KEYS: dict[str, str] = {"track": f"an experiment tracker to log the run to as well: {', '.join(TRACKERS)}, "
                                        "or null (only the run store)"}


class RecipeError(ValueError):
    """A recipe could not be read: the message names the file, the key's path and what is allowed."""


@dataclass(frozen=True)
class Recipe:
    """What a recipe file holds: the run's settings and how it is recorded."""

    config: RunConfig
    track: str | None = None  # one of TRACKERS, or None: the run store only


# --------------------------------------------------------------------------- YAML


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, reading ``1e-3`` as a float and refusing a key given twice."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:  # type: ignore[override]
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} is given twice (first on line {seen[key] + 1})", key_node.start_mark)
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


# YAML 1.2's floats: a mantissa with or without a dot, an optional exponent (1e-3, 5.0e-05, .5, 2.).
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?"
               r"|[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)"
               r"|\.[0-9_]+(?:[eE][-+][0-9]+)?"
               r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"),
    list("-+0123456789."),
)


def yaml_value(text: str) -> Any:
    """One value as a recipe reads it (``8`` an int, ``1e-3`` a float, ``query`` a string)."""
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader


#: YAML's words for the Python types it reads (bool before int: a bool is an int to Python).
_YAML_KINDS = ((type(None), "null"), (bool, "a boolean"), (int, "an integer"), (float, "a number"),
               (str, "a string"), (list, "a list"), (dict, "a mapping"))


def _yaml_kind(value: Any) -> str:
    """What a value read from YAML is, in YAML's words."""
    return next((word for kind, word in _YAML_KINDS if isinstance(value, kind)), type(value).__name__)


# --------------------------------------------------------------------------- types


def _accepts(hint: Any, value: Any) -> bool:
    """Whether a value read from YAML can stand for a field of type ``hint``."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Literal:
        return value in args
    if origin in (typing.Union, types.UnionType):
        return any(_accepts(a, value) for a in args)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return is_integer(value)
    if hint is float:
        return is_number(value) or (isinstance(value, float) and value != value)  # NaN: let the range check say
    if hint is str:
        return isinstance(value, str)
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        return isinstance(value, list) and all(_accepts(args[0], v) for v in value)
    return True  # a type this reader does not know: the dataclass's own check decides


def _describe(hint: Any) -> str:
    """A field's type in a recipe's words: 'an integer', 'a list of strings or a string', ..."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if origin is tuple:
        return f"a list of {_describe(args[0]).removeprefix('an ').removeprefix('a ')}s"
    return {type(None): "null", bool: "true or false", int: "an integer", float: "a number",
            str: "a string"}.get(hint, getattr(hint, "__name__", str(hint)))


def _check_keys(where: str, data: dict, allowed: list[str], prefix: str, hint: str = "") -> None:
    unknown = [k for k in data if k not in allowed]
    if not unknown:
        return
    key = unknown[0]
    close = difflib.get_close_matches(str(key), allowed, n=1)
    lora_names = LoRAConfig.field_names()
    if not prefix and key in lora_names:
        why = f"{key} is a LoRA setting: put it under lora: (lora: {{{key}: ...}})"
    else:
        why = "unknown key" + (f" (did you mean {prefix}{close[0]}?)" if close else "")
    raise RecipeError(f"{where}: {prefix}{key}: {why}; the keys allowed{hint} are: {', '.join(allowed)}")


def _check_types(where: str, data: dict, cls: type, prefix: str) -> None:
    hints = typing.get_type_hints(cls)
    for key, value in data.items():
        if not _accepts(hints[key], value):
            raise RecipeError(f"{where}: {prefix}{key}: expected {_describe(hints[key])}, "
                              f"got {value!r} ({_yaml_kind(value)})")


def _built(where: str, make: Any, prefix: str, names: tuple[str, ...]) -> Any:
    """Call ``make()`` (a dataclass's constructor, whose checks run then); on a refusal, put
    the file and the key's path in front of the dataclass's own message."""
    try:
        return make()
    except (ValueError, TypeError) as e:
        text = str(e)
        named = next((n for n in sorted(names, key=len, reverse=True) if text.startswith(n)), None)
        path = f"{prefix}{named}" if named else (prefix.rstrip(".") or "recipe")
        raise RecipeError(f"{where}: {path}: {text}") from None


def _lora_tuples(d: dict) -> dict:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}


# --------------------------------------------------------------------------- reading


def recipe_from_dict(data: Any, where: str = "recipe") -> Recipe:
    """A Recipe from the mapping a YAML file holds (``where`` names it in errors)."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise RecipeError(f"{where}: a recipe is a mapping of settings (key: value lines), got {_yaml_kind(data)}")
    run_names = [f.name for f in fields(RunConfig)]
    _check_keys(where, data, run_names + list(RECIPE_KEYS), "")
    track = data.get("track")
    if track is not None and track not in TRACKERS:
        raise RecipeError(f"{where}: track: expected {', '.join(repr(t) for t in TRACKERS)} or null, got {track!r}")
    settings = {k: v for k, v in data.items() if k in run_names}
    lora_data = settings.pop("lora", None)
    if lora_data is None:
        lora_data = {}
    if not isinstance(lora_data, dict):
        raise RecipeError(f"{where}: lora: expected a mapping of LoRA settings (rank, alpha, ...), "
                          f"got {lora_data!r} ({_yaml_kind(lora_data)})")
    lora_names = list(LoRAConfig.field_names())
    _check_keys(where, lora_data, lora_names, "lora.", " under lora")
    _check_types(where, lora_data, LoRAConfig, "lora.")
    _check_types(where, settings, RunConfig, "")
    lora = _built(where, lambda: LoRAConfig(**_lora_tuples(lora_data)), "lora.", tuple(lora_names))
    config = _built(where, lambda: RunConfig(**settings, lora=lora), "", tuple(run_names))
    return Recipe(config=config, track=track)


def recipe_from_text(text: str, where: str = "recipe") -> Recipe:
    """A Recipe from YAML text (``where`` names it in errors)."""
    try:
        data = yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e)
        raise RecipeError(f"{where}: not valid YAML{at}: {problem}") from None
    return recipe_from_dict(data, where)


def read_recipe(path: str | os.PathLike) -> Recipe:
    """The Recipe in a YAML file; errors name the file, the key's path and what is allowed."""
    path = Path(path)
    if path.is_dir():
        raise RecipeError(f"{path}: a folder; a recipe is a YAML file (e.g. recipes/tiny.yaml)")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(f"no recipe file {path}") from None
    except UnicodeDecodeError as e:
        raise RecipeError(f"{path}: not UTF-8 text (byte {e.start})") from None
    return recipe_from_text(text, str(path))


# --------------------------------------------------------------------------- writing


def recipe_dict(config: RunConfig, track: str | None = None) -> dict[str, Any]:
    """Every setting of ``config`` as plain values, in the dataclass's order (lists for tuples)."""
    if not isinstance(config, RunConfig):
        raise TypeError(f"a recipe is written from a RunConfig, got {type(config).__name__}")
    config.check()
    d = config.to_dict()
    out = {f.name: d[f.name] for f in fields(RunConfig)}
    if track is not None:
        if track not in TRACKERS:
            raise ValueError(f"track must be one of {', '.join(repr(t) for t in TRACKERS)} or None, got {track!r}")
        out["track"] = track
    return out


def recipe_text(config: RunConfig, track: str | None = None, header: str | None = None) -> str:
    """The YAML recipe of ``config``: every key, so that it says everything a run ran with.

    ``header``: comment lines put on top (e.g. which run it came from).  Reading the text
    back (``recipe_from_text``) gives an equal config."""
    lines = [f"# {line}".rstrip() for line in (header or "").splitlines()]
    lines.append("# LoRA Workbench recipe: python -m workbench train THIS_FILE (flags override its settings)")
    body = yaml.safe_dump(recipe_dict(config, track), sort_keys=False, default_flow_style=None, width=100,
                          allow_unicode=True)
    text = "\n".join(lines) + "\n" + body
    again = recipe_from_text(text).config
    if again != config:  # a value YAML cannot carry as it is: say so rather than write a different run
        raise ValueError(f"the recipe of this config does not read back the same (got {again!r})")
    return text


def write_recipe(config: RunConfig, path: str | os.PathLike, track: str | None = None,
                 header: str | None = None) -> Path:
    """Write ``recipe_text(config)`` to ``path`` atomically; return the path."""
    return atomic_write_text(path, recipe_text(config, track, header))
