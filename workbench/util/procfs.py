"""What Linux tells a process about itself in /proc: read in one place.

Five facts come from /proc, and every reader of them lives here:

* ``status_field("VmHWM")``, ``peak_resident_bytes()``: /proc/self/status, the process's
  peak resident memory (its "high water mark"), which the memory probe reports on CPU;
* ``umask()``: the Umask line of the same file, for atomic writes (``util.fileio``);
* ``reset_peak_resident()``: writing "5" to /proc/self/clear_refs sets the peak back to the
  current resident memory, so a run measures its own peak;
* ``cpu_model_name()``, ``cpu_family_model()`` and ``cpu_flags()``: /proc/cpuinfo, for a
  run's provenance record and for whether the CPU has fast bfloat16 units;
* ``cpu_times()`` and ``own_cpu_ticks()``: /proc/stat, each CPU's busy and total time so far,
  and /proc/self/stat, this process's own, for how many CPUs other processes keep busy
  (``workbench.engine.cpu_share``).

Every reader returns None (or False, or an empty set) where /proc is missing or says
something unexpected, so the caller decides what to do off Linux.
"""

from __future__ import annotations

from workbench.util.units import KIB  # /proc/self/status gives memory in "kB", which the kernel means as 1024 bytes

STATUS = "/proc/self/status"
CLEAR_REFS = "/proc/self/clear_refs"
CPUINFO = "/proc/cpuinfo"
STAT = "/proc/stat"
SELF_STAT = "/proc/self/stat"


def status_field(name: str) -> str | None:
    """The value of line ``name:`` of /proc/self/status, as text (``"123456 kB"``), or None."""
    try:
        with open(STATUS, encoding="ascii") as f:
            for line in f:
                key, sep, value = line.partition(":")
                if sep and key == name:
                    return value.strip()
    except (OSError, ValueError):
        return None
    return None


def peak_resident_bytes() -> int | None:
    """This process's peak resident memory (``VmHWM``), in bytes, or None off Linux.

    VmHWM ("high water mark") is the largest RSS the process has had, in kB.  Not
    ``resource.getrusage().ru_maxrss``: a child process inherits its parent's value.
    """
    value = status_field("VmHWM")
    try:
        return int(value.split()[0]) * KIB if value is not None else None
    except (ValueError, IndexError):
        return None


def umask() -> int | None:
    """The process's umask from the ``Umask:`` line (octal), or None where /proc does not show it."""
    value = status_field("Umask")
    try:
        return int(value.split()[0], 8) if value is not None else None
    except (ValueError, IndexError):
        return None


def reset_peak_resident() -> bool:
    """Set VmHWM back to the current resident memory; False where that is not allowed.

    Writing "5" to /proc/self/clear_refs does it (Linux >= 4.0).  Where it fails, the peak
    keeps its old value: "since the process started".
    """
    try:
        with open(CLEAR_REFS, "w", encoding="ascii") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _cpuinfo_lines() -> list[str]:
    try:
        with open(CPUINFO, encoding="utf-8", errors="ignore") as f:
            return f.read().splitlines()
    except OSError:
        return []


def cpu_model_name() -> str | None:
    """The first ``model name`` in /proc/cpuinfo (``"AMD EPYC 9654 96-Core Processor"``), or None."""
    for line in _cpuinfo_lines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return None


def cpu_family_model() -> tuple[str, str] | None:
    """The first CPU's ``cpu family`` and ``model`` numbers in /proc/cpuinfo (x86), or None.

    A virtual machine's model name can be as short as "AMD EPYC"; these numbers say which
    generation it is (AMD family 25 model 1: Zen 3; family 25 model 17: Zen 4; family 26: Zen 5),
    and the generations differ in speed and in bf16 units."""
    fields: dict[str, str] = {}
    for line in _cpuinfo_lines():
        key, sep, value = line.partition(":")
        if sep and key.strip() in ("cpu family", "model"):
            fields.setdefault(key.strip(), value.strip())
    if "cpu family" in fields and "model" in fields:
        return fields["cpu family"], fields["model"]
    return None


def cpu_flags() -> set[str]:
    """The instruction-set flags of the CPUs in /proc/cpuinfo (``{"avx512_bf16", ...}``); empty off Linux.

    x86 lists them as ``flags``, ARM as ``Features``; the union over every CPU is returned.
    """
    flags: set[str] = set()
    for line in _cpuinfo_lines():
        key, sep, value = line.partition(":")
        if sep and key.strip() in ("flags", "Features"):
            flags.update(value.split())
    return flags


def cpu_times() -> dict[int, tuple[int, int]]:
    """Each CPU's (busy, total) time since boot, in clock ticks, from /proc/stat; empty off Linux.

    A ``cpuN`` line's columns are user, nice, system, idle, iowait, irq, softirq, steal, ...;
    idle and iowait are the time the CPU had nothing to run, the rest is busy.
    """
    times: dict[int, tuple[int, int]] = {}
    try:
        with open(STAT, encoding="ascii") as f:
            for line in f:
                name, *columns = line.split()
                if name.startswith("cpu") and name[3:].isdigit():
                    ticks = [int(c) for c in columns]
                    total = sum(ticks[:8])  # guest time is counted in user already
                    times[int(name[3:])] = (total - ticks[3] - ticks[4], total)
    except (OSError, ValueError, IndexError):
        return {}
    return times


def own_cpu_ticks() -> int | None:
    """The CPU time this process has used so far, all its threads, user and system, in clock
    ticks (the unit of ``cpu_times``), from /proc/self/stat; None where it cannot be read.

    Fields 14 and 15 of that line (utime, stime); they are counted after the command name's
    closing parenthesis, since the name itself may hold spaces."""
    try:
        with open(SELF_STAT, encoding="ascii", errors="replace") as f:
            fields = f.read().rpartition(")")[2].split()
        return int(fields[11]) + int(fields[12])  # fields[0] is field 3 (the state)
    except (OSError, ValueError, IndexError):
        return None
