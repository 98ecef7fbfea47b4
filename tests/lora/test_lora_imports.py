"""The LoRA core needs only torch (and transformers' types): no pandas, matplotlib or widgets.

loralib and minLoRA need nothing else either.  Each module under ``workbench.lora`` is
imported in a fresh interpreter (so nothing imported by an earlier test hides an import),
and the heavy table, figure and widget libraries must not be among the loaded modules.
"""

from __future__ import annotations

import json
import os
import pkgutil
import subprocess
import sys
from pathlib import Path

import workbench.lora

ROOT = Path(__file__).resolve().parents[2]
FORBIDDEN = ("pandas", "matplotlib", "ipywidgets")
MODULES = sorted(f"workbench.lora.{m.name}" for m in pkgutil.iter_modules(workbench.lora.__path__))

_PROBE = """
import importlib, json, sys
loaded = {}
for name in sys.argv[1:]:
    importlib.import_module(name)
    loaded[name] = sorted(m for m in %r if m in sys.modules)
print(json.dumps(loaded))
""" % (FORBIDDEN,)


def test_the_lora_core_loads_no_pandas_matplotlib_or_widgets():
    assert {"layer", "serving", "params", "architectures", "paths", "quant_facts"} <= {m.rsplit(".", 1)[1]
                                                                                       for m in MODULES}
    out = subprocess.run([sys.executable, "-c", _PROBE, *MODULES], cwd=ROOT, capture_output=True, text=True,
                         timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert out.returncode == 0, out.stderr
    loaded = json.loads(out.stdout.strip().splitlines()[-1])
    assert loaded == {m: [] for m in MODULES}, {m: found for m, found in loaded.items() if found}


def test_the_parameter_table_is_built_only_when_asked():
    """``count_parameters`` returns plain rows; ``.table`` is the DataFrame, pandas imported there."""
    probe = ("import sys, torch, workbench.lora.params as p\n"
             "r = p.count_parameters(torch.nn.Sequential(torch.nn.Linear(3, 2)))\n"
             "assert 'pandas' not in sys.modules and r.rows[0].total == 8 and r.total == 8\n"
             "t = r.table\n"
             "assert 'pandas' in sys.modules and list(t.columns) == ['module', 'kind', 'type', 'trainable', 'total']\n"
             "assert t['total'].sum() == 8\n")
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
