"""Population sweep benchmark: wall time and peak memory of a sweep of every guideline.

What: for each population size, a whole ``run_sweep`` on DuckDB (every published file) and, for
the engine comparison, the SQL steps alone on DuckDB and on Spark local. Each run is a child
process, so its peak memory (``ru_maxrss`` from ``wait4``) is that run's alone; its wall time is
split into load / SQL / outputs with the run manifest's timings.

Stores: a 100,000-patient synthetic population (``vejviser synth`` + ``vejviser ingest``, seed
2026, 30 practices in 3 clusters) is built once and cached in ``.bench-cache/``. Larger stores are
tiled copies of it: every table copied N times by DuckDB (``COPY ... TO parquet``, streaming),
patient and resource ids suffixed per copy and practices and clusters renumbered per copy, so
practices keep their size (about 3,300 patients, as in Danish general practice) and there are N
times as many. A tiled population repeats the same patients; the SQL does not know that.

Run: ``.venv/bin/python -m benchmarks.bench_sweep [--sizes 100000,1000000,5500000]
[--engines duckdb,spark] [--repeats 3]``; the section between the markers in
docs/benchmarks.md is rewritten (``--no-write`` prints only).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import machine as host  # noqa: E402
from engine.population.ingest import STORE_FORMAT  # noqa: E402

BEGIN = "<!-- bench_sweep:begin -->"
END = "<!-- bench_sweep:end -->"
CACHE = ROOT / ".bench-cache" / "sweep"
BASE_SIZE = 100_000
PRACTICES, CLUSTERS, SEED = 30, 3, 2026
AS_OF = dt.date(2026, 10, 1)
SIZES = (100_000, 1_000_000, 5_500_000)
GOAL_SIZE, GOAL_SECONDS, GOAL_GB = 5_500_000, 300.0, 8.0
MEMORY_LIMIT = "6GB"
THREADS = 2
SPARK_DRIVER_MEMORY = "4g"
TABLES = ("patients", "observations", "medications", "conditions", "goals", "codes")


# -- stores --------------------------------------------------------------------------------------


def vejviser(*args: str) -> None:
    subprocess.run([str(Path(sys.executable).parent / "vejviser"), *args], check=True)


def base_store(cache: Path = CACHE) -> Path:
    """The 100,000-patient store, built once (synth + ingest, a few minutes)."""
    store = cache / f"store-{BASE_SIZE}"
    if _current(store):
        return store
    shutil.rmtree(store, ignore_errors=True)  # of an older store format: ingested again
    population = cache / f"population-{BASE_SIZE}"
    if not (population / "Patient.ndjson").is_file():
        vejviser(
            "synth",
            *("--patients", str(BASE_SIZE), "--practices", str(PRACTICES)),
            *("--clusters", str(CLUSTERS), "--seed", str(SEED), "--out", str(population)),
        )
    vejviser("ingest", str(population), "--store", str(store))
    return store


def _current(store: Path) -> bool:
    """A cached store written in this version's store format."""
    try:
        manifest = json.loads((store / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return manifest.get("format") == STORE_FORMAT


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _suffixed(column: str) -> str:
    """Copy 0 keeps the id; copy c gets ``-c<c>``."""
    return f"CASE WHEN c = 0 THEN {column} ELSE {column} || '-c' || c END"


def tiled_store(base: Path, size: int, cache: Path = CACHE) -> Path:
    """``size // 100,000`` copies of the base store, streamed by DuckDB (see the module doc)."""
    import duckdb

    if size == BASE_SIZE:
        return base
    manifest = json.loads((base / "manifest.json").read_text(encoding="utf-8"))
    base_patients = int(manifest["rows"]["patients"])
    copies, rest = divmod(size, base_patients)
    if rest or copies < 1:
        raise SystemExit(f"--sizes: {size} is not a multiple of the base store's {base_patients}")
    store = cache / f"store-{size}"
    if _current(store):
        return store
    shutil.rmtree(store, ignore_errors=True)
    partial = cache / f".partial-store-{size}"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    with duckdb.connect() as con:
        con.execute(f"SET memory_limit = '{MEMORY_LIMIT}'")
        con.execute("SET preserve_insertion_order = false")
        con.execute("SET enable_progress_bar = false")
        con.execute(f"SET temp_directory = {_quote(str(partial / '.tmp'))}")
        for name in TABLES:
            source = _quote(str(base / f"{name}.parquet"))
            target = _quote(str(partial / f"{name}.parquet"))
            if name == "codes":
                query = f"SELECT * FROM read_parquet({source})"
            else:
                replace = [f"{_suffixed('patient')} AS patient"]
                if name == "patients":
                    replace.append(f"{_suffixed('practice')} AS practice")
                else:
                    replace.append(f"{_suffixed('resource')} AS resource")
                query = (
                    f"SELECT * REPLACE ({', '.join(replace)}) FROM read_parquet({source}) "
                    f"CROSS JOIN (SELECT range AS c FROM range({copies}))"
                )
                query = f"SELECT * EXCLUDE (c) FROM ({query})"
            con.execute(f"COPY ({query}) TO {target} (FORMAT PARQUET, COMPRESSION ZSTD)")
    clusters = {
        (practice if c == 0 else f"{practice}-c{c}"): (cluster if c == 0 else f"{cluster}-c{c}")
        for c in range(copies)
        for practice, cluster in manifest.get("clusters", {}).items()
    }
    tiled = {
        "snapshot": f"{manifest['snapshot']}-x{copies}",
        "rows": {
            name: int(count) * (1 if name == "codes" else copies)
            for name, count in manifest["rows"].items()
        },
        "clusters": dict(sorted(clusters.items())),
        "format": STORE_FORMAT,
        "tiled_from": str(base),
        "copies": copies,
    }
    (partial / "manifest.json").write_text(json.dumps(tiled, indent=2) + "\n", encoding="utf-8")
    shutil.rmtree(partial / ".tmp", ignore_errors=True)
    partial.rename(store)
    return store


# -- one measured run (a child process) ----------------------------------------------------------


def child_duckdb(
    store: Path, out: Path, mode: str, memory_limit: str = MEMORY_LIMIT
) -> dict[str, Any]:
    """mode ``full``: load + run_sweep (every file); ``sql``: load + the SQL steps only, every
    register's outcome rows materialised (for the engine comparison)."""
    import duckdb

    from engine.population.duckdb_engine import configure, sweep_tables
    from engine.population.run import run_sweep
    from engine.population.sql import table_name
    from engine.population.store import clusters_of, load_store
    from rules.guideline_set import load_guidelines

    guidelines = load_guidelines(ROOT / "guidelines")
    result: dict[str, Any] = {"memory_limit": memory_limit}
    with (
        tempfile.TemporaryDirectory(prefix=".duckdb-", dir=out) as spill,
        duckdb.connect(str(Path(spill) / "sweep.duckdb")) as con,  # evictable tables
    ):
        configure(con, memory_limit, spill, THREADS)
        started = time.perf_counter()
        snapshot = load_store(con, store, guidelines)
        result["load"] = time.perf_counter() - started
        if mode == "full":
            manifest = run_sweep(
                con,
                guidelines,
                [AS_OF],
                out / "runs",
                clusters_of(store),
                snapshot=snapshot,
            )
            result["timings"] = {k.split("/", 1)[1]: v for k, v in manifest.timings.items()}
            result["rows"] = {k.split("/", 1)[1]: v for k, v in manifest.rows.items()}
        else:
            started = time.perf_counter()
            rendered = sweep_tables(con, guidelines, AS_OF)
            rows = 0
            for index, _ in rendered.compiled:
                name = table_name(index, "outcomes")
                con.execute(f"CREATE OR REPLACE TABLE m_{name} AS SELECT * FROM {name}")
                rows += con.execute(f"SELECT count(*) FROM m_{name}").fetchall()[0][0]
            result["timings"] = {"sql": time.perf_counter() - started}
            result["rows"] = {"outcomes": rows}
    return result


def child_spark(store: Path, out: Path) -> dict[str, Any]:
    """Spark local[2]: the store's Parquet read and cached, then the SQL steps as
    ``vejviser sweep --engine spark`` runs them (the trees rendered for Spark, each result through
    Parquet into DuckDB, where the file writers read it), every register's outcome rows computed."""
    import duckdb

    from engine.population import spark_engine
    from engine.population.sql import table_name
    from rules.guideline_set import load_guidelines

    guidelines = load_guidelines(ROOT / "guidelines")
    spark = spark_engine.local_session("bench-sweep", out, SPARK_DRIVER_MEMORY)
    result: dict[str, Any] = {}
    try:
        started = time.perf_counter()
        spark_engine.load_store(spark, store, guidelines)
        for name in (*TABLES, "valueset_codes"):
            spark.table(name).count()  # the cached views filled now, not in the first step
        result["load"] = time.perf_counter() - started
        started = time.perf_counter()
        with duckdb.connect() as con:  # where the product path puts Spark's results
            rendered = spark_engine.sweep_tables(spark, con, guidelines, AS_OF, out)
            rows = 0
            for index, _ in rendered.compiled:  # tables already: Spark computed every row
                name = table_name(index, "outcomes")
                rows += con.execute(f"SELECT count(*) FROM {name}").fetchall()[0][0]
        result["timings"] = {"sql": time.perf_counter() - started}
        result["rows"] = {"outcomes": rows}
    finally:
        spark.stop()
    return result


@dataclass
class Run:
    size: int
    engine: str  # duckdb | spark
    mode: str  # full | sql
    wall: float
    peak_gb: float
    load_before: float | None
    load_after: float | None
    result: dict[str, Any] = field(default_factory=dict)
    error: str = ""
    measured: str = ""  # UTC minute the run ended
    code: str = ""  # the code version it ran

    def part(self, name: str) -> float | None:
        if name == "load":
            return self.result.get("load")
        timings = self.result.get("timings", {})
        if name == "sql":
            return timings.get("sql", timings.get("sweep"))
        if name == "outputs":  # the MeasureReports are written beside the lists since 2026-11-26
            beside = "measure_reports_wait" in timings
            last = "measure_reports_wait" if beside else "measure_reports"
            steps = ("outcomes", "indicators", "lists", last)
            return sum(timings.get(s, 0.0) for s in steps) if "outcomes" in timings else None
        return timings.get(name)


class TreeMemory(threading.Thread):
    """The largest summed resident set of a process and its descendants, sampled twice a second.

    Why besides ``wait4``: Spark's JVM is a grandchild that pyspark never waits for, so its
    memory is not in the child's ``ru_maxrss``."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.peak = 0  # bytes
        self._halt = threading.Event()

    def run(self) -> None:
        page = os.sysconf("SC_PAGE_SIZE")
        while not self._halt.wait(0.5):
            parents: dict[int, int] = {}
            rss: dict[int, int] = {}
            for entry in Path("/proc").iterdir():
                if not entry.name.isdigit():
                    continue
                try:
                    fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                parents[int(entry.name)] = int(fields[1])
                rss[int(entry.name)] = int(fields[21]) * page
            tree = {self.pid}
            grew = True
            while grew:
                found = {pid for pid, parent in parents.items() if parent in tree} - tree
                grew = bool(found)
                tree |= found
            self.peak = max(self.peak, sum(rss.get(pid, 0) for pid in tree))

    def stop(self) -> None:
        self._halt.set()
        self.join()


def measure(
    store: Path, size: int, engine: str, mode: str, work: Path, memory_limit: str = MEMORY_LIMIT
) -> Run:
    """One run in a child process; wall time from the parent, peak RSS from wait4."""
    out = Path(tempfile.mkdtemp(prefix=f"run-{size}-{engine}-{mode}-", dir=work))
    result_file = out / "result.json"
    command = [
        sys.executable,
        "-m",
        "benchmarks.bench_sweep",
        "--child",
        f"{engine}:{mode}",
        "--store",
        str(store),
        "--out",
        str(out),
        "--result",
        str(result_file),
        "--memory-limit",
        memory_limit,
    ]
    load_before = host.load_average()
    started = time.perf_counter()
    child = subprocess.Popen(command, cwd=ROOT)
    sampler = TreeMemory(child.pid)
    sampler.start()
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - started
    sampler.stop()
    child.returncode = os.waitstatus_to_exitcode(status)
    peak = max(usage.ru_maxrss * 1024, sampler.peak) / 1024**3
    run = Run(size, engine, mode, wall, peak, load_before, None, {"memory_limit": memory_limit})
    run.measured = f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M}"
    run.code = host.code_version()
    run.load_after = host.load_average()
    if child.returncode == 0 and result_file.is_file():
        run.result = json.loads(result_file.read_text(encoding="utf-8"))
    else:
        run.error = f"exit code {child.returncode}"
    shutil.rmtree(out, ignore_errors=True)
    return run


# -- the report ----------------------------------------------------------------------------------


def _median(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def _span(moments: Sequence[str]) -> str:
    """First to last of the runs' times; empty if a run has none (records of older scripts)."""
    if not moments or not all(moments):
        return ""
    first, last = min(moments), max(moments)
    return first if first == last else f"{first} to {last}"


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f}"


def _load(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def render(
    runs: Sequence[Run], command: str, machine_info: str, code: str, notes: Sequence[str]
) -> str:
    lines = [
        BEGIN,
        "## Population sweep",
        "",
        "A whole sweep of every guideline in force on "
        f"{AS_OF.isoformat()} over a facts store (`run_sweep`: SQL steps, outcomes.parquet, "
        "indicators, every practice's list with its reasons rendered, MeasureReports), each run a "
        "child process; *peak* is its maximum resident set (`wait4`), *load* the 1-minute load "
        "average before and after it. DuckDB with "
        f"`memory_limit={MEMORY_LIMIT}`, {THREADS} threads, spilling to a temporary directory. "
        "The 100,000-patient store is synthetic (`vejviser synth`, seed "
        f"{SEED}, {PRACTICES} practices, {CLUSTERS} clusters) and ingested; **larger stores are "
        "tiled copies of it** (ids suffixed and practices and clusters renumbered per copy, so "
        "practices keep their size). *sql* rows compare the engines on the SQL steps alone "
        "(load the facts, then every register's outcome rows computed), Spark local[2] against DuckDB. This "
        "section is written by `benchmarks/bench_sweep.py`; change the script, not the text.",
        "",
        f"- Date: {_span([r.measured for r in runs]) or f'{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M}'} UTC",
        f"- Machine: {machine_info}",
        f"- Code: {', '.join(dict.fromkeys(r.code for r in runs if r.code)) or code}",
        f"- Command: `{command}`",
        *(f"- Note: {note}" for note in notes),
        "",
        "| patients | engine | run | runs | wall s (median) | load s | SQL s | outputs s "
        "| peak GB | load avg before → after | rows |",
        "|---:|---|---|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    groups: dict[tuple[int, str, str], list[Run]] = {}
    for run in runs:
        limit = run.result.get("memory_limit", MEMORY_LIMIT) if run.engine == "duckdb" else ""
        mode = run.mode if limit in ("", MEMORY_LIMIT) else f"{run.mode}, memory_limit {limit}"
        groups.setdefault((run.size, run.engine, mode), []).append(run)
    for (size, engine, mode), group in groups.items():
        ok = [r for r in group if not r.error]
        if not ok:
            failed = group[0]
            lines.append(
                f"| {size:,} | {engine} | {mode} | {len(group)} | {failed.wall:,.1f}, "
                f"**did not finish** ({failed.error}) | | | | {failed.peak_gb:.2f} "
                f"| {_load(failed.load_before)} → {_load(failed.load_after)} | |"
            )
            continue
        rows = ok[0].result.get("rows", {})
        shown = ", ".join(
            f"{k} {v:,}"
            for k, v in rows.items()
            if k in ("outcomes.parquet", "lists", "outcomes", "measure_reports")
        )
        loads = "; ".join(f"{_load(r.load_before)} → {_load(r.load_after)}" for r in ok)
        lines.append(
            f"| {size:,} | {engine} | {mode} | {len(ok)} | {_s(_median([r.wall for r in ok]))} "
            f"| {_s(_median([r.part('load') for r in ok]))} "
            f"| {_s(_median([r.part('sql') for r in ok]))} "
            f"| {_s(_median([r.part('outputs') for r in ok]))} "
            f"| {_median([r.peak_gb for r in ok]):.2f} | {loads} | {shown} |"
        )
    lines += ["", *_steps(runs), "", _verdict(runs), END]
    return "\n".join(lines) + "\n"


def _steps(runs: Sequence[Run]) -> list[str]:
    """Where the time of the biggest full run goes, step by step."""
    full = [r for r in runs if r.mode == "full" and not r.error]
    if not full:
        return []
    biggest = max(r.size for r in full)
    timings = [r.result.get("timings", {}) for r in full if r.size == biggest]
    steps = ["sweep", "outcomes", "indicators", "lists", "measure_reports"]
    if all("measure_reports_wait" in t for t in timings):
        steps += ["measure_reports_wait"]
    medians = {s: _median([t.get(s) for t in timings]) for s in steps}
    load = _median([r.part("load") for r in full if r.size == biggest])
    parts = [f"load {_s(load)}"] + [f"{s} {_s(medians[s])}" for s in steps]
    beside = (
        " (measure_reports: in a worker process beside the lists; measure_reports_wait: how "
        "long after the lists it finished)"
        if "measure_reports_wait" in steps
        else ""
    )
    return [
        f"Steps of the {biggest:,}-patient full run (median s): " + ", ".join(parts) + beside + "."
    ]


def _verdict(runs: Sequence[Run]) -> str:
    goal = [r for r in runs if r.size == GOAL_SIZE and r.mode == "full" and r.engine == "duckdb"]
    target = f"{GOAL_SIZE:,} patients, all guidelines, under {GOAL_SECONDS / 60:g} minutes and {GOAL_GB:g} GB"
    ok = [r for r in goal if not r.error]
    if not goal:
        return f"Goal ({target}): **not measured** in this run."
    if not ok:
        return f"Goal ({target}): **not met**: the run failed ({goal[0].error})."
    wall = _median([r.wall for r in ok]) or 0.0
    peak = _median([r.peak_gb for r in ok]) or 0.0
    met = wall < GOAL_SECONDS and peak < GOAL_GB
    verdict = "met" if met else "**not met**"
    time_part = "within" if wall < GOAL_SECONDS else f"{wall / GOAL_SECONDS:.1f} times"
    memory_part = "within" if peak < GOAL_GB else "over"
    return (
        f"Goal ({target}): {verdict} (wall {wall:,.0f} s, peak {peak:.2f} GB: time {time_part} "
        f"the budget, memory {memory_part} it)."
    )


# -- main ----------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default=",".join(str(s) for s in SIZES))
    parser.add_argument("--engines", default="duckdb,spark")
    parser.add_argument("--repeats", type=int, default=3, help="runs at 100,000 patients")
    parser.add_argument(
        "--big-repeats", type=int, default=1, help="runs at larger sizes (default 1)"
    )
    parser.add_argument(
        "--engine-repeats", type=int, default=1, help="runs of each engine's SQL steps"
    )
    parser.add_argument(
        "--spark-max", type=int, default=1_000_000, help="largest size run on Spark"
    )
    parser.add_argument("--cache", type=Path, default=CACHE, help="where stores are kept")
    parser.add_argument("--note", action="append", default=[], help="a line for the report")
    parser.add_argument("--docs", type=Path, default=host.DOCS, help="markdown file to update")
    parser.add_argument("--no-write", action="store_true", help="print only")
    parser.add_argument(
        "--record",
        type=Path,
        help="append each run to this JSON-lines file (default: .bench-cache/sweep/runs.jsonl)",
    )
    parser.add_argument(
        "--report",
        type=Path,
        nargs="+",
        help="run nothing: write the section from runs recorded before (--record files)",
    )
    parser.add_argument(
        "--memory-limit", default=MEMORY_LIMIT, help=f"DuckDB's (default {MEMORY_LIMIT})"
    )
    parser.add_argument("--command", help="the command to show (with --report: the runs')")
    parser.add_argument(
        "--measured", help="with --report: when runs that did not record it were measured"
    )
    parser.add_argument("--code", help="with --report: the code runs that did not record it ran")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--store", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    argv = list(sys.argv[1:] if argv is None else argv)

    if args.child:
        engine, mode = args.child.split(":")
        if engine == "spark":
            result = child_spark(args.store, args.out)
        else:
            result = child_duckdb(args.store, args.out, mode, args.memory_limit)
        args.result.write_text(json.dumps(result), encoding="utf-8")
        return 0

    machine_info = host.machine(memory=True, load=not args.report)
    code = host.code_version()
    if args.report:
        runs = [
            Run(**json.loads(line))
            for path in args.report
            for line in path.read_text(encoding="utf-8").splitlines()
            if line.strip()
        ]
        for run in runs:  # records written before runs recorded their time and code
            run.measured = run.measured or args.measured or ""
            run.code = run.code or args.code or ""
        return _publish(runs, argv, machine_info, code, args)
    sizes = [int(s) for s in args.sizes.split(",") if s]
    engines = [e for e in args.engines.split(",") if e]
    record = args.record or args.cache / "runs.jsonl"
    work = args.cache / "work"
    work.mkdir(parents=True, exist_ok=True)
    base = base_store(args.cache)
    runs: list[Run] = []
    for size in sizes:
        started = time.perf_counter()
        store = tiled_store(base, size, args.cache)
        print(f"store for {size:,} patients ready ({time.perf_counter() - started:.0f} s)")
        repeats = args.repeats if size <= BASE_SIZE else args.big_repeats
        plan = [("duckdb", "full")] * repeats
        if "spark" in engines and size <= args.spark_max:
            plan += [("duckdb", "sql"), ("spark", "sql")] * args.engine_repeats
        for engine, mode in plan:
            run = measure(store, size, engine, mode, work, args.memory_limit)
            runs.append(run)
            with record.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps(asdict(run)) + "\n")
            print(
                f"{size:>9,} {engine:6} {mode:4}: {run.wall:8.1f} s, peak {run.peak_gb:.2f} GB, "
                f"load {_load(run.load_before)} -> {_load(run.load_after)} {run.error}",
                flush=True,
            )
    return _publish(runs, argv, machine_info, code, args)


def _publish(
    runs: Sequence[Run],
    argv: Sequence[str],
    machine_info: str,
    code: str,
    args: argparse.Namespace,
) -> int:
    shown = []  # the command without its notes (they are in the section anyway)
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--note":
            skip = True
        else:
            shown.append(arg)
    command = args.command or host.command("benchmarks.bench_sweep", shown)
    section = render(runs, command, machine_info, code, args.note)
    print(section)
    if args.no_write:
        print(f"({host.relative(args.docs)} not updated)")
    else:
        host.write_section(args.docs, section, BEGIN, END)
        print(f"wrote {host.relative(args.docs)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
