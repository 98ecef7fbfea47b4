"""What a run's numbers depend on besides its config: library versions, hardware, host.

Step times and memory are only comparable between runs on the same kind of machine with
the same library versions, so the engine records these with every run
(``RunResult.environment``), and the run store writes them into ``run.json``.
"""

from __future__ import annotations

import os
import platform
import socket
from datetime import datetime
from importlib import metadata
from typing import Any

from workbench.util import procfs


def now() -> datetime:
    """Local time with its UTC offset, so stored times stay unambiguous across time zones."""
    return datetime.now().astimezone()


def package_version(package: str) -> str | None:
    """Installed version from package metadata (no import: importing transformers is slow)."""
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo on Linux with its family and model numbers
    (``"AMD EPYC (family 25, model 17)"``: the name alone does not tell a generation from the
    next), else whatever ``platform`` knows."""
    name = procfs.cpu_model_name() or platform.processor() or platform.machine()
    numbers = procfs.cpu_family_model()
    return f"{name} (family {numbers[0]}, model {numbers[1]})" if numbers else name


def environment(device: Any = None, threads: int | None = None) -> dict[str, Any]:
    """Versions, hardware and host of this process, and when the run started.

    ``device`` is the device the run uses (default: CUDA when available, else CPU);
    ``threads`` the torch CPU thread count (default: ``torch.get_num_threads()``).
    ``started`` is now; the run store adds ``ended`` when it saves a finished run.
    """
    import torch

    env: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": package_version("torch"),
        "transformers": package_version("transformers"),
        "peft": package_version("peft"),
        "hostname": socket.gethostname(),
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
    }
    dev = str(device) if device is not None else ("cuda" if torch.cuda.is_available() else "cpu")
    env["device"] = dev
    if dev.startswith("cuda") and torch.cuda.is_available():
        env["device_name"] = torch.cuda.get_device_name(torch.device(dev))
        env["cuda"] = torch.version.cuda
    else:
        env["device_name"] = env["cpu"]
    env["threads"] = int(threads) if threads is not None else torch.get_num_threads()
    env["started"] = now().isoformat(timespec="milliseconds")
    return env
