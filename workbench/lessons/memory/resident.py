"""A run's resident memory before its first step, measured in a fresh process (notebook 03's QLoRA peak).

On a CPU a run's peak is its worker process's high-water mark from the first step on (the
probe resets it just before that step), so it is the memory the process already held when
training began plus what training added.  ``resident_before_training`` measures the first
part for a config: a fresh Python process imports the engine, sets the run up exactly as
``train`` does (``engine.training.set_up``: the model loaded, quantized if the config says so,
LoRA applied, the optimizer made), reports its resident memory, resets its high-water mark and
takes the run's training steps, then reports the mark.  All in one process, so the two parts,
"held before training" and "added by training", are measured alike for every config: that
split tells why QLoRA's process peak can be above LoRA's while its weights are smaller.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from dataclasses import dataclass

from workbench.engine.config import RunConfig

_CHILD = r"""
import json, pickle, sys
from workbench.util.procfs import peak_resident_bytes, reset_peak_resident, status_field

def rss():
    return int(status_field("VmRSS").split()[0]) * 1024

cfg = pickle.load(sys.stdin.buffer)
import torch, transformers  # noqa: F401
from workbench.engine.training import set_up, training_step
imports = rss()
run = set_up(cfg)
before = rss()
reset_peak_resident()  # as the run's memory probe does just before its first step
for _ in range(cfg.steps):
    training_step(run, next(run.batches).to(run.device).model_inputs(), cfg.max_grad_norm)
print(json.dumps({"after_imports": imports, "before_training": before, "training_peak": peak_resident_bytes(),
                  "bitsandbytes": "bitsandbytes" in sys.modules}))
"""


@dataclass
class Resident:
    """Resident bytes of a fresh process: after importing torch, transformers and the engine; after ``set_up``
    (the model loaded and prepared, the optimizer made), just before the first step; and the high-water mark
    of the run's steps after that (the peak reset there, as the run's own probe resets it)."""

    after_imports: int
    before_training: int
    training_peak: int
    loaded_bitsandbytes: bool

    @property
    def training_added(self) -> int:
        """What the training steps added on top of what the set-up left."""
        return self.training_peak - self.before_training

    @property
    def setup(self) -> int:
        """What setting the run up added (the model, its quantization library and kernels, the data)."""
        return self.before_training - self.after_imports


def resident_before_training(cfg: RunConfig, timeout: float = 600.0) -> Resident:
    """Measure ``cfg``'s run in a fresh process: set up as ``train`` does, then its ``cfg.steps`` training
    steps, nothing evaluated or stored (Linux: reads /proc/self/status).  Keep ``cfg.steps`` small."""
    if not isinstance(cfg, RunConfig):
        raise TypeError(f"cfg must be a RunConfig, got {type(cfg).__name__}")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    done = subprocess.run([sys.executable, "-c", _CHILD], input=pickle.dumps(cfg), capture_output=True,
                          timeout=timeout, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"setting up {cfg.label()} in a fresh process failed: "
                           f"{done.stderr.decode(errors='replace')[-800:]}")
    out = json.loads(done.stdout.decode().strip().splitlines()[-1])
    return Resident(out["after_imports"], out["before_training"], out["training_peak"], bool(out["bitsandbytes"]))
