"""What machine a benchmark ran on: printed at the top of every benchmark's output.

A speed ratio measured on one CPU kind did not hold on the other (the Intel machine with
AMX and the AMD EPYC gave different bf16 verdicts for the same model), so every figure
comes with the CPU's model, the flags that decide which kernels run, torch's thread
count and the load on the machine when it started.
"""

from __future__ import annotations

import os

import torch

from workbench.engine.provenance import cpu_name
from workbench.util import procfs

# The flags that decide which matmul kernels torch picks on x86 (bf16 units, AVX-512, AVX2).
FLAGS_THAT_MATTER = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_fp16", "avx512_vnni", "amx_bf16", "amx_tile")


def machine_lines() -> list[str]:
    """Lines saying the CPU model, its relevant flags, torch's threads, the GPU if any, and the load."""
    flags = procfs.cpu_flags()
    have = [f for f in FLAGS_THAT_MATTER if f in flags]
    try:
        load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        load = "unknown"
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return [f"# CPU: {cpu_name()} ({os.cpu_count()} CPUs); flags: {' '.join(have) or 'none of ' + ', '.join(FLAGS_THAT_MATTER)}",
            f"# torch {torch.__version__}, {torch.get_num_threads()} threads; GPU: {gpu}; "
            f"load average (1, 5, 15 min) at start: {load}"]
