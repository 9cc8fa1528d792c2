"""CDS Hooks benchmark: patient-view over HTTP against a real ``vejviser serve`` process.

Why: the per-patient benchmark times the engine alone, but an EHR waits for the whole call:
HTTP parsing, JSON of a prefetch that may be hundreds of KB, validation, normalising,
evaluating, cards, the feedback store write and the response. The goals set in the issue are a
p99 under 20 ms at concurrency 1 for a 500-resource patient with full prefetch, and at least
300 requests/s on the benchmark machine's 2 cores.

How: ``vejviser serve --no-auth`` runs as a subprocess on a free loopback port (its feedback
database in a temporary directory); the load comes from :mod:`benchmarks.load_generator` in a
separate process, closed loop, with keep-alive connections and per-request latency taken on the
client side with ``perf_counter_ns``. Cases:

- full prefetch: a synthetic patient (``synth.patients.generate_patient``, seed 2021) of 50 and
  500 resources, every key of the service's discovery filled with the patient's own resources of
  the key's resource type (as ``tests/service/test_app.py`` does), at concurrency 1, 8 and 32;
- prefetch fetched from the FHIR server: no prefetch, ``fhirServer`` pointing at a local
  sekmet-fhir holding the same patients (``tests/support/sekmet.py``), at concurrency 1 and 8.
  sekmet serves ~54 requests/s behind one lock, and every call needs a read and a search per
  other discovery key, so this case measures sekmet more than Vejviser. Queries sekmet refuses
  are noted in the report (see :func:`fhir_cases`).

Each case runs for a fixed window after a warm-up. The load generator competes with the server
for the machine's 2 cores; its CPU use is reported next to the server's. Everything listens on
127.0.0.1 and every process started is stopped at the end.

With ``--profile`` (the default of a full run) the server runs once more, under ``cProfile``
(:mod:`benchmarks.profiled_serve`, switched on after a warm-up), while the 500-resource
full-prefetch case is sent at concurrency 1; the section lists where the server's time goes per
request (the thread that writes the feedback store is not profiled).

Run: ``.venv/bin/python -m benchmarks.bench_cds_hooks`` (``--quick`` for a smoke run that does
not rewrite docs/benchmarks.md). This benchmark owns the section of docs/benchmarks.md between
its markers.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import pstats
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):  # run as ``python benchmarks/bench_cds_hooks.py``
    sys.path.insert(0, str(ROOT))

import httpx2  # noqa: E402
import orjson  # noqa: E402

from benchmarks import machine as host  # noqa: E402
from benchmarks.load_generator import PLACEHOLDER  # noqa: E402
from benchmarks.machine import code_version, machine  # noqa: E402
from rules.effective import danish_today  # noqa: E402
from service.cds_hooks.discovery import PATIENT_TOKEN  # noqa: E402
from synth.patients import generate_patient  # noqa: E402

SIZES = (50, 500)
CONCURRENCY = (1, 8, 32)
FHIR_CONCURRENCY = (1, 8)
SEED = 2021  # as bench_patient: a diabetic with hypertension and IHD, most rules have work to do
SECONDS, WARMUP = 10.0, 2.0
QUICK_SECONDS, QUICK_WARMUP = 1.5, 0.5
PROFILE_SECONDS = 8.0
SERVICE_ID = "vejviser-patient-view"
HOOK = "patient-view"
GOAL_P99_MS = 20.0
GOAL_SIZE = 500
GOAL_RPS = 300.0
FULL = "full prefetch"
FETCHED = "FHIR server"
GUIDELINES = ROOT / "guidelines"
VEJVISER = Path(sys.executable).parent / "vejviser"
DOCS = ROOT / "docs" / "benchmarks.md"
BEGIN = "<!-- bench_cds_hooks:begin -->"
END = "<!-- bench_cds_hooks:end -->"
START_TIMEOUT = 30.0

Resource = dict[str, Any]


# --- request bodies -------------------------------------------------------------------------------


def patient_id_for(size: int) -> str:
    return f"bench-{size}"


def patient_resources(size: int, as_of: date) -> list[Resource]:
    """The benchmark patient of ``size`` resources (its Organization included)."""
    return generate_patient(random.Random(SEED), patient_id_for(size), size, as_of)


def own_resources(resources: Sequence[Resource], patient_id: str) -> list[Resource]:
    """The Patient and the resources whose subject or patient is that Patient: what an EHR's
    patient-compartment queries can return (the practice Organization is not among them)."""
    reference = f"Patient/{patient_id}"
    own = []
    for resource in resources:
        if resource.get("resourceType") == "Patient":
            if resource.get("id") == patient_id:
                own.append(resource)
            continue
        for name in ("subject", "patient"):
            ref = resource.get(name)
            if isinstance(ref, dict) and ref.get("reference") == reference:
                own.append(resource)
                break
    return own


def searchset(resources: Sequence[Resource]) -> Resource:
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": len(resources),
        "entry": [
            {"fullUrl": f"urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, _ref(r))}", "resource": r}
            for r in resources
        ],
    }


def _ref(resource: Resource) -> str:
    return f"{resource['resourceType']}/{resource['id']}"


def build_prefetch(
    keys: dict[str, str], resources: Sequence[Resource], patient_id: str
) -> dict[str, Resource]:
    """Every discovery key filled by resource type with the patient's own resources.

    Why by type and not by the queries' code and date filters: it is the most an EHR would
    send, so it bounds the cost from above, and it needs no FHIR search engine. A read key
    (``Patient/{{context.patientId}}``) gets the Patient itself. When several keys ask for the
    same type (the observation codes split over URLs of limited length), the first gets the
    resources and the others empty searchsets, so nothing is sent twice.
    """
    by_type: dict[str, list[Resource]] = {}
    for resource in own_resources(resources, patient_id):
        by_type.setdefault(resource["resourceType"], []).append(resource)
    prefetch: dict[str, Resource] = {}
    filled: set[str] = set()
    for key, query in keys.items():
        path = query.split("?", 1)[0]
        if "/" in path:  # a read: Type/{{context.patientId}}
            kind = path.split("/", 1)[0]
            prefetch[key] = by_type[kind][0]
            continue
        prefetch[key] = searchset([] if path in filled else by_type.get(path, []))
        filled.add(path)
    return prefetch


def request_body(
    patient_id: str,
    prefetch: dict[str, Resource] | None = None,
    fhir_server: str | None = None,
    hook_instance: str = PLACEHOLDER,
) -> bytes:
    """A patient-view request as JSON; ``hook_instance`` defaults to the load generator's
    placeholder, which it replaces with a fresh UUID per request."""
    body: dict[str, Any] = {
        "hook": HOOK,
        "hookInstance": hook_instance,
        "context": {"userId": "Practitioner/bench", "patientId": patient_id},
    }
    if fhir_server is not None:
        body["fhirServer"] = fhir_server
    if prefetch is not None:
        body["prefetch"] = prefetch
    return orjson.dumps(body)


# --- processes ------------------------------------------------------------------------------------


def free_port() -> int:
    """A TCP port nothing listens on right now (the OS picks it)."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class VejviserServer:
    """``vejviser serve --no-auth`` on 127.0.0.1, optionally under cProfile; stopped by
    :meth:`stop` (SIGINT, so uvicorn shuts down cleanly and cProfile writes its file)."""

    def __init__(self, workdir: Path, profile_to: Path | None = None) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.profile_to = profile_to
        self.log_path = workdir / f"vejviser-{self.port}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        config = self.workdir / "vejviser.yaml"
        database = self.workdir / f"feedback-{self.port}.sqlite"
        config.write_text(f"feedback_database: {orjson.dumps(str(database)).decode()}\n")
        serve = ["serve", "--no-auth", "--host", "127.0.0.1", "--port", str(self.port)]
        serve += ["--guidelines", str(GUIDELINES), "--config", str(config)]
        if self.profile_to is None:
            return [str(VEJVISER), *serve]
        return [sys.executable, "-m", "benchmarks.profiled_serve", str(self.profile_to), *serve]

    def start(self) -> None:
        # A developer's VEJVISER_* variables must not change what is measured.
        env = {k: v for k, v in os.environ.items() if not k.startswith("VEJVISER_")}
        if self.profile_to is not None:  # benchmarks.profiled_serve is not an installed package
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.command(),
                cwd=self.workdir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + START_TIMEOUT
        with httpx2.Client(timeout=1.0) as client:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise RuntimeError(f"vejviser exited during start-up:\n{self.log_tail()}")
                with contextlib.suppress(httpx2.TransportError):
                    if client.get(f"{self.base_url}/health").status_code == 200:
                        return
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"vejviser did not answer within {START_TIMEOUT} s:\n{self.log_tail()}")

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)

    def log_tail(self, lines: int = 30) -> str:
        if not self.log_path.exists():
            return "(no log)"
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


@contextlib.contextmanager
def running(server: VejviserServer) -> Iterator[VejviserServer]:
    """The server for the ``with`` block; if the block fails, its log goes to stderr (the log
    lives in a temporary directory that is about to be deleted)."""
    server.start()
    try:
        yield server
    except BaseException:
        print(f"--- vejviser log (tail) ---\n{server.log_tail()}", file=sys.stderr)
        raise
    finally:
        server.stop()


# --- measuring ------------------------------------------------------------------------------------


@dataclass(slots=True)
class Case:
    """One request the load generator repeats, and what a single call of it answered."""

    label: str
    resources: int
    body: bytes
    cards: int = 0
    check_error: str | None = None
    """Why the check call before the load failed (only allowed where errors are a finding)."""


@dataclass(slots=True)
class Measurement:
    """One case at one concurrency: the load generator's result, as parsed from its JSON."""

    case: Case
    concurrency: int
    latencies_ns: list[int]
    window_ns: int
    statuses: dict[str, int]
    failures: int = 0
    first_error: str | None = None
    completed: int = 0
    """Every request answered, warm-up included."""
    client_cpu_seconds: float = 0.0
    server_cpu_seconds: float = 0.0
    machine_cpu_seconds: float = 0.0

    @property
    def other_cpu_seconds(self) -> float:
        """CPU time used by neither the server nor the load generator (sekmet, other jobs)."""
        rest = self.machine_cpu_seconds - self.server_cpu_seconds - self.client_cpu_seconds
        return max(0.0, rest)

    @property
    def requests(self) -> int:
        return len(self.latencies_ns)

    @property
    def rate(self) -> float:
        return self.requests / (self.window_ns / 1e9) if self.window_ns else 0.0

    @property
    def errors(self) -> int:
        return self.failures + sum(n for s, n in self.statuses.items() if s != "200")


def percentile(ordered: Sequence[int], q: float) -> int:
    """Nearest-rank percentile of sorted samples (``q`` in 0..100)."""
    if not ordered:
        return 0
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def latency_ms(samples: Sequence[int]) -> dict[str, float]:
    """p50, p95, p99 and max in milliseconds."""
    ordered = sorted(samples)
    return {
        "p50": percentile(ordered, 50) / 1e6,
        "p95": percentile(ordered, 95) / 1e6,
        "p99": percentile(ordered, 99) / 1e6,
        "max": (ordered[-1] if ordered else 0) / 1e6,
    }


def call_once(base_url: str, body: bytes) -> int:
    """Send the case once and return its number of cards; fails loudly on anything but 200,
    so a broken prefetch is not benchmarked as a fast 4xx."""
    content = body.replace(PLACEHOLDER.encode(), str(uuid.uuid4()).encode())
    response = httpx2.post(
        f"{base_url}/cds-services/{SERVICE_ID}",
        content=content,
        headers={"Content-Type": "application/json"},
        timeout=30.0,
    )
    if response.status_code != 200:
        raise ServiceError(response.status_code, response.text[:500])
    return len(response.json()["cards"])


class ServiceError(RuntimeError):
    """The service answered a benchmark request with something other than 200."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(f"HTTP {status}: {detail}")
        self.status = status
        self.detail = detail


def run_load(
    server: VejviserServer,
    case: Case,
    concurrency: int,
    seconds: float,
    warmup: float,
    workdir: Path,
) -> Measurement:
    """Run :mod:`benchmarks.load_generator` in its own process against ``server``."""
    body_file = workdir / "body.json"
    body_file.write_bytes(case.body)
    command = [
        sys.executable,
        "-m",
        "benchmarks.load_generator",
        "--url",
        f"{server.base_url}/cds-services/{SERVICE_ID}",
        "--body",
        str(body_file),
        "--concurrency",
        str(concurrency),
        "--seconds",
        str(seconds),
        "--warmup",
        str(warmup),
        "--watch",
        f"server={server.pid}",
    ]
    done = subprocess.run(
        command, cwd=ROOT, capture_output=True, check=False, timeout=seconds + warmup + 120
    )
    if done.returncode != 0:
        raise RuntimeError(f"load generator failed:\n{done.stderr.decode(errors='replace')}")
    data = orjson.loads(done.stdout)
    return Measurement(
        case=case,
        concurrency=concurrency,
        latencies_ns=data["latencies_ns"],
        window_ns=data["window_ns"],
        statuses=data["statuses"],
        failures=data["failures"],
        first_error=data["first_error"],
        completed=data["completed"],
        client_cpu_seconds=data["client_cpu_seconds"],
        server_cpu_seconds=data["watched_cpu_seconds"].get("server", 0.0),
        machine_cpu_seconds=data["machine_cpu_seconds"],
    )


def discovery_keys(base_url: str) -> dict[str, str]:
    """The patient-view service's prefetch keys, as the running service advertises them."""
    services = httpx2.get(f"{base_url}/cds-services", timeout=10.0).json()["services"]
    return next(s for s in services if s["id"] == SERVICE_ID)["prefetch"]


def full_prefetch_cases(base_url: str, sizes: Sequence[int], as_of: date) -> list[Case]:
    keys = discovery_keys(base_url)
    cases = []
    for size in sizes:
        pid = patient_id_for(size)
        body = request_body(pid, build_prefetch(keys, patient_resources(size, as_of), pid))
        cases.append(Case(FULL, size, body))
    return cases


@contextlib.contextmanager
def fhir_server(workdir: Path, sizes: Sequence[int], as_of: date) -> Iterator[str | None]:
    """A sekmet-fhir holding the benchmark patients; yields its base URL (None if not installed)."""
    try:
        from tests.support.sekmet import SEKMET, SekmetServer
    except ImportError:
        yield None
        return
    if not SEKMET.exists():
        yield None
        return
    server = SekmetServer(workdir / "sekmet")
    server.workdir.mkdir(parents=True, exist_ok=True)
    server.start()
    try:
        unique: dict[str, Resource] = {}
        for size in sizes:  # the same seed makes the same practice: load it once
            unique.update({_ref(r): r for r in patient_resources(size, as_of)})
        server.load(list(unique.values()))  # PUT transaction, then ANALYZE
        yield server.base_url
    finally:
        server.stop()


def probe_fhir(fhir_base: str, keys: dict[str, str], patient_id: str) -> list[str]:
    """Notes on the FHIR server alone: each discovery query (and ``$everything``) sent once, as
    the service sends it (``Prefer: handling=strict``), with its status and time.

    Why: the FHIR server rows are dominated by the server, and a query it refuses (a young
    server lacks search parameters) changes what the service has to do.
    """
    headers = {"Accept": "application/fhir+json", "Prefer": "handling=strict"}
    queries = {key: query.replace(PATIENT_TOKEN, patient_id) for key, query in keys.items()}
    queries["$everything"] = f"Patient/{patient_id}/$everything"
    timings, refused = [], []
    with httpx2.Client(timeout=60.0, headers=headers) as client:
        for key, query in queries.items():
            started = time.perf_counter()
            status = client.get(f"{fhir_base}/{query}").status_code
            ms = (time.perf_counter() - started) * 1000
            timings.append(f"`{key}` {ms:,.0f} ms" + ("" if status == 200 else f" (HTTP {status})"))
            if status != 200:
                refused.append(f"`{keys.get(key, query)}`")
    notes = [f"sekmet-fhir alone, one request at a time, {patient_id}: " + ", ".join(timings) + "."]
    if refused:
        notes.append(
            f"sekmet-fhir refuses {', '.join(refused)} under `Prefer: handling=strict`; the "
            "FHIR server rows include whatever the service does instead."
        )
    return notes


def fhir_cases(vejviser_base: str, fhir_base: str, sizes: Sequence[int]) -> list[Case]:
    """Requests with ``fhirServer`` and no prefetch: the service fetches every key."""
    return [
        Case(FETCHED, size, request_body(patient_id_for(size), None, fhir_base)) for size in sizes
    ]


def measure(
    server: VejviserServer,
    cases: Sequence[Case],
    concurrencies: Sequence[int],
    seconds: float,
    warmup: float,
    workdir: Path,
    allow_errors: bool = False,
) -> list[Measurement]:
    """Each case at each concurrency. A case is first sent once: a failure there stops the
    benchmark (a fast 4xx must not pass for a fast service) unless ``allow_errors``, where
    failing calls are a result in themselves (the FHIR server case: timeouts of the budget)."""
    results = []
    for case in cases:
        try:
            case.cards = call_once(server.base_url, case.body)
        except ServiceError as exc:
            if not allow_errors:
                raise
            case.check_error = str(exc)
            print(f"{case.label} {case.resources}: {exc}", file=sys.stderr)
        for concurrency in concurrencies:
            result = run_load(server, case, concurrency, seconds, warmup, workdir)
            stats = latency_ms(result.latencies_ns)
            cpu = result.server_cpu_seconds * 1000 / max(result.requests, 1)
            print(
                f"{case.label:>14} {case.resources:>4} res c={concurrency:<2} "
                f"{result.rate:7.1f} req/s  p50 {stats['p50']:7.2f}  p99 {stats['p99']:7.2f} ms"
                f"  server CPU {cpu:6.2f} ms/req  errors {result.errors}",
                file=sys.stderr,
            )
            results.append(result)
    return results


# --- profiling ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ProfileRow:
    function: str
    calls: int
    own_ms: float
    """Own time per request (ms), under cProfile."""
    cumulative_ms: float
    share: float
    """Own time as a share of the server's busy (non-idle) profiled time."""


@dataclass(slots=True)
class Profile:
    requests: int
    busy_ms: float
    """Profiled busy time per request (ms): inflated by cProfile, compare shares, not ms."""
    by_own: list[ProfileRow]
    by_cumulative: list[ProfileRow]
    by_package: list[tuple[str, float, float]]
    """(package, own ms per request, share of busy time), largest first."""


def _idle(func: tuple[str, int, str]) -> bool:
    """The event loop waiting for the next request (``select.epoll.poll``): not work."""
    return func[0] == "~" and "select.epoll" in func[2]


def _describe(func: tuple[str, int, str]) -> str:
    filename, line, name = func
    if filename == "~":
        return name
    path = Path(filename)
    try:
        shown = str(path.relative_to(ROOT))
    except ValueError:
        parts = path.parts
        shown = (
            "/".join(parts[parts.index("site-packages") + 1 :])
            if "site-packages" in parts
            else path.name
        )
    return f"{shown}:{line}({name})"


def read_profile(path: Path, requests: int, top: int = 15) -> Profile:
    """Own-time and project-cumulative tables from a cProfile file, per request."""
    stats = pstats.Stats(str(path))
    raw: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    idle = sum(tt for func, (_, _, tt, _, _) in raw.items() if _idle(func))
    busy = max(stats.total_tt - idle, 1e-9)  # type: ignore[attr-defined]
    per = max(requests, 1)

    def row(func: Any, values: Any) -> ProfileRow:
        _, calls, tt, ct, _ = values
        return ProfileRow(_describe(func), calls, tt * 1000 / per, ct * 1000 / per, tt / busy)

    rows = [row(f, v) for f, v in raw.items() if not _idle(f)]
    by_own = sorted(rows, key=lambda r: r.own_ms, reverse=True)[:top]
    project = ("service/", "engine/", "fhir_adapter/", "rules/")
    ours = [r for r in rows if r.function.startswith(project)]
    by_cumulative = sorted(ours, key=lambda r: r.cumulative_ms, reverse=True)[:top]
    packages: dict[str, float] = {}
    for func, (_, _, tt, _, _) in raw.items():
        if not _idle(func):
            name = package_of(func)
            packages[name] = packages.get(name, 0.0) + tt
    by_package = sorted(
        ((name, tt * 1000 / per, tt / busy) for name, tt in packages.items()),
        key=lambda item: item[1],
        reverse=True,
    )
    return Profile(requests, busy * 1000 / per, by_own, by_cumulative, by_package[:top])


_BUILTIN_MODULE = re.compile(r"<(?:built-in method |method '\w+' of ')?([A-Za-z_][\w]*)[.']")


def package_of(func: tuple[str, int, str]) -> str:
    """Where a profiled function lives: a project package (``engine``), an installed package
    (``h11``), a standard-library module (``stdlib asyncio``) or a C built-in's module."""
    filename, _, name = func
    if filename == "~":
        found = _BUILTIN_MODULE.match(name)
        module = found.group(1) if found else "builtins"
        return "C built-ins" if module in {"builtins", "dict", "list", "str", "tuple"} else module
    path = Path(filename)
    parts = path.parts
    if "site-packages" in parts:
        return parts[parts.index("site-packages") + 1]
    try:
        return path.relative_to(ROOT).parts[0]
    except ValueError:
        pass
    stdlib = next((i for i, part in enumerate(parts) if part.startswith("python3")), None)
    if stdlib is not None and stdlib + 1 < len(parts):
        return f"stdlib {Path(parts[stdlib + 1]).stem}"
    return path.name


def profile_server(workdir: Path, size: int, seconds: float, as_of: date) -> Profile:
    """Profile the ``size``-resource full-prefetch case at concurrency 1 in a real server.

    The server runs under :mod:`benchmarks.profiled_serve`; the profiler is switched on after a
    warm-up and off after ``seconds``, so the figures cover exactly the requests counted here.
    Requests come from this process, one at a time over one keep-alive connection.
    """
    target = workdir / "server.prof"
    server = VejviserServer(workdir, profile_to=target)
    with running(server), httpx2.Client(timeout=30.0) as client:
        (case,) = full_prefetch_cases(server.base_url, [size], as_of)
        url = f"{server.base_url}/cds-services/{SERVICE_ID}"
        headers = {"Content-Type": "application/json"}

        def send() -> None:
            content = case.body.replace(PLACEHOLDER.encode(), str(uuid.uuid4()).encode())
            response = client.post(url, content=content, headers=headers)
            if response.status_code != 200:
                raise ServiceError(response.status_code, response.text[:500])

        for _ in range(20):
            send()
        os.kill(server.pid, signal.SIGUSR1)
        time.sleep(0.2)  # the handler runs between bytecodes of the idle event loop
        requests = 0
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            send()
            requests += 1
        os.kill(server.pid, signal.SIGUSR2)
        _wait_for_file(target)
    return read_profile(target, requests)


def _wait_for_file(path: Path, timeout: float = 30.0) -> None:
    """Until ``path`` exists and stopped growing (the profiler writes it on SIGUSR2)."""
    deadline = time.monotonic() + timeout
    last = -1
    while time.monotonic() < deadline:
        size = path.stat().st_size if path.exists() else -1
        if size > 0 and size == last:
            return
        last = size
        time.sleep(0.2)
    raise RuntimeError(f"the profiled server wrote no {path.name}")


# --- report ---------------------------------------------------------------------------------------


def render(
    results: Sequence[Measurement],
    command: str,
    seconds: float,
    warmup: float,
    machine_info: str,
    in_force: int | None = None,
    notes: Sequence[str] = (),
    profile: Profile | None = None,
    code: str | None = None,
) -> str:
    """The markdown section, markers included."""
    lines = [
        BEGIN,
        "## CDS Hooks over HTTP (patient-view)",
        "",
        "`vejviser serve --no-auth` (one uvicorn process, as the CLI starts it) on 127.0.0.1, "
        "driven by `benchmarks/load_generator.py` in a separate process: closed loop, one "
        "keep-alive connection per concurrent client, latency taken per request on the client "
        f"side. Each row is a {seconds:g} s window after a {warmup:g} s warm-up. *full prefetch*: "
        f"synthetic patient (seed {SEED}), every discovery key filled with the patient's own "
        "resources of that type (the most an EHR would send). *FHIR server*: no prefetch, "
        "`fhirServer` is a local sekmet-fhir holding the same patient, so each call makes one "
        "read and a search per other key; sekmet manages ~54 requests/s behind one lock, so "
        "these rows measure sekmet more than Vejviser. CPU columns are shares of one core during "
        "the window: the server, the load generator, and everything else on the machine "
        "(sekmet in the FHIR rows; other jobs on a shared machine). The machine has 2 cores in "
        "all. This section is written by `benchmarks/bench_cds_hooks.py`; change the script, not "
        "the text.",
        "",
        f"- Date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        f"- Machine: {machine_info}",
    ]
    if code is not None:
        lines.append(f"- Code: {code}")
    if in_force is not None:
        lines.append(f"- Guidelines: `guidelines/`, {in_force} in force today")
    lines += [f"- Note: {note}" for note in notes]
    lines += [
        f"- Command: `{command}`",
        "",
        "| case | resources | request KB | cards | concurrency | requests | req/s | p50 ms "
        "| p95 ms | p99 ms | max ms | server CPU ms/req | server CPU | client CPU | other CPU "
        "| errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for m in results:
        stats = latency_ms(m.latencies_ns)
        window = m.window_ns / 1e9 or 1.0
        cpu_per = m.server_cpu_seconds * 1000 / m.requests if m.requests else 0.0
        lines.append(
            f"| {m.case.label} | {m.case.resources} | {len(m.case.body) / 1024:,.0f} "
            f"| {'–' if m.case.check_error else m.case.cards} | {m.concurrency} | {m.requests:,} | {m.rate:,.1f} "
            f"| {stats['p50']:.2f} | {stats['p95']:.2f} | {stats['p99']:.2f} | {stats['max']:.2f} "
            f"| {cpu_per:.2f} | {m.server_cpu_seconds / window:.0%} "
            f"| {m.client_cpu_seconds / window:.0%} | {m.other_cpu_seconds / window:.0%} "
            f"| {m.errors} |"
        )
    lines += ["", *verdicts(results), *errors(results), *contention(results)]
    if profile is not None:
        lines += ["", *render_profile(profile)]
    lines.append(END)
    return "\n".join(lines) + "\n"


def verdicts(results: Sequence[Measurement]) -> list[str]:
    """One line per goal of the issue: met or not, with the number that decides it."""
    full = [m for m in results if m.case.label == FULL]
    latency = next((m for m in full if m.case.resources == GOAL_SIZE and m.concurrency == 1), None)
    lines = []
    if latency is None:
        lines.append(f"- Goal p99 < {GOAL_P99_MS:g} ms (c=1, {GOAL_SIZE} resources): not measured.")
    else:
        p99 = latency_ms(latency.latencies_ns)["p99"]
        met = "met" if p99 < GOAL_P99_MS and not latency.errors else "**not met**"
        lines.append(
            f"- Goal p99 < {GOAL_P99_MS:g} ms at concurrency 1, {GOAL_SIZE} resources, full "
            f"prefetch: {met} (p99 {p99:.2f} ms)."
        )
    for size in sorted({m.case.resources for m in full}):
        best = max((m for m in full if m.case.resources == size), key=lambda m: m.rate)
        met = "met" if best.rate >= GOAL_RPS and not best.errors else "**not met**"
        lines.append(
            f"- Goal ≥ {GOAL_RPS:g} requests/s, {size} resources, full prefetch: {met} "
            f"(best {best.rate:,.1f} req/s at concurrency {best.concurrency})."
        )
    ceilings = [
        f"{m.case.resources} resources {cpu:.2f} ms (≈ {1000 / cpu:,.0f} req/s)"
        for m in full
        if m.concurrency == 1 and m.requests and (cpu := m.server_cpu_seconds * 1000 / m.requests)
    ]
    if ceilings:
        lines.append(
            "- Server CPU per request at concurrency 1: "
            + "; ".join(ceilings)
            + ". `vejviser serve` runs one uvicorn process, which uses one core at most, so "
            "that is its ceiling whatever the load generator does."
        )
    return lines


def errors(results: Sequence[Measurement]) -> list[str]:
    """What the failed answers of each row were: a row of fast errors is no result."""
    lines = []
    for m in results:
        if not m.errors:
            continue
        statuses = ", ".join(f"{n} × HTTP {s}" for s, n in sorted(m.statuses.items()) if s != "200")
        failed = f"{statuses}{', ' if statuses and m.failures else ''}"
        failed += f"{m.failures} × no answer" if m.failures else ""
        first = f"; the first: `{_one_line(m.first_error)}`" if m.first_error else ""
        lines.append(
            f"- Errors, {m.case.label}, {m.case.resources} resources, concurrency {m.concurrency}: "
            f"{failed} of {m.requests + m.failures}{first}."
        )
    return lines


def _one_line(text: str, limit: int = 200) -> str:
    flat = " ".join(text.split()).replace("`", "'")
    return flat if len(flat) <= limit else flat[:limit] + "…"


SHARED_THRESHOLD = 0.25
"""Other processes' mean CPU (share of one core) above which the report says it was shared."""


def contention(results: Sequence[Measurement]) -> list[str]:
    """A warning when other processes used the machine during the full-prefetch windows: then
    latencies and rates are pessimistic, and server CPU per request is the steadier figure."""
    full = [m for m in results if m.case.label == FULL and m.window_ns]
    if not full:
        return []
    other = sum(m.other_cpu_seconds / (m.window_ns / 1e9) for m in full) / len(full)
    if other < SHARED_THRESHOLD:
        return []
    return [
        f"- **The machine was shared**: other processes used {other:.0%} of a core on average "
        "during the full-prefetch windows (2 cores in all). Latencies and rates above are "
        "pessimistic; server CPU per request is the steadier figure, though it also suffers."
    ]


def render_profile(profile: Profile) -> list[str]:
    lines = [
        f"### Server profile ({GOAL_SIZE} resources, full prefetch, concurrency 1, cProfile)",
        "",
        f"{profile.requests:,} requests; {profile.busy_ms:.2f} ms of profiled busy time per "
        "request (cProfile inflates this; compare shares). Idle time in the event loop's "
        "`epoll` is left out; the feedback store's worker thread is not profiled.",
        "",
        "Own time by package:",
        "",
        "| package | own ms/req | share of busy |",
        "|---|---:|---:|",
        *(f"| {name} | {ms:.3f} | {share:.1%} |" for name, ms, share in profile.by_package),
        "",
        "Own time (top functions anywhere):",
        "",
        "| function | calls | own ms/req | cumulative ms/req | share of busy |",
        "|---|---:|---:|---:|---:|",
    ]
    lines += [_profile_line(r) for r in profile.by_own]
    lines += [
        "",
        "Cumulative time in Vejviser's own code (service, engine, fhir_adapter, rules):",
        "",
        "| function | calls | own ms/req | cumulative ms/req | share of busy |",
        "|---|---:|---:|---:|---:|",
    ]
    lines += [_profile_line(r) for r in profile.by_cumulative]
    return lines


def _profile_line(row: ProfileRow) -> str:
    name = row.function.replace("|", "\\|")
    return (
        f"| `{name}` | {row.calls:,} | {row.own_ms:.3f} | {row.cumulative_ms:.3f} "
        f"| {row.share:.1%} |"
    )


def write_section(path: Path, section: str) -> None:
    """Replace this benchmark's section between its markers; keep the rest of the file."""
    host.write_section(path, section, BEGIN, END)


def _command(argv: Sequence[str]) -> str:
    return host.command("benchmarks.bench_cds_hooks", argv)


def _relative(path: Path) -> str:
    return host.relative(path)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short windows, docs untouched")
    parser.add_argument("--seconds", type=float, help=f"measured window (default {SECONDS:g})")
    parser.add_argument("--warmup", type=float, help=f"warm-up (default {WARMUP:g})")
    parser.add_argument(
        "--profile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="profile the server with cProfile (default: on for a full run, off with --quick)",
    )
    parser.add_argument("--no-fhir", action="store_true", help="skip the sekmet-fhir case")
    parser.add_argument("--docs", type=Path, default=DOCS, help="markdown file to update")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args(argv)
    argv = list(sys.argv[1:] if argv is None else argv)
    seconds = args.seconds or (QUICK_SECONDS if args.quick else SECONDS)
    warmup = args.warmup if args.warmup is not None else (QUICK_WARMUP if args.quick else WARMUP)
    profile_on = (not args.quick) if args.profile is None else args.profile
    as_of = danish_today()  # the service evaluates as of today: the patient's data must be recent
    machine_info = machine()
    code = code_version()
    notes: list[str] = []

    with tempfile.TemporaryDirectory(prefix="bench-cds-hooks-") as tmp:
        workdir = Path(tmp)
        server = VejviserServer(workdir)
        with running(server):
            in_force = httpx2.get(f"{server.base_url}/ready", timeout=10).json()[
                "guidelines_in_force"
            ]
            cases = full_prefetch_cases(server.base_url, SIZES, as_of)
            results = measure(server, cases, CONCURRENCY, seconds, warmup, workdir)
            if args.no_fhir:
                notes.append("FHIR server case skipped (--no-fhir).")
            else:
                with fhir_server(workdir, SIZES, as_of) as base:
                    if base is None:
                        notes.append("FHIR server case skipped: sekmet-fhir is not installed.")
                    else:
                        keys = discovery_keys(server.base_url)
                        notes += probe_fhir(base, keys, patient_id_for(max(SIZES)))
                        fetched = fhir_cases(server.base_url, base, SIZES)
                        results += measure(
                            server, fetched, FHIR_CONCURRENCY, seconds, warmup, workdir, True
                        )
                        notes += [
                            f"FHIR server, {c.resources} resources: the check call got "
                            f"{c.check_error}"
                            for c in fetched
                            if c.check_error
                        ]
        profile = None
        if profile_on:
            print("profiling the server ...", file=sys.stderr)
            profile = profile_server(workdir, GOAL_SIZE, min(seconds, PROFILE_SECONDS), as_of)

    section = render(
        results, _command(argv), seconds, warmup, machine_info, in_force, notes, profile, code
    )
    print(section)
    if args.quick or args.no_write:
        print(f"({_relative(args.docs)} not updated)")
    else:
        write_section(args.docs, section)
        print(f"wrote {_relative(args.docs)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
