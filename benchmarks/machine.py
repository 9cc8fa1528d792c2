"""What every benchmark says about where it ran, and how it writes its section of the docs.

Shared by bench_patient, bench_cds_hooks and bench_sweep: the machine is a small shared VM, so
each report names the cores, CPU, Python, load average and code version, to compare runs and
judge noise.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs" / "benchmarks.md"


def cores() -> int:
    """The cores this process may use (as nproc counts them)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def load_average() -> float | None:
    """The 1-minute load average, None where the OS has none."""
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else None


def memory_gb() -> float | None:
    """Total memory in GB (from /proc/meminfo), None if unknown."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 1024 / 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def machine(memory: bool = False, load: bool = True) -> str:
    """nproc, CPU model, (memory,) Python version and (the load now): enough to compare runs
    and judge noise."""
    now = load_average() if load else None
    at_start = f", load average {now:.2f} at the start" if now is not None else ""
    total = memory_gb() if memory else None
    ram = f", {total:.0f} GB memory" if total is not None else ""
    return (
        f"{cores()} cores (nproc), {cpu_model()}{ram}, Python {platform.python_version()}{at_start}"
    )


def code_version() -> str:
    """The commit measured, and whether the working tree differed from it (then the numbers
    belong to uncommitted code)."""

    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False)
        return done.stdout.strip() if done.returncode == 0 else ""

    commit = git("rev-parse", "--short", "HEAD")
    if not commit:
        return "unknown (not a git checkout)"
    dirty = git("status", "--porcelain")
    return f"commit {commit}" + (" with uncommitted changes" if dirty else "")


def write_section(path: Path, section: str, begin: str, end: str) -> None:
    """Replace the section between ``begin`` and ``end``; keep the rest of the file."""
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        tail = rest.split(end, 1)[1].lstrip("\n")
        text = head + section + ("\n" + tail if tail else "")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def relative(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def command(module: str, argv: Sequence[str]) -> str:
    """How the benchmark was started, with the interpreter relative to the repository."""
    python = Path(sys.executable)
    try:
        shown = str(python.relative_to(ROOT))
    except ValueError:
        shown = python.name
    return " ".join([shown, "-m", module, *argv])
