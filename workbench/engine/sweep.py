"""A sweep: the same run at several ranks, beside full fine-tuning and head-only training.

By default alpha stays fixed across ranks, as in the LoRA paper (Hu et al. 2021, sec. 4.1:
"we simply set alpha to the first r we try and do not tune it"), so the update's scale
alpha / r shrinks as r grows; ``alpha_per_rank`` (alpha = k * r) and rsLoRA
(alpha / sqrt(r)) are the other common choices.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Callable, Sequence

from workbench.engine.config import RunConfig, RunResult
from workbench.engine.launch import train
from workbench.util.checks import check_positive_int, check_positive_number

DEFAULT_RANKS = (1, 2, 4, 8, 16, 32)
# The LoRA variants a sweep can put side by side, as RunConfig overrides.
VARIANTS: dict[str, dict] = {
    "lora": {},
    "rslora": {"rslora": True},  # scaling alpha / sqrt(r)
    "dora": {"dora": True},  # learned magnitude, LoRA on the direction
    "pissa": {"init": "pissa"},  # A, B from the top-r SVD of W
    "loraplus": {"loraplus_ratio": 16.0},  # B learns 16x faster than A
}
FULL_LR = 5e-5  # full fine-tuning of BERT-sized models wants a far smaller step than LoRA
HEAD_LR = 1e-3


def sweep_configs(
    base: RunConfig,
    ranks: Sequence[int] = DEFAULT_RANKS,
    with_full: bool = True,
    with_head: bool = True,
    alpha_per_rank: float | None = None,
    full_lr: float = FULL_LR,
    head_lr: float = HEAD_LR,
    variants: Sequence[str] = ("lora",),
) -> list[RunConfig]:
    """The configs of a sweep: one run per variant and rank, then the references."""
    if not ranks and not with_full and not with_head:
        raise ValueError("an empty sweep: give at least one rank, or with_full / with_head")
    for r in ranks:
        check_positive_int("rank", r, what="each of the sweep's ranks")
    if alpha_per_rank is not None:
        check_positive_number("alpha_per_rank", alpha_per_rank, what="alpha = alpha_per_rank * r, or None")
    check_positive_number("full_lr", full_lr)
    check_positive_number("head_lr", head_lr)
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown LoRA variant {unknown[0]!r}; variants: {', '.join(VARIANTS)}")
    configs = [
        base.with_changes(method="lora", rank=r, alpha=alpha_per_rank * r if alpha_per_rank else base.lora.alpha,
                          name=None, **VARIANTS[v])
        for v in variants
        for r in ranks
    ]
    if with_full:
        configs.append(replace(base, method="full", lr=full_lr, name=None))
    if with_head:
        configs.append(replace(base, method="head", lr=head_lr, name=None))
    return configs


def run_sweep(
    configs: Sequence[RunConfig],
    progress: bool = True,
    on_run: Callable[[int, RunResult], None] | None = None,
    backend: str = "local",
    address: str | None = None,
    **train_kwargs: Any,
) -> list[RunResult]:
    """Train each config (a progress bar over runs); stop early if a run is stopped.

    ``backend="local"`` trains the configs one after another here; ``"ray"`` trains each
    as a Ray task (``workbench.engine.ray_sweep``): on the cluster at ``address``
    ('HOST:PORT'), or without one on a Ray instance started on this machine for the sweep.
    Either way the results come in the configs' order, and ``on_run(i, result)`` is called
    as each run ends.  ``train_kwargs`` go to every ``workbench.engine.launch.train``
    call (``sinks``, ``on_step``, ``stop``, ``keep_model``, ``fresh_process``; with Ray not
    ``on_step``, and ``worker_check`` besides).  Nothing is stored here: ``wb.run_sweep``
    (``workbench.records.recording.run_sweep``) attaches the run store.
    """
    from workbench.engine.ray_sweep import check_backend, run_sweep_on_ray

    check_backend(backend)
    configs = list(configs)
    if not configs:
        raise ValueError("run_sweep needs at least one RunConfig (see sweep_configs)")
    if backend == "ray":
        return run_sweep_on_ray(configs, progress=progress, on_run=on_run, address=address, **train_kwargs)
    if address is not None:
        raise ValueError(f"address {address!r} is a Ray cluster's: it needs backend='ray'")
    from tqdm.auto import tqdm

    results = []
    for i, cfg in enumerate(tqdm(configs, desc="sweep", disable=not progress)):
        result = train(cfg, progress=progress, **train_kwargs)
        results.append(result)
        if on_run is not None:
            on_run(i, result)
        if result.status == "stopped":
            break
    return results
