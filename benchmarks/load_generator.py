"""A closed-loop HTTP load generator, run in its own process by ``bench_cds_hooks``.

Why a separate process: a client in the server's process (or its event loop) would share the
GIL and the loop with the code being measured, and the numbers would say more about the client
than about the service. Why closed loop: ``concurrency`` workers each send the next request as
soon as the previous answer is in, which is how a pool of EHR sessions behaves and gives latency
and throughput from the same run.

Each worker keeps its own connection (httpx2 pool of ``concurrency`` keep-alive connections), so
no time goes to TCP handshakes. Latency is measured per request on this side with
``time.perf_counter_ns`` from just before sending to the end of reading the body. Requests that
complete in the measurement window (after the warm-up) count; throughput is that count divided by
the window.

Every request gets a fresh ``hookInstance``: the body file holds :data:`PLACEHOLDER` where the
UUID goes, so the (possibly large) body is spliced, never re-serialised.

Run: ``python -m benchmarks.load_generator --url URL --body FILE --concurrency 8 --seconds 10``;
the result is one JSON object on stdout (see :func:`run`).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from time import perf_counter_ns

import httpx2
import orjson

_CLIENT, _MACHINE = "\0client", "\0machine"  # snapshot keys that no --watch name can be

PLACEHOLDER = "00000000-0000-4000-8000-000000000000"
"""Stands for the hookInstance in a body template; a valid UUID, so the template is a valid request."""


@dataclass(slots=True)
class LoadResult:
    """What one run measured; latencies (ns) of the requests completed inside the window."""

    latencies_ns: list[int] = field(default_factory=list)
    window_ns: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    completed: int = 0
    """Every request answered, warm-up included."""
    first_error: str | None = None
    """Status and start of the body of the first non-200 answer in the window."""
    failures: int = 0
    """Transport errors (connection refused, reset, timeout): no HTTP status at all."""
    client_cpu_seconds: float = 0.0
    watched_cpu_seconds: dict[str, float] = field(default_factory=dict)
    """CPU seconds (user + system) each watched process used during the window."""
    machine_cpu_seconds: float = 0.0
    """CPU seconds all processes on the machine used during the window (busy, not idle)."""


def split_template(body: bytes) -> tuple[bytes, bytes]:
    """The bytes before and after the hookInstance placeholder (which must occur exactly once)."""
    marker = PLACEHOLDER.encode()
    if body.count(marker) != 1:
        raise ValueError(f"the body must contain the placeholder {PLACEHOLDER} exactly once")
    head, tail = body.split(marker)
    return head, tail


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process from /proc (Linux); 0.0 when it cannot be read."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    # After the command name: state is field 3 of stat(5), utime 14 and stime 15.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_cpu_seconds() -> float:
    """Busy CPU time of the whole machine (all cores) from /proc/stat; 0.0 if unreadable.

    Why: the benchmark machine is shared, so what other processes used during a window says
    how far its numbers can be trusted.
    """
    try:
        first = Path("/proc/stat").read_text().splitlines()[0].split()
    except (OSError, IndexError):
        return 0.0
    ticks = [int(v) for v in first[1:9]]  # user nice system idle iowait irq softirq steal
    busy = sum(ticks) - ticks[3] - ticks[4]
    return busy / os.sysconf("SC_CLK_TCK")


async def run(
    url: str,
    body: bytes,
    concurrency: int,
    seconds: float,
    warmup: float,
    headers: dict[str, str] | None = None,
    watch: dict[str, int] | None = None,
) -> LoadResult:
    """Drive ``url`` with ``concurrency`` closed-loop workers: ``warmup`` s unmeasured, then
    ``seconds`` s measured. ``watch`` maps names to pids whose CPU time is taken over the window."""
    head, tail = split_template(body)
    watch = watch or {}
    result = LoadResult()
    limits = httpx2.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    send_headers = {"Content-Type": "application/json", **(headers or {})}
    start = perf_counter_ns()
    window_start = start + int(warmup * 1e9)
    window_end = window_start + int(seconds * 1e9)
    cpu: dict[str, dict[str, float]] = {}

    def cpu_snapshot() -> dict[str, float]:
        snapshot = {name: process_cpu_seconds(pid) for name, pid in watch.items()}
        snapshot[_CLIENT] = time.process_time()
        snapshot[_MACHINE] = machine_cpu_seconds()
        return snapshot

    async def snapshot_at(moment_ns: int, name: str) -> None:
        await asyncio.sleep(max(0.0, (moment_ns - perf_counter_ns()) / 1e9))
        cpu[name] = cpu_snapshot()

    async def worker(client: httpx2.AsyncClient) -> None:
        while perf_counter_ns() < window_end:
            content = head + str(uuid.uuid4()).encode() + tail
            sent = perf_counter_ns()
            try:
                response = await client.post(url, content=content, headers=send_headers)
                await response.aread()
            except httpx2.TransportError:
                done = perf_counter_ns()
                if window_start <= done <= window_end:
                    result.failures += 1
                continue
            done = perf_counter_ns()
            result.completed += 1
            if window_start <= done <= window_end:
                result.latencies_ns.append(done - sent)
                key = str(response.status_code)
                result.statuses[key] = result.statuses.get(key, 0) + 1
                if response.status_code != 200 and result.first_error is None:
                    result.first_error = f"HTTP {key}: {response.text[:300]}"

    async with httpx2.AsyncClient(limits=limits, timeout=60.0) as client:
        # CPU is read at the window's edges exactly, not when the last answer arrives: under
        # heavy load that can be long after the window closed.
        timers = [snapshot_at(window_start, "start"), snapshot_at(window_end, "end")]
        await asyncio.gather(*timers, *(worker(client) for _ in range(concurrency)))
    used = {name: cpu["end"][name] - cpu["start"][name] for name in cpu["end"]}
    result.client_cpu_seconds = used.pop(_CLIENT)
    result.machine_cpu_seconds = used.pop(_MACHINE)
    result.watched_cpu_seconds = used
    result.window_ns = window_end - window_start
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--body", type=Path, required=True, help="request body template file")
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=10.0, help="measured window")
    parser.add_argument("--warmup", type=float, default=2.0, help="unmeasured time before it")
    parser.add_argument(
        "--header", action="append", default=[], help="extra header 'Name: value' (repeatable)"
    )
    parser.add_argument(
        "--watch", action="append", default=[], help="NAME=PID whose CPU time to report"
    )
    args = parser.parse_args(argv)
    headers = dict(h.split(":", 1) for h in args.header)
    headers = {k.strip(): v.strip() for k, v in headers.items()}
    watch = {name: int(pid) for name, pid in (w.split("=", 1) for w in args.watch)}
    result = asyncio.run(
        run(
            args.url,
            args.body.read_bytes(),
            args.concurrency,
            args.seconds,
            args.warmup,
            headers,
            watch,
        )
    )
    sys.stdout.buffer.write(orjson.dumps(asdict(result)) + b"\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
