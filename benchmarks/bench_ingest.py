"""Bulk ingest benchmark: synthetic NDJSON -> facts store, with 1 and 2 worker processes.

Why: issue #4 asks for at least 100,000 resources/s on the 2-core development machine, in
bounded memory. A population of each size is written with ``synth.population.write_population``
(the code behind ``vejviser synth``, noise included) into a temporary directory; each ingest runs
in a fresh child process (``--child``) into a new store, so every run pays for process start-up,
the pool, the SQL step and the atomic swap, and its peak memory is its own. Several sizes,
because start-up and the SQL step's fixed costs weigh less the more there is to read. Reported
per size and worker count: wall-clock resources/s (median of the runs), CPU seconds (main process
+ workers), the time per step, and peak RSS of the main process and of the largest worker.

The machine is shared with other engineers' jobs, so the load average before and after is part
of the result, and so are resources per CPU-second (what the code does with the CPU it gets).

The build is part of the result too: the installed one runs the normaliser compiled by mypyc
(setup.py); ``--builds compiled,pure`` adds runs of the same source as pure Python
(``VEJVISER_PURE_PYTHON=1``), interleaved, to show what the compilation gives.

Run: ``.venv/bin/python -m benchmarks.bench_ingest`` (``--patients 20000,100000`` the sizes,
``--runs N``, ``--workers 1,2``, ``--builds compiled,pure``, ``--quick`` for a small smoke run
that does not rewrite docs/benchmarks.md).
The "Ingest" section of docs/benchmarks.md is rewritten between markers.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):  # run as ``python benchmarks/bench_ingest.py``
    sys.path.insert(0, str(ROOT))

from benchmarks import machine as host  # noqa: E402
from fhir_adapter.compiled import PURE_PYTHON  # noqa: E402

BEGIN = "<!-- bench_ingest:begin -->"
END = "<!-- bench_ingest:end -->"
GOAL = 100_000  # resources/s
AS_OF = date(2026, 10, 1)


@dataclass(frozen=True, slots=True)
class Run:
    patients: int  # the population's size, as asked of the generator
    megabytes: float  # its NDJSON
    workers: int
    build: str  # "compiled" (mypyc) or "pure" (Python), as the child process reported it
    lines: int
    seconds: float
    cpu_seconds: float
    main_rss_mb: float
    worker_rss_mb: float
    timings: dict[str, float]

    @property
    def rate(self) -> float:
        return self.lines / self.seconds

    @property
    def cpu_rate(self) -> float:
        return self.lines / self.cpu_seconds


def child(source: Path, store: Path, workers: int, chunk_mb: int) -> None:
    """One ingest in this process; prints what the parent needs as one JSON line."""
    from engine.population.ingest import ingest
    from fhir_adapter.compiled import compiled_modules

    started = time.perf_counter()
    summary = ingest(source, store, workers=workers, chunk_bytes=chunk_mb << 20)
    seconds = time.perf_counter() - started
    me = resource.getrusage(resource.RUSAGE_SELF)  # the workers are the forkserver's children
    print(
        json.dumps(
            {
                "lines": summary.lines,
                "seconds": seconds,
                "cpu": me.ru_utime + me.ru_stime + summary.worker_cpu_seconds,
                "main_rss_mb": me.ru_maxrss / 1024,
                "worker_rss_mb": summary.worker_peak_mb,
                "timings": dict(summary.timings),
                "patients": summary.patients,
                "quarantined": summary.quarantined,
                "build": "compiled" if compiled_modules() else "pure",
            }
        )
    )


def run_once(
    source: Path, scratch: Path, patients: int, workers: int, chunk_mb: int, build: str
) -> Run:
    store = scratch / f"store-{workers}"
    shutil.rmtree(store, ignore_errors=True)
    command = [
        sys.executable,
        "-m",
        "benchmarks.bench_ingest",
        "--child",
        str(source),
        str(store),
        str(workers),
        str(chunk_mb),
    ]
    env = {**os.environ, PURE_PYTHON: "1" if build == "pure" else "0"}
    output = subprocess.run(
        command, cwd=ROOT, env=env, check=True, capture_output=True, text=True
    ).stdout
    data = json.loads(output.strip().splitlines()[-1])
    shutil.rmtree(store, ignore_errors=True)
    return Run(
        patients,
        sum(p.stat().st_size for p in source.glob("*.ndjson")) / 1e6,
        workers,
        data["build"],
        data["lines"],
        data["seconds"],
        data["cpu"],
        data["main_rss_mb"],
        data["worker_rss_mb"],
        data["timings"],
    )


def machine(load_before: float, load_after: float) -> str:
    return (
        f"{host.machine(memory=True, load=False)}; "
        f"load average {load_before:.2f} before, {load_after:.2f} after"
    )


def render(runs: Sequence[Run], seed: int, command: str, machine_info: str, chunk_mb: int) -> str:
    lines = [
        BEGIN,
        "## Ingest",
        "",
        "A synthetic population (`synth.population.write_population`, noise included) as NDJSON, "
        "through `engine.population.ingest.ingest` into a new facts store: reference resources, "
        "parse + normalise in worker processes (read), the SQL step over the part files and the "
        "Parquet writing (resolve), the atomic swap. Each run is a fresh child process. "
        "Resources/s = NDJSON lines / wall-clock seconds; CPU s counts the main process and the "
        "chunks its workers read (each worker reports its own CPU time and peak, since workers "
        "are started by a forkserver, not by the main process); RSS is the peak of the main "
        "process and of the largest worker. This section "
        "is written by `benchmarks/bench_ingest.py`; change the script, not the text.",
        "",
        f"- Date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        f"- Machine: {machine_info}",
        f"- Data: synthetic populations, seed {seed}",
        f"- Chunk: {chunk_mb} MB; command: `{command}`",
        "",
        "| patients | NDJSON lines | MB | build | workers | runs | median s "
        "| resources/s (median) "
        "| best resources/s | CPU s | resources per CPU-s | reference / read / resolve s "
        "| main RSS MB | worker RSS MB |",
        "|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|",
    ]
    best: dict[tuple[str, int], float] = {}  # (build, patients) -> best median over workers
    for patients, build, workers in sorted({(r.patients, r.build, r.workers) for r in runs}):
        mine = [r for r in runs if (r.patients, r.build, r.workers) == (patients, build, workers)]
        rate = statistics.median(r.rate for r in mine)
        best[build, patients] = max(best.get((build, patients), 0.0), rate)
        steps = " / ".join(
            f"{statistics.median(r.timings.get(step, 0) for r in mine):.1f}"
            for step in ("reference", "read", "resolve")
        )
        lines.append(
            f"| {patients:,} | {mine[0].lines:,} | {mine[0].megabytes:,.0f} | {build} | {workers} | "
            f"{len(mine)} | {statistics.median(r.seconds for r in mine):.1f} | {rate:,.0f} | "
            f"{max(r.rate for r in mine):,.0f} | "
            f"{statistics.median(r.cpu_seconds for r in mine):.1f} | "
            f"{statistics.median(r.cpu_rate for r in mine):,.0f} | {steps} | "
            f"{max(r.main_rss_mb for r in mine):.0f} | {max(r.worker_rss_mb for r in mine):.0f} |"
        )
    verdicts = "; ".join(
        f"{'met' if rate >= GOAL else '**not met**'} at {patients:,} patients, {build} "
        f"(best median {rate:,.0f} resources/s)"
        for (build, patients), rate in sorted(best.items())
    )
    lines += ["", f"Goal: at least {GOAL:,} resources/s on this machine: {verdicts}.", END]
    return "\n".join(lines) + "\n"


def population(source: Path, patients: int, seed: int) -> None:
    """Write the synthetic population unless ``source`` holds it from an earlier run."""
    if (source / "Patient.ndjson").exists():
        return
    from synth.population import write_population

    practices = max(1, patients // 1_600)
    summary = write_population(source, patients, practices, max(1, practices // 20), seed, AS_OF)
    print(f"wrote {summary.resources:,} lines in {summary.seconds:.1f} s", flush=True)


def write_section(path: Path, section: str) -> None:
    """Replace this benchmark's section between its markers; keep the rest of the file."""
    host.write_section(path, section, BEGIN, END)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--child"]:
        child(Path(argv[1]), Path(argv[2]), int(argv[3]), int(argv[4]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--patients", default="20000,100000", help="population sizes, comma-separated"
    )
    parser.add_argument("--runs", type=int, default=3, help="runs per worker count (median)")
    parser.add_argument("--workers", default="1,2", help="worker counts, comma-separated")
    parser.add_argument(
        "--builds",
        default="compiled",
        help="compiled (the installed build) and/or pure (the same source as Python)",
    )
    parser.add_argument("--chunk-mb", type=int, default=8)
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument(
        "--data", type=Path, help="reuse (or keep) the populations here, one folder per size"
    )
    parser.add_argument("--quick", action="store_true", help="2,000 patients, 1 run, no docs")
    parser.add_argument("--docs", type=Path, default=host.DOCS)
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args(argv)
    sizes = [2_000] if args.quick else [int(n) for n in args.patients.split(",")]
    runs = 1 if args.quick else args.runs
    counts = [int(w) for w in args.workers.split(",")]
    builds = args.builds.split(",")
    if not set(builds) <= {"compiled", "pure"}:
        parser.error(f"--builds: compiled and/or pure, not {args.builds!r}")
    load_before = os.getloadavg()[0]
    results: list[Run] = []
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as scratch:
        for patients in sizes:
            source = (args.data or Path(scratch)) / f"pop-{patients}"
            population(source, patients, args.seed)
            for repetition in range(runs):  # interleaved: the same machine state for each
                for build, workers in [(b, w) for b in builds for w in counts]:
                    result = run_once(
                        source, Path(scratch), patients, workers, args.chunk_mb, build
                    )
                    results.append(result)
                    print(
                        f"{patients:,} patients, run {repetition + 1}, {result.build}, "
                        f"{workers} worker(s): "
                        f"{result.lines:,} lines in {result.seconds:.1f} s = "
                        f"{result.rate:,.0f}/s; CPU {result.cpu_seconds:.1f} s; steps "
                        f"{result.timings}; RSS main {result.main_rss_mb:.0f} MB, worker "
                        f"{result.worker_rss_mb:.0f} MB; load {os.getloadavg()[0]:.2f}",
                        flush=True,
                    )
    command = " ".join([".venv/bin/python", "-m", "benchmarks.bench_ingest", *argv])
    section = render(
        results, args.seed, command, machine(load_before, os.getloadavg()[0]), args.chunk_mb
    )
    print(section)
    if args.quick or args.no_write:
        print("(docs not updated)")
    else:
        write_section(args.docs, section)
        print(f"wrote {args.docs}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
