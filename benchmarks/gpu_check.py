"""Every CUDA path of the workbench, checked in one command on one GPU, with a table at the end.

    python benchmarks/gpu_check.py [--fast] [--steps 60] [--parts tests,qlora,adapters,speed,ray]

Made for the rare session that is lent a GPU (a few minutes of device time): prepared and
tested on the CPU, run once there.  It needs no network (the bundled models, and
bitsandbytes' CUDA kernels, which ship in its wheel).  The parts, each timed:

* **tests**: the suite's tests that skip without CUDA (found by their ``skipif`` on
  ``torch.cuda.is_available()``), run with pytest on the GPU;
* **qlora**: NF4 and int8 bases on CUDA: our LoRA against PEFT's bitsandbytes LoRA on the
  same quantized base (logits, relative error), and a short ``wb.train`` run whose peak
  (``torch.cuda.max_memory_allocated``, measured by the engine) is set against the
  planner's estimate for the same batch;
* **adapters**: two adapters and the base answering one mixed batch, each row against its
  adapter alone (``workbench.lessons.many_adapters.mixed_vs_alone``);
* **speed**: the ``generate`` preset against PEFT + TRL's ``SFTTrainer`` and a default-sweep
  LoRA run against PEFT + the Trainer, same steps, on the same GPU: total seconds each way
  and our step time;
* **ray**: a two-run sweep on a local Ray instance with one GPU (each run a Ray task on it).

Without CUDA every part says why it was skipped, the table is printed, and the exit code is
0 (``tests/engine/test_gpu_check.py`` runs it so).  ``--fast`` shortens what runs (fewer
steps).  The exit code is 1 when a part that ran failed.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import re
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import machine_lines  # noqa: E402

PARTS = ("tests", "qlora", "adapters", "speed", "ray")
NO_CUDA = "skipped: no CUDA device here (torch.cuda.is_available() is False)"


@dataclass
class Row:
    part: str
    check: str
    status: str  # "ok", "FAILED", "skipped: ..."
    detail: str = ""
    seconds: float = float("nan")


# --------------------------------------------------------------------------- the parts


def cuda_test_ids() -> list[str]:
    """Node ids of the suite's tests that are skipped without CUDA (a skipif on cuda.is_available)."""
    ids = []
    for path in sorted((ROOT / "tests").rglob("test_*.py")):
        lines = path.read_text(encoding="utf-8").splitlines()
        for i, line in enumerate(lines):
            if "skipif" in line and "cuda.is_available" in line:
                for nxt in lines[i + 1:i + 6]:
                    m = re.match(r"\s*def (test_\w+)", nxt)
                    if m:
                        ids.append(f"{path.relative_to(ROOT)}::{m.group(1)}")
                        break
    return ids


def part_tests(args) -> list[Row]:
    ids = cuda_test_ids()
    if not ids:
        return [Row("tests", "CUDA-only tests", "skipped: the suite has none")]
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *ids], cwd=ROOT,
                          capture_output=True, text=True)
    last = (proc.stdout.strip().splitlines() or ["(no output)"])[-1]
    return [Row("tests", f"{len(ids)} CUDA-only tests", "ok" if proc.returncode == 0 else "FAILED", last)]


def part_qlora(args) -> list[Row]:
    import copy

    from peft import LoraConfig, get_peft_model

    import workbench as wb
    from workbench.engine.models import load_base
    from workbench.lora.quantize import quantize_model

    rows = []
    for quantize in ("nf4", "int8"):
        # Parity: ours and PEFT's bitsandbytes LoRA on one quantized base, the same A and B.
        base, tok = load_base("minilm", num_labels=2)
        base = base.to(args.device)
        quantize_model(base, quantize, compute_dtype=torch.float32)
        theirs_base = copy.deepcopy(base)
        wb.add_lora(base, rank=4, alpha=8, targets=["query", "value"])
        g = torch.Generator().manual_seed(3)
        with torch.no_grad():
            for layer in wb.lora_layers(base).values():
                for w in (layer.lora_A.weight, layer.lora_B.weight):
                    w.copy_((torch.randn(w.shape, generator=g) * 0.1).to(w.device))
        setattr(theirs_base, "is_loaded_in_4bit" if quantize == "nf4" else "is_loaded_in_8bit", True)
        theirs = get_peft_model(theirs_base, LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value"],
                                                        task_type="SEQ_CLS"))
        with torch.no_grad():
            for n, layer in wb.lora_layers(base).items():
                pl = theirs.base_model.model.get_submodule(n)
                pl.lora_A["default"].weight.copy_(layer.lora_A.weight)
                pl.lora_B["default"].weight.copy_(layer.lora_B.weight)
            head = theirs.base_model.model.classifier.modules_to_save["default"]
            head.load_state_dict(base.classifier.state_dict())
        x = tok(["the old fisherman followed a goat", "a goat was chased"], return_tensors="pt", padding=True)
        x = {k: v.to(args.device) for k, v in x.items()}
        base.eval(), theirs.eval()
        with torch.no_grad():
            a, b = base(**x).logits.float(), theirs(**x).logits.float()
        rel = float((a - b).norm() / b.norm().clamp_min(1e-12))
        rows.append(Row("qlora", f"{quantize}: logits against PEFT", "ok" if rel < 1e-3 else "FAILED",
                        f"relative error {rel:.2e} (limit 1e-3)"))
        del base, theirs, theirs_base
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        # Memory: the engine's measured peak (max_memory_allocated) against the planner's estimate.
        result = wb.train(wb.preset("default", quantize=quantize, steps=args.steps // 3 or 5, eval_every=0,
                                    device=args.device), runs_dir=None, progress=False)
        peak = result.memory.peak if result.memory else None
        est_total = result.memory_estimate.total if result.memory_estimate is not None else None
        if peak and est_total:
            detail = f"peak {peak / 2**20:.0f} MiB, estimate {est_total / 2**20:.0f} MiB ({peak / est_total:.2f}x)"
        else:
            detail = f"peak {peak}, estimate {est_total} (not both measured)"
        rows.append(Row("qlora", f"{quantize}: a run's peak against the estimate", result.status == "completed"
                        and "ok" or "FAILED", detail))
    return rows


def part_adapters(args) -> list[Row]:
    from workbench.engine.bundled import bundled_data_dir
    from workbench.lessons import many_adapters as ma

    with tempfile.TemporaryDirectory() as tmp:
        folders = {}
        for task in ("negate", "swap_tense"):
            data = ma.write_task(Path(tmp) / f"{task}-data", task)
            folders[task] = Path(tmp) / task
            ma.train_peft_adapter(folders[task], data, steps=max(10, args.steps // 3), max_train_examples=200)
        model, tok = ma.load_all(folders)
        model = model.to(args.device)
        prompts = ["The cat is big.", "The dog ran home.", "The bird sings.", "The fox was red."]
        table = ma.mixed_vs_alone(model, tok, prompts, ["negate", "swap_tense", None, "negate"], max_new_tokens=12)
    same = int(table["equal"].sum())
    return [Row("adapters", "mixed batch against each adapter alone", "ok" if same == len(table) else "FAILED",
                f"{same} of {len(table)} rows equal")]


def part_speed(args) -> list[Row]:
    import sft_vs_trl
    import sweep as sweep_bench

    import workbench as wb

    rows = []
    gen = wb.preset("generate", steps=args.steps)
    ours = sft_vs_trl.ours_run(gen)
    trl = sft_vs_trl.trl_run(gen, bf16=True)
    rows.append(Row("speed", f"generate preset, {args.steps} steps: ours vs PEFT + TRL (bf16)", "ok",
                    f"ours {ours['seconds']:.1f} s ({ours['step'] * 1000:.1f} ms a step), TRL {trl['seconds']:.1f} s: "
                    f"{trl['seconds'] / ours['seconds']:.2f}x"))
    cls = wb.preset("default", rank=8, steps=args.steps)
    t0 = time.perf_counter()
    result = wb.train(cls, runs_dir=None, progress=False)
    ours_s = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as out:
        std_s, std_acc = sweep_bench.standard_run(cls, out, same_recipe=True)
    rows.append(Row("speed", f"default LoRA r=8, {args.steps} steps: ours vs PEFT + Trainer", "ok",
                    f"ours {ours_s:.1f} s ({result.timing.seconds_per_step * 1000:.1f} ms a step, accuracy "
                    f"{result.eval_accuracy:.3f}), Trainer {std_s:.1f} s (accuracy {std_acc:.3f}): "
                    f"{std_s / ours_s:.2f}x"))
    return rows


def part_ray(args) -> list[Row]:
    import workbench as wb
    from workbench.engine.ray_sweep import RayUnavailable
    from workbench.engine.sweep import run_sweep

    configs = [wb.preset("tiny", rank=r, device=args.device) for r in (2, 4)]
    try:
        results = run_sweep(configs, progress=False, backend="ray")
    except RayUnavailable as e:
        return [Row("ray", "a sweep on Ray with one GPU", f"skipped: {e}")]
    devices = sorted({r.environment.get("device", "?") for r in results})
    ok = all(r.status == "completed" for r in results) and all(d.startswith(args.device) for d in devices)
    return [Row("ray", "a sweep on Ray with one GPU", "ok" if ok else "FAILED",
                f"{len(results)} runs, statuses {[r.status for r in results]}, devices {devices}")]


RUNNERS: dict[str, Callable] = {"tests": part_tests, "qlora": part_qlora, "adapters": part_adapters,
                                "speed": part_speed, "ray": part_ray}


# --------------------------------------------------------------------------- the table


def run_part(name: str, args) -> list[Row]:
    if args.device == "cuda" and not torch.cuda.is_available():
        print(f"[{name}] {NO_CUDA}", flush=True)
        return [Row(name, "all checks", NO_CUDA)]
    print(f"[{name}] running ...", flush=True)
    t0 = time.perf_counter()
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            rows = RUNNERS[name](args) if name != "tests" or args.device == "cuda" else \
                [Row("tests", "CUDA-only tests", "skipped: --device cpu")]
    except Exception as e:  # noqa: BLE001 - one part failing must not hide the others
        traceback.print_exc()
        rows = [Row(name, "all checks", "FAILED", f"{type(e).__name__}: {e}"[:200])]
    seconds = time.perf_counter() - t0
    for r in rows:
        r.seconds = seconds
    return rows


def table(rows: list[Row]) -> str:
    lines = ["| part | check | status | detail | part s |", "|---|---|---|---|---|"]
    lines += [f"| {r.part} | {r.check} | {r.status} | {r.detail} | {r.seconds:.0f} |" for r in rows]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--fast", action="store_true", help="fewer steps (a smoke run)")
    p.add_argument("--steps", type=int, default=None, help="training steps of the speed and memory runs (default 60)")
    p.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated, of: {', '.join(PARTS)}")
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"],
                   help="cpu: a dry run of the parts' code on the CPU (slow; for preparing the script)")
    args = p.parse_args(argv)
    parts = [x.strip() for x in args.parts.split(",") if x.strip()]
    unknown = [x for x in parts if x not in PARTS]
    if unknown:
        p.error(f"unknown part(s) {', '.join(unknown)}; parts: {', '.join(PARTS)}")
    args.steps = args.steps or (15 if args.fast else 60)
    print("\n".join(machine_lines()))
    if torch.cuda.is_available():
        print(f"# GPU: {torch.cuda.get_device_name(0)}, CUDA {torch.version.cuda}")
    t0 = time.perf_counter()
    rows = [row for name in parts for row in run_part(name, args)]
    print()
    print(table(rows))
    print(f"\ntotal {time.perf_counter() - t0:.0f} s")
    return 1 if any(r.status == "FAILED" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
