"""The package's shape: imports point down the layers, the public API keeps its word, the import is light.

* Layers, lowest first: util, lora, engine, viz, records, room, ui, lessons.  A module may import
  its own layer and the layers below it, never one above (``workbench/__init__.py`` and
  ``__main__.py`` sit on top and may import anything).  The test reads every import with
  ``ast`` (module level, inside functions, and ``importlib.import_module("...")`` with a
  literal name), so an arrow pointing up fails here, with the file, line and import.
* Every public name the README's "The API in a few lines" shows is what it says it is
  (never a module), before and after every submodule of ``workbench`` is imported, and
  keeps working when called a second time: importing ``workbench.train`` once made
  ``wb.train`` the module, so a notebook cell run twice failed.
* ``import workbench`` loads the LoRA core only: no figures, widgets, PEFT or datasets.
"""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path


ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "workbench"
README = ROOT / "README.md"

#: Layer ranks: an import may point to the same rank or a lower one.
LAYERS: dict[str, int] = {"util": 0, "lora": 1, "engine": 2, "viz": 3, "records": 4, "room": 5, "ui": 6,
                         "lessons": 7}
#: The top of the package: re-exports the public API, runs the CLI; may import any layer.
TOP = {"workbench/__init__.py", "workbench/__main__.py"}
#: The one name the README uses that is not written as ``wb.<name>`` in its API block.
EXTRA_PUBLIC = ("LoRAConfig",)
#: What ``import workbench`` must not load: figures, widgets, PEFT, datasets, the upper layers.
HEAVY = ("matplotlib", "ipywidgets", "IPython", "peft", "datasets", "sklearn", "scipy",
         "sentence_transformers", "pandas.io.formats.style",
         "workbench.engine", "workbench.viz", "workbench.records", "workbench.ui", "workbench.lessons")


def _subprocess_env() -> dict[str, str]:
    """Offline, and this checkout first on the path (the test checks this tree, whatever is installed)."""
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               PYTHONPATH=os.pathsep.join([str(ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]))
    return env


# ----------------------------------------------------------------------- import direction


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _layer(module: str) -> str | None:
    """'workbench.engine.training' -> 'engine'; the package itself -> None (the top)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "workbench" else None


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) for every import in the file that names a workbench module, wherever it is."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    here = _module_name(path)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from .x import y, from .. import z
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            if module == "workbench":  # from workbench import engine: the submodules are the targets
                found += [(node.lineno, f"workbench.{alias.name}") for alias in node.names]
            else:
                found.append((node.lineno, module))
        elif (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)
              and (getattr(node.func, "attr", None) == "import_module" or getattr(node.func, "id", None) == "import_module")):
            found.append((node.lineno, node.args[0].value))
    return [(line, m) for line, m in found if m == "workbench" or m.startswith("workbench.")]


def _modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def test_every_module_belongs_to_a_layer():
    """A new subpackage (or a module beside __init__.py) needs a place in LAYERS first."""
    homeless = [str(p.relative_to(ROOT)) for p in _modules()
                if str(p.relative_to(ROOT)) not in TOP and _layer(_module_name(p)) not in LAYERS]
    assert not homeless, f"modules outside the layers {list(LAYERS)}: {homeless}"


def test_imports_point_down_the_layers():
    upward = []
    for path in _modules():
        rel = str(path.relative_to(ROOT))
        if rel in TOP:
            continue
        source = _layer(_module_name(path))
        for line, target in _imports(path):
            layer = _layer(target)
            # The package itself re-exports every layer: importing it from inside is importing the top.
            rank = LAYERS.get(layer, max(LAYERS.values()) + 1) if layer is not None else max(LAYERS.values()) + 1
            if rank > LAYERS[source]:
                upward.append(f"{rel}:{line} ({source}, rank {LAYERS[source]}) imports {target} "
                              f"({layer or 'the package top'}, rank {rank})")
    print("\n".join(upward) if upward else "no upward imports")
    assert not upward, "imports pointing to a higher layer:\n  " + "\n  ".join(upward)


def test_the_import_reader_sees_every_kind_of_import(tmp_path, monkeypatch):
    """The checker itself: module level, inside a function, relative, from-the-package, import_module."""
    pkg = tmp_path / "workbench" / "engine"
    pkg.mkdir(parents=True)
    (pkg / "m.py").write_text(textwrap.dedent("""
        import workbench.util.checks
        from workbench.lora.config import LoRAConfig
        from ..records import store
        from . import data
        from workbench import viz
        import numpy

        def f():
            from workbench.ui.panel import Workbench
            import importlib
            importlib.import_module("workbench.lessons.planner")
    """))
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    assert [m for _, m in _imports(pkg / "m.py")] == [
        "workbench.util.checks", "workbench.lora.config", "workbench.records", "workbench.engine",
        "workbench.viz", "workbench.ui.panel", "workbench.lessons.planner",
    ]


# ----------------------------------------------------------------------- the public API


def readme_public_names() -> list[str]:
    """Every ``wb.<name>`` in the README's "The API in a few lines" python block, plus LoRAConfig."""
    text = README.read_text(encoding="utf-8")
    section = re.split(r"^#+ The API in a few lines$", text, maxsplit=1, flags=re.M)
    assert len(section) == 2, "README.md has no section 'The API in a few lines'"
    block = re.search(r"```python\n(.*?)```", section[1], re.S)
    assert block, "the API section of README.md has no python block"
    names = list(dict.fromkeys(re.findall(r"\bwb\.([A-Za-z_]\w*)", block.group(1))))
    return names + [n for n in EXTRA_PUBLIC if n not in names]


def test_readme_names_are_read():
    names = readme_public_names()
    assert {"load_base", "add_lora", "train", "runs", "RunConfig", "LoRAConfig"} <= set(names), names


# Runs in a fresh interpreter, so nothing imported before decides the result.  It collects
# every problem instead of stopping at the first, and prints them as JSON.
API_SCRIPT = r'''
import importlib, json, pkgutil, sys, tempfile, types
from pathlib import Path

names = json.loads(sys.argv[1])
problems = []

import workbench as wb

def resolve(when):
    found = {}
    for name in names:
        try:
            obj = getattr(wb, name)
        except Exception as e:
            problems.append(f"{when}: wb.{name} raised {type(e).__name__}: {e}")
            continue
        if isinstance(obj, types.ModuleType):
            problems.append(f"{when}: wb.{name} is the module {obj.__name__}, not what the README shows")
        found[name] = obj
    return found

def exercise(when, folder):
    """Each README name used as the README uses it, on the tiny model (seconds, offline).
    Every step runs even when an earlier one failed, so each broken name is reported."""
    state = {}

    def model_steps():
        model, tokenizer = wb.load_base("tiny-bert", num_labels=2)
        wb.add_lora(model, rank=8, alpha=16, targets=["query", "value"])
        report = wb.count_parameters(model)
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        assert report.trainable == trainable, (report.trainable, trainable)
        wb.merge_lora(model); wb.unmerge_lora(model)
        wb.save_adapter(model, folder / "adapter")
        base, _ = wb.load_base("tiny-bert", num_labels=2)
        wb.load_adapter(base, folder / "adapter")

    def train_once():
        result = wb.train(wb.preset("tiny", steps=2), runs_dir=None, progress=False)
        assert result.status == "completed", (result.status, result.message)

    def train_and_store():
        result = wb.train(wb.preset("tiny", steps=2), runs_dir=str(folder / "runs"), progress=False)
        assert result.status == "completed", (result.status, result.message)
        result.history, result.params, result.memory, result.timing
        assert len(wb.runs(str(folder / "runs"))) == 1

    def configs():
        cfg = wb.RunConfig(method="lora", lora=wb.LoRAConfig(rank=8, alpha=16, targets=["query", "value"]))
        assert isinstance(cfg, wb.RunConfig) and cfg.lora.rank == 8

    for step in (model_steps, train_once, train_and_store, configs):
        try:
            step()
        except Exception as e:
            problems.append(f"{when}, {step.__name__}: {type(e).__name__}: {e}")

with tempfile.TemporaryDirectory() as tmp:
    first = resolve("first use")
    exercise("first use", Path(tmp) / "1")
    exercise("second use", Path(tmp) / "2")
    # Every submodule, as a notebook that imports workbench.engine.training (or anything) would.
    def failed(name):
        problems.append(f"importing {name} failed: {sys.exc_info()[0].__name__}: {sys.exc_info()[1]}")
    for info in pkgutil.walk_packages(wb.__path__, "workbench.", onerror=failed):
        if info.name == "workbench.__main__":  # that one runs the CLI
            continue
        try:
            importlib.import_module(info.name)
        except Exception:
            failed(info.name)
    after = resolve("after importing every submodule")
    for name, obj in first.items():
        if name in after and after[name] is not obj:
            problems.append(f"wb.{name} changed after importing every submodule: {obj!r} -> {after[name]!r}")
    exercise("after importing every submodule", Path(tmp) / "3")
print(json.dumps(problems))
'''


def test_public_names_keep_their_word_before_and_after_every_submodule(tmp_path):
    names = readme_public_names()
    done = subprocess.run([sys.executable, "-c", API_SCRIPT, json.dumps(names)], cwd=tmp_path,
                          env=_subprocess_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    problems = json.loads(done.stdout.strip().splitlines()[-1])
    assert not problems, "\n".join(problems)


# ----------------------------------------------------------------------- a quick import


def test_import_workbench_loads_only_the_core():
    code = "import json, sys, workbench; print(json.dumps(sorted(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT.parent, env=_subprocess_env(),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    loaded = json.loads(done.stdout.strip().splitlines()[-1])
    heavy = sorted({h for h in HEAVY for m in loaded if m == h or m.startswith(h + ".")})
    assert not heavy, f"`import workbench` loads {heavy}"
