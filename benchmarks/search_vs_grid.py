"""A search that stops bad runs early against a 4-point grid, on the same budget of optimizer steps.

    .venv/bin/python benchmarks/search_vs_grid.py [--steps 250] [--trials 12] [--max-eval-examples N] [--out docs/figures]

The bundled generative task (the ``generate`` preset: story-lm learns to turn a statement
into its yes/no question; exact match on held-out statements).  The grid: the preset at
four learning rates (1e-3, 3e-3 - the preset's -, 1e-2, 3e-2), 4 x ``steps`` optimizer
steps.  The search: ``wb.search`` over rank {2, 4, 8, 16} and lr log-uniform in
[1e-3, 3e-2], Optuna's TPE with the median pruner, capped at the grid's steps
(``budget_steps``).  Prints the machine, then one row per method: runs, runs stopped
early, steps used, the best exact match and its settings, and the wall time; writes the
two figures (metric against each setting, stopped trials marked) to ``--out``.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import workbench as wb  # noqa: E402
from machine import machine_lines  # noqa: E402
from workbench.records.search import SearchResult  # noqa: E402
from workbench.viz.output import save_figure  # noqa: E402

GRID_LRS = (1e-3, 3e-3, 1e-2, 3e-2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=250)
    ap.add_argument("--trials", type=int, default=12)
    ap.add_argument("--max-eval-examples", type=int, default=None,
                    help="held-out rows for the evaluation loss (default: the preset's); exact match is measured "
                         "on the preset's max_generate_examples prompts either way")
    ap.add_argument("--runs-dir", default="runs/search-benchmark")
    ap.add_argument("--out", default="docs/figures")
    args = ap.parse_args()
    print("\n".join(machine_lines()))
    cfg = wb.preset("generate", steps=args.steps)
    if args.max_eval_examples is not None:
        cfg = cfg.with_changes(max_eval_examples=args.max_eval_examples)
    print(f"# each run: {cfg.steps} steps, evaluated every {cfg.eval_every} (exact match on "
          f"{cfg.max_generate_examples} prompts, loss on {cfg.max_eval_examples} rows); torch threads "
          f"{torch.get_num_threads()}")
    metric = "eval_exact_match"

    t0 = time.perf_counter()
    grid = []
    for lr in GRID_LRS:
        grid.append(wb.train(cfg.with_changes(lr=lr), runs_dir=args.runs_dir, progress=False, fresh_process=False))
        print(f"grid lr {lr:g}: {metric} {grid[-1].last(metric):.3f}, {len(grid[-1].history)} steps, "
              f"{time.perf_counter() - t0:.0f} s so far", flush=True)
    grid_s = time.perf_counter() - t0
    grid_result = SearchResult(grid, [{"lr": lr} for lr in GRID_LRS], [r.last(metric) for r in grid],
                               [False] * len(grid), metric, "maximize", {"lr": list(GRID_LRS)})

    t0 = time.perf_counter()
    found = wb.search(cfg, {"rank": [2, 4, 8, 16], "lr": wb.loguniform(1e-3, 3e-2)}, trials=args.trials,
                      metric=metric, budget_steps=len(GRID_LRS) * args.steps, runs_dir=args.runs_dir,
                      fresh_process=False, on_trial=lambda i, r: print(
                          f"search trial {i}: rank {r.config.lora.rank}, lr {r.config.lr:.4g}: {r.status}, "
                          f"{metric} {r.last(metric):.3f}, {len(r.history)} steps, "
                          f"{time.perf_counter() - t0:.0f} s so far", flush=True))
    search_s = time.perf_counter() - t0

    preset_value = grid[GRID_LRS.index(cfg.lr)].last(metric)
    print(f"\nthe preset (rank {cfg.lora.rank}, lr {cfg.lr:g}): {metric} {preset_value:.3f}")
    print(f"\n| method | runs | stopped early | steps used | best {metric} | its settings | wall s |")
    print("|---|---|---|---|---|---|---|")
    for name, res, secs in (("4-point grid (lr)", grid_result, grid_s), ("search (Optuna TPE + median pruner)",
                                                                          found, search_s)):
        i = res.best_index
        best = f"{res.values[i]:.3f}" if i is not None and math.isfinite(res.values[i]) else "n/a"
        settings = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                             for k, v in (res.params[i] if i is not None else {}).items())
        print(f"| {name} | {len(res.results)} | {sum(res.pruned)} | {res.steps_used:,} | {best} | {settings} | "
              f"{secs:.0f} |")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name, res, title in (("search_vs_grid_grid", grid_result, "4-point grid"),
                             ("search_vs_grid_search", found, "Search")):
        print("wrote", save_figure(res.figure(title), out / name, formats=("png",))[0])
    print(f"\nthe search used {found.steps_used:,} of the grid's {grid_result.steps_used:,} optimizer steps "
          f"({sum(found.pruned)} of {len(found.results)} trials stopped early)")
    print(f"load average (1, 5, 15 min) at the end: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print("\nsearch trials:")
    print(found.table[["trial", f"{metric} (search)", "stopped_by_search", "steps_done", "rank", "lr"]]
          .to_string(index=False))


if __name__ == "__main__":
    main()
