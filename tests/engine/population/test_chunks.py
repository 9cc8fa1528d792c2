"""A worker's chunk: cut at line ends, and a module light enough to start a worker quickly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from itertools import pairwise
from pathlib import Path

import pytest

from engine.population.chunks import tasks_of

REPOSITORY = Path(__file__).resolve().parents[3]


def test_chunks_end_at_line_ends_and_cover_every_byte(tmp_path: Path) -> None:
    first = tmp_path / "a.ndjson"
    first.write_bytes(b'{"a": 1}\n{"b": 22}\n{"c": 333}\n')
    second = tmp_path / "b.ndjson"
    second.write_bytes(b'{"d": 4}')  # no final line break
    tasks = tasks_of([first, second], 10, tmp_path)
    for number, path in enumerate([first, second]):
        data = path.read_bytes()
        ranges = [(t.start, t.end) for t in tasks if t.file == number]
        assert ranges[0][0] == 0 and ranges[-1][1] == len(data)
        assert all(end == start for (_, end), (start, _) in pairwise(ranges))
        assert all(data[end - 1 : end] == b"\n" for _, end in ranges[:-1])
    assert [t.chunk for t in tasks] == list(range(len(tasks)))


def test_a_worker_imports_neither_duckdb_nor_the_rule_compiler() -> None:
    # Each worker imports this module; with the ingest module's imports it took a second to
    # start (measured in docs/ingest.md), which made two workers barely faster than one.
    code = (
        "import sys, engine.population.chunks; "
        "print(sorted(m for m in ('duckdb', 'sqlglot', 'rules.compiler') if m in sys.modules))"
    )
    found = subprocess.run(
        [sys.executable, "-c", code], cwd=REPOSITORY, capture_output=True, text=True, check=True
    )
    assert found.stdout.strip() == "[]"


def test_a_worker_does_not_outlive_an_ingest_that_is_killed(tmp_path: Path) -> None:
    """kill -9 (or SIGTERM) of an ingest left its workers, and the forkserver beside them,
    running for minutes; a worker now watches the process that started it."""
    script = tmp_path / "killed.py"
    script.write_text(
        textwrap.dedent(
            """
            import multiprocessing, os, signal, sys
            from concurrent.futures import ProcessPoolExecutor
            from engine.population.chunks import init_worker

            if __name__ == "__main__":
                context = multiprocessing.get_context("forkserver")
                context.set_forkserver_preload(["engine.population.chunks"])
                pool = ProcessPoolExecutor(1, context, init_worker, ({}, {}))
                print(pool.submit(os.getpid).result(), flush=True)
                os.kill(os.getpid(), signal.SIGKILL)
            """
        )
    )
    printed = tmp_path / "worker.pid"
    with printed.open("w") as out:  # not a pipe: an orphan holding it would keep run() waiting
        done = subprocess.run(
            [sys.executable, str(script)], stdout=out, timeout=60, check=False, cwd=REPOSITORY
        )
    assert done.returncode == -signal.SIGKILL
    worker = int(printed.read_text())
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            os.kill(worker, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    os.kill(worker, signal.SIGKILL)
    pytest.fail(f"worker {worker} still ran 20 s after its ingest was killed")
