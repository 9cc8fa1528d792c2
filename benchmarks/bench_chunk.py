"""Instructions an ingest worker executes per NDJSON line, counted by valgrind's callgrind.

Why: this VM's speed moves by a third within the hour, so two versions of the normaliser
compared by wall-clock or CPU seconds need many interleaved runs and still disagree by more
than most changes are worth. The number of instructions a process executes does not depend on
the VM's speed: callgrind counts the same work the same way every run (with the hash seed
fixed), so a change of 1 % is visible in one run. Instructions are not time (a cache miss costs
more than an addition), so this complements bench_ingest, which measures the time.

What is counted: a child process reads the first chunk of every NDJSON file of a synthetic
population (``synth``, noise included) with ``engine.population.chunks.read_chunk``, which is
all a worker does (parse, normalise, rows, Parquet part files); the same child reading no chunk
gives the count of start-up, which is subtracted. Per build: ``compiled`` (the installed mypyc
build) and ``pure`` (the same source as Python, ``VEJVISER_PURE_PYTHON=1``).

Run: ``.venv/bin/python -m benchmarks.bench_chunk`` (``--patients N`` the population,
``--builds compiled,pure``, ``--data DIR`` to keep the population, ``--no-write`` to print
only). Needs valgrind (``apt install valgrind``); about a minute per build. The section
"Ingest: instructions per line" of docs/benchmarks.md is rewritten between markers.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks import machine as host
from benchmarks.bench_ingest import population
from fhir_adapter.compiled import PURE_PYTHON

BEGIN = "<!-- bench_chunk:begin -->"
END = "<!-- bench_chunk:end -->"
CHUNK_MB = 8  # the ingest's default chunk
_COLLECTED = re.compile(r"^==\d+== Collected : (\d+)$", re.MULTILINE)


@dataclass(frozen=True, slots=True)
class Count:
    build: str  # as the child reported it: "compiled" or "pure"
    lines: int  # NDJSON lines in the chunks read
    chunks: dict[str, int]  # file name -> lines of its first chunk
    instructions: int  # of reading them, start-up subtracted

    @property
    def per_line(self) -> float:
        return self.instructions / self.lines


def child(source: Path, read: bool) -> None:
    """Read the first chunk of each file (or, for the start-up count, set up the same and read
    none); print what was read as one JSON line."""
    from engine.population.chunks import PART_SCHEMAS, init_worker, read_chunk, tasks_of
    from engine.population.ingest import ndjson_files
    from fhir_adapter.compiled import compiled_modules

    with tempfile.TemporaryDirectory(prefix="bench-chunk-") as scratch:
        parts = Path(scratch)
        for table in PART_SCHEMAS:
            (parts / table).mkdir()
        files = ndjson_files(source)
        tasks = tasks_of(files, CHUNK_MB << 20, parts)
        first = {t.file: t for t in reversed(tasks)}  # the first task of each file
        init_worker({}, {})
        chunks = {}
        for number, task in sorted(first.items()):
            lines = read_chunk(task).lines if read else 0
            chunks[files[number].name] = lines
    build = "compiled" if compiled_modules() else "pure"
    print(json.dumps({"build": build, "chunks": chunks}))


def collected(valgrind_output: str) -> int:
    """The instruction count callgrind prints at exit."""
    found = _COLLECTED.search(valgrind_output)
    if found is None:
        raise RuntimeError(f"no instruction count in valgrind's output:\n{valgrind_output[-2000:]}")
    return int(found.group(1))


def counted(source: Path, build: str, read: bool) -> tuple[int, dict[str, Any]]:
    """(instructions, the child's report) of one child under callgrind."""
    with tempfile.TemporaryDirectory(prefix="bench-chunk-cg-") as scratch:
        done = subprocess.run(
            [
                "valgrind",
                "--tool=callgrind",
                f"--callgrind-out-file={Path(scratch) / 'callgrind.out'}",
                sys.executable,
                "-m",
                "benchmarks.bench_chunk",
                "--child",
                str(source),
                "read" if read else "start-up",
            ],
            cwd=host.ROOT,
            env={**os.environ, "PYTHONHASHSEED": "0", PURE_PYTHON: "1" if build == "pure" else "0"},
            capture_output=True,
            text=True,
            check=True,
        )
    return collected(done.stderr), json.loads(done.stdout.strip().splitlines()[-1])


def measure(source: Path, build: str) -> Count:
    base, _ = counted(source, build, read=False)
    total, report = counted(source, build, read=True)
    chunks = report["chunks"]
    return Count(report["build"], sum(chunks.values()), chunks, total - base)


def render(counts: Sequence[Count], patients: int, seed: int, command: str) -> str:
    chunks = counts[0].chunks
    lines = [
        BEGIN,
        "## Ingest: instructions per line",
        "",
        "Instructions (valgrind's callgrind) that an ingest worker executes to read the first "
        f"{CHUNK_MB} MB chunk of every NDJSON file of a synthetic population "
        "(`engine.population.chunks.read_chunk`: parse, normalise, rows, Parquet part files), "
        "less those of the same process reading none. Unlike time, the count does not move with "
        "the VM's speed, so versions of the normaliser compare in one run; it is not time (a "
        "cache miss costs more than an addition). This section is written by "
        "`benchmarks/bench_chunk.py`; change the script, not the text.",
        "",
        f"- Date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        f"- Machine: {host.machine()}",
        f"- Code: {host.code_version()}",
        f"- Data: {patients:,} synthetic patients, seed {seed}; chunks read: "
        + ", ".join(f"{name} {n:,} lines" for name, n in chunks.items()),
        f"- Command: `{command}`",
        "",
        "| build | lines | instructions (millions) | instructions per line |",
        "|---|---:|---:|---:|",
    ]
    lines += [
        f"| {c.build} | {c.lines:,} | {c.instructions / 1e6:,.0f} | {c.per_line:,.0f} |"
        for c in counts
    ]
    return "\n".join([*lines, END]) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--child"]:
        child(Path(argv[1]), argv[2] == "read")
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=20_000)
    parser.add_argument("--builds", default="compiled,pure", help="compiled and/or pure")
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--data", type=Path, help="reuse (or keep) the population here")
    parser.add_argument("--docs", type=Path, default=host.DOCS)
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args(argv)
    builds = args.builds.split(",")
    if not set(builds) <= {"compiled", "pure"}:
        parser.error(f"--builds: compiled and/or pure, not {args.builds!r}")
    if shutil.which("valgrind") is None:
        parser.error("valgrind is not installed (apt install valgrind)")
    with tempfile.TemporaryDirectory(prefix="bench-chunk-data-") as scratch:
        source = (args.data or Path(scratch)) / f"pop-{args.patients}"
        population(source, args.patients, args.seed)
        counts = []
        for build in builds:
            count = measure(source, build)
            print(f"{count.build}: {count.instructions:,} instructions for {count.lines:,} lines")
            counts.append(count)
    section = render(counts, args.patients, args.seed, host.command("benchmarks.bench_chunk", argv))
    print(section)
    if args.no_write:
        print("(docs not updated)")
    else:
        host.write_section(args.docs, section, BEGIN, END)
        print(f"wrote {args.docs}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
