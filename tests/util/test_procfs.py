"""The one /proc reader (``workbench.util.procfs``): what Linux says about this process and its CPU.

Each reader is checked against the file read here independently, and against a missing file
(off Linux every reader says "unknown" instead of failing).
"""

from __future__ import annotations

import os
import sys

import pytest

from workbench.util import procfs
from workbench.util.fileio import current_umask

linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc is Linux-only")


@linux
def test_status_fields_and_peak_resident_bytes():
    with open("/proc/self/status") as f:
        lines = dict(line.rstrip("\n").split(":", 1) for line in f if ":" in line)
    assert procfs.status_field("Tgid") == lines["Tgid"].strip() == str(os.getpid())
    assert procfs.status_field("NoSuchField") is None
    peak = procfs.peak_resident_bytes()
    rss = int(lines["VmRSS"].split()[0]) * procfs.KIB
    assert isinstance(peak, int) and peak >= rss > 0


@linux
def test_umask_is_the_process_umask():
    old = os.umask(0o027)
    try:
        assert procfs.umask() == 0o027 == current_umask()
    finally:
        os.umask(old)


@linux
def test_cpu_model_name_and_flags():
    with open("/proc/cpuinfo") as f:
        text = f.read()
    name = procfs.cpu_model_name()
    assert name is None or name in text
    flags = procfs.cpu_flags()
    assert isinstance(flags, set) and all(flag in text for flag in flags)
    numbers = procfs.cpu_family_model()
    if numbers is not None:  # x86: the first CPU's two lines, as written there
        assert f"cpu family\t: {numbers[0]}\n" in text and f"\nmodel\t\t: {numbers[1]}\n" in text


def test_readers_say_unknown_without_proc(monkeypatch, tmp_path):
    missing = str(tmp_path / "missing")
    monkeypatch.setattr(procfs, "STATUS", missing)
    monkeypatch.setattr(procfs, "CPUINFO", missing)
    monkeypatch.setattr(procfs, "CLEAR_REFS", str(tmp_path / "no" / "clear_refs"))
    assert procfs.status_field("VmHWM") is None and procfs.peak_resident_bytes() is None
    assert procfs.umask() is None and current_umask() in range(0o1000)  # fileio falls back to os.umask
    assert procfs.cpu_model_name() is None and procfs.cpu_flags() == set() and procfs.cpu_family_model() is None
    assert procfs.reset_peak_resident() is False


def test_readers_parse_what_they_are_given(monkeypatch, tmp_path):
    status = tmp_path / "status"
    status.write_text("Name:\tpython\nUmask:\t0022\nVmHWM:\t  2048 kB\nVmRSS:\t1024 kB\n")
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\ncpu family\t: 25\nmodel\t\t: 17\nmodel name\t: Example CPU 9000\n"
                       "flags\t\t: fpu avx512_bf16\n\n"
                       "processor\t: 1\ncpu family\t: 26\nmodel\t\t: 2\nmodel name\t: Example CPU 9000\n"
                       "flags\t\t: fpu amx_bf16\n")
    monkeypatch.setattr(procfs, "STATUS", str(status))
    monkeypatch.setattr(procfs, "CPUINFO", str(cpuinfo))
    assert procfs.peak_resident_bytes() == 2048 * 1024
    assert procfs.umask() == 0o022
    assert procfs.cpu_model_name() == "Example CPU 9000"
    assert procfs.cpu_flags() == {"fpu", "avx512_bf16", "amx_bf16"}
    assert procfs.cpu_family_model() == ("25", "17")  # the first CPU's ("model name" is not "model")
    from workbench.engine.provenance import cpu_name

    assert cpu_name() == "Example CPU 9000 (family 25, model 17)"
