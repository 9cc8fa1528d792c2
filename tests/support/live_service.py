"""A real ``vejviser serve`` on a loopback port, and a load generator that checks every answer.

For the publishing tests: the server runs as a subprocess exactly as in production (uvicorn, the
guideline watcher in its lifespan), the clients are threads with their own keep-alive
connections. ``benchmarks/load_generator.py`` measures latency and counts statuses; these tests
also need every card body checked and the cards each answer carried, so the generator here is a
small one of their own.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2
import orjson

from service.cds_hooks.prefetch import prefetch_from
from tests.support.sekmet import free_port

VEJVISER = Path(sys.executable).parent / "vejviser"
PATIENT_VIEW = "/cds-services/vejviser-patient-view"
INDICATORS = {"info", "warning", "critical"}


class VejviserProcess:
    """``vejviser serve --no-auth`` on 127.0.0.1 with a watched guideline source."""

    def __init__(self, workdir: Path, *source: str, poll: float = 0.5) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / f"vejviser-{self.port}.log"
        config = workdir / "vejviser.yaml"
        database = workdir / f"feedback-{self.port}.sqlite"
        state = workdir / "state"
        config.write_text(
            f"feedback_database: {orjson.dumps(str(database)).decode()}\n"
            f"state_directory: {orjson.dumps(str(state)).decode()}\n"
        )
        self.command = [
            str(VEJVISER), "serve", "--no-auth", "--host", "127.0.0.1", "--port", str(self.port),
            "--config", str(config), "--poll", str(poll), *source,
        ]  # fmt: skip
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("VEJVISER_")}
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.command,
                cwd=self.workdir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        with httpx2.Client(timeout=1.0) as client:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise RuntimeError(f"vejviser exited during start-up:\n{self.log()}")
                with contextlib.suppress(httpx2.TransportError):
                    if client.get(f"{self.base_url}/health").status_code == 200:
                        return
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"vejviser did not answer within {timeout} s:\n{self.log()}")

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

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_events(self) -> list[dict[str, Any]]:
        """The structured (JSON) log lines the server wrote."""
        events = []
        for line in self.log().splitlines():
            if line.startswith("{"):
                with contextlib.suppress(orjson.JSONDecodeError):
                    events.append(orjson.loads(line))
        return events

    def status(self) -> dict[str, Any]:
        response = httpx2.get(f"{self.base_url}/guidelines", timeout=10)
        response.raise_for_status()
        return response.json()


@contextlib.contextmanager
def running(server: VejviserProcess) -> Iterator[VejviserProcess]:
    server.start()
    try:
        yield server
    except BaseException:
        print(f"--- vejviser log (tail) ---\n{server.log()[-6000:]}", file=sys.stderr)
        raise
    finally:
        server.stop()


def retargeted(text: str, target: int) -> str:
    """The fixture guideline (tests/fixtures/guidelines/example.yaml) with another default HbA1c
    target, and its test case expecting it: the publisher refuses a set whose cases fail."""
    assert text.count("value: 53\n") == 1 and text.count("targets: {hba1c_target: 53}") == 1
    return text.replace("value: 53\n", f"value: {target}\n").replace(
        "targets: {hba1c_target: 53}", f"targets: {{hba1c_target: {target}}}"
    )


def diabetic_patient(today: dt.date, hba1c: float = 67) -> list[dict[str, Any]]:
    """A patient with type 2 diabetes and a recent HbA1c (above the fixture set's targets)."""
    subject = {"reference": "Patient/p1"}
    return [
        {"resourceType": "Patient", "id": "p1", "birthDate": "1950-03-01", "gender": "female"},
        {
            "resourceType": "Condition",
            "id": "t2d",
            "subject": subject,
            "code": {"coding": [{"system": "urn:oid:1.2.208.176.2.31", "code": "T90"}]},
        },
        {
            "resourceType": "Observation",
            "id": "hba1c-1",
            "status": "final",
            "subject": subject,
            "code": {"coding": [{"system": "http://npu-terminology.org", "code": "NPU27300"}]},
            "effectiveDateTime": (today - dt.timedelta(days=30)).isoformat(),
            "valueQuantity": {"value": hba1c, "unit": "mmol/mol"},
        },
    ]


def card_problems(body: Any) -> list[str]:
    """What is wrong with a CDS Hooks answer body (empty: a valid ``{"cards": [...]}``)."""
    if not isinstance(body, dict) or not isinstance(body.get("cards"), list):
        return [f"not a cards body: {str(body)[:200]}"]
    problems = []
    for card in body["cards"]:
        provenance = card.get("extension", {}).get("dk.vejviser.provenance", {})
        if not (isinstance(card.get("summary"), str) and 0 < len(card["summary"]) < 140):
            problems.append(f"bad summary: {card.get('summary')!r}")
        if card.get("indicator") not in INDICATORS:
            problems.append(f"bad indicator: {card.get('indicator')!r}")
        if not card.get("source", {}).get("label"):
            problems.append("card without source label")
        if not all(provenance.get(k) for k in ("guideline", "version", "contentHash")):
            problems.append(f"card without provenance: {provenance}")
    return problems


@dataclass(slots=True)
class Answer:
    sent: float  # time.monotonic()
    received: float
    status: int | None  # None: no HTTP answer at all
    cards: list[dict[str, Any]] = field(default_factory=list)
    problem: str | None = None


class LoadGenerator:
    """``clients`` threads, each sending patient-view requests back to back until stopped."""

    def __init__(self, base_url: str, prefetch: dict[str, Any], clients: int = 4) -> None:
        self.base_url = base_url
        self.prefetch = prefetch
        self.clients = clients
        self.answers: list[Answer] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def body(self) -> bytes:
        return orjson.dumps(
            {
                "hook": "patient-view",
                "hookInstance": str(uuid.uuid4()),
                "context": {"userId": "Practitioner/gp1", "patientId": "p1"},
                "prefetch": self.prefetch,
            }
        )

    def _run(self) -> None:
        with httpx2.Client(base_url=self.base_url, timeout=15.0) as client:
            while not self._stop.is_set():
                sent = time.monotonic()
                try:
                    response = client.post(
                        PATIENT_VIEW,
                        content=self.body(),
                        headers={"Content-Type": "application/json"},
                    )
                except httpx2.HTTPError as exc:
                    answer = Answer(sent, time.monotonic(), None, problem=repr(exc))
                else:
                    answer = Answer(sent, time.monotonic(), response.status_code)
                    try:
                        body = response.json()
                    except ValueError:
                        body = response.text
                    problems = card_problems(body)
                    if response.status_code != 200 or problems:
                        answer.problem = f"{response.status_code}: {problems or body}"
                    else:
                        answer.cards = body["cards"]
                with self._lock:
                    self.answers.append(answer)

    def __enter__(self) -> LoadGenerator:
        for _ in range(self.clients):
            thread = threading.Thread(target=self._run, daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=20)

    def since(self, moment: float) -> list[Answer]:
        """Answers to requests sent at or after ``moment`` (time.monotonic())."""
        with self._lock:
            return [a for a in self.answers if a.sent >= moment]

    def failures(self) -> list[Answer]:
        with self._lock:
            return [a for a in self.answers if a.problem is not None]


def full_prefetch(base_url: str, resources: list[dict[str, Any]]) -> dict[str, Any]:
    """Every key discovery asks for, answered from ``resources``, as a complete EHR would."""
    services = httpx2.get(f"{base_url}/cds-services", timeout=10).json()["services"]
    return prefetch_from(services[0]["prefetch"], resources)


def wait_for(
    condition: Callable[[], Any], timeout: float, interval: float = 0.05
) -> tuple[Any, float]:
    """Poll ``condition`` until it is truthy; its value and the seconds it took (or raise)."""
    start = time.monotonic()
    while True:
        value = condition()
        if value:
            return value, time.monotonic() - start
        if time.monotonic() - start > timeout:
            raise AssertionError(f"not within {timeout} s")
        time.sleep(interval)


GIT_ENV = {
    "GIT_AUTHOR_NAME": "Author",
    "GIT_AUTHOR_EMAIL": "author@example.dk",
    "GIT_COMMITTER_NAME": "Author",
    "GIT_COMMITTER_EMAIL": "author@example.dk",
    "GIT_CONFIG_GLOBAL": os.devnull,
    "GIT_CONFIG_NOSYSTEM": "1",
}


def git(*args: str, cwd: Path | None = None) -> str:
    """Run the git client as a test author (no global or system configuration)."""
    result = subprocess.run(
        ["git", *args],
        cwd=cwd,
        env={**os.environ, **GIT_ENV},
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stdout.strip()
