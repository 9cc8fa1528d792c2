"""The CDS Hooks benchmark's pieces: the prefetch it sends is one the service accepts, and its
report is rendered and placed between its own markers. No timing assertions (the machine is
shared and noisy; the numbers live in docs/benchmarks.md) and no uvicorn: the full benchmark
starts processes and runs for minutes."""

from __future__ import annotations

import asyncio
import cProfile
import os
import uuid
from pathlib import Path

import orjson
import pytest
from fastapi.testclient import TestClient

from benchmarks import bench_patient
from benchmarks.bench_cds_hooks import (
    BEGIN,
    END,
    FETCHED,
    FULL,
    Case,
    Measurement,
    build_prefetch,
    latency_ms,
    own_resources,
    package_of,
    patient_resources,
    read_profile,
    render,
    request_body,
    write_section,
)
from benchmarks.load_generator import PLACEHOLDER, LoadResult, split_template
from benchmarks.load_generator import run as run_load
from rules.effective import danish_today
from rules.guideline_set import load_guidelines
from service.app import create_app
from service.auth import AuthSettings
from service.cds_hooks.discovery import prefetch_templates
from service.settings import Settings

LIBRARY = Path(__file__).resolve().parents[2] / "guidelines"
TODAY = danish_today()
PID = "bench-20"


@pytest.fixture(scope="module")
def keys() -> dict[str, str]:
    return prefetch_templates(load_guidelines(LIBRARY), TODAY)


def test_prefetch_holds_every_key_and_only_the_patients_own_resources(
    keys: dict[str, str],
) -> None:
    resources = patient_resources(20, TODAY)
    prefetch = build_prefetch(keys, resources, PID)
    assert set(prefetch) == set(keys)
    assert prefetch["patient"]["resourceType"] == "Patient" and prefetch["patient"]["id"] == PID
    sent = [prefetch["patient"]]
    for key, value in prefetch.items():
        if value["resourceType"] == "Bundle":
            wanted = keys[key].split("?")[0]
            found = [entry["resource"] for entry in value["entry"]]
            assert all(r["resourceType"] == wanted for r in found), key
            sent += found
    refs = [f"{r['resourceType']}/{r['id']}" for r in sent]
    assert len(refs) == len(set(refs))
    assert "Organization" not in {r["resourceType"] for r in sent}
    own = own_resources(resources, PID)
    assert len(own) == len(resources) - 1  # everything but the practice
    assert sorted(refs) == sorted(f"{r['resourceType']}/{r['id']}" for r in own)


def test_keys_sharing_a_type_do_not_send_a_resource_twice() -> None:
    resources = patient_resources(20, TODAY)
    keys = {
        "patient": "Patient/{{context.patientId}}",
        "observations1": "Observation?patient={{context.patientId}}&code=a",
        "observations2": "Observation?patient={{context.patientId}}&code=b",
    }
    prefetch = build_prefetch(keys, resources, PID)
    assert prefetch["observations1"]["entry"]
    assert prefetch["observations2"]["entry"] == []


def test_the_service_accepts_the_benchmark_request(tmp_path: Path, keys: dict[str, str]) -> None:
    body = request_body(PID, build_prefetch(keys, patient_resources(20, TODAY), PID))
    head, tail = split_template(body)  # what the load generator splices a hookInstance into
    settings = Settings(
        guidelines=LIBRARY,
        auth=AuthSettings(enabled=False),
        feedback_database=tmp_path / "feedback.sqlite",
    )
    with TestClient(create_app(settings)) as client:
        assert client.get("/cds-services").json()["services"][0]["prefetch"] == keys
        response = client.post(
            "/cds-services/vejviser-patient-view",
            content=head + str(uuid.uuid4()).encode() + tail,
            headers={"Content-Type": "application/json"},
        )
    assert response.status_code == 200, response.text
    assert isinstance(response.json()["cards"], list)


def test_fhir_server_request_has_no_prefetch() -> None:
    body = orjson.loads(request_body(PID, None, "http://127.0.0.1:1/fhir"))
    assert body["fhirServer"] == "http://127.0.0.1:1/fhir" and "prefetch" not in body
    assert body["hookInstance"] == PLACEHOLDER


def test_template_needs_exactly_one_placeholder() -> None:
    with pytest.raises(ValueError, match="exactly once"):
        split_template(b"{}")
    with pytest.raises(ValueError, match="exactly once"):
        split_template(PLACEHOLDER.encode() * 2)


def test_percentiles_are_nearest_rank() -> None:
    stats = latency_ms([i * 1_000_000 for i in range(1, 101)])  # 1..100 ms
    assert stats == {"p50": 50.0, "p95": 95.0, "p99": 99.0, "max": 100.0}
    assert latency_ms([])["p99"] == 0.0


def _measurement(label: str, resources: int, concurrency: int, ms: float) -> Measurement:
    case = Case(label, resources, b"x" * 2048, cards=1)
    return Measurement(
        case=case,
        concurrency=concurrency,
        latencies_ns=[int(ms * 1e6)] * 100,
        window_ns=int(1e9),
        statuses={"200": 100},
        client_cpu_seconds=0.2,
        server_cpu_seconds=0.5,
        machine_cpu_seconds=0.9,
    )


def test_report_table_and_verdicts(tmp_path: Path) -> None:
    results = [
        _measurement(FULL, 500, 1, 5.0),
        _measurement(FULL, 500, 8, 30.0),
        _measurement(FETCHED, 500, 1, 200.0),
    ]
    section = render(results, "python -m benchmarks.bench_cds_hooks", 10, 2, "2 cores", 3)
    assert section.startswith(BEGIN) and section.rstrip().endswith(END)
    row = "| full prefetch | 500 | 2 | 1 | 1 | 100 | 100.0 | 5.00 | 5.00 | 5.00 | 5.00 | 5.00 |"
    assert row in section
    assert "| 50% | 20% | 20% | 0 |" in section  # server, client, other CPU; no errors
    assert "p99 < 20 ms at concurrency 1, 500 resources, full prefetch: met (p99 5.00 ms)" in (
        section
    )
    assert "requests/s, 500 resources, full prefetch: **not met** (best 100.0" in section


def test_section_goes_between_its_own_markers(tmp_path: Path) -> None:
    docs = tmp_path / "benchmarks.md"
    other = f"{bench_patient.BEGIN}\n## Per-patient engine\nkeep me\n{bench_patient.END}\n"
    docs.write_text(f"# Benchmarks\n\n{other}")
    section = render([_measurement(FULL, 50, 1, 2.0)], "cmd", 1, 1, "2 cores")
    write_section(docs, section)
    write_section(docs, section.replace("2 cores", "two cores"))
    text = docs.read_text()
    assert other in text
    assert (
        text.count(BEGIN) == 1 and "Machine: two cores" in text and "Machine: 2 cores" not in text
    )


def test_profile_is_read_per_request(tmp_path: Path) -> None:
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(4):
        orjson.loads(request_body(PID))
    profiler.disable()
    path = tmp_path / "server.prof"
    profiler.dump_stats(path)
    profile = read_profile(path, requests=4)
    assert profile.requests == 4
    assert any("orjson" in row.function for row in profile.by_own)
    assert "orjson" in {name for name, _, _ in profile.by_package}
    assert package_of((str(LIBRARY.parent / "engine" / "patient.py"), 1, "f")) == "engine"
    assert package_of(("~", 0, "<method 'get' of 'dict' objects>")) == "C built-ins"


async def _tiny_http_server(statuses: list[int]) -> asyncio.Server:
    """A keep-alive HTTP/1.1 responder (no uvicorn): answers ``{}`` with the next status."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    int(line.split(b":", 1)[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
                body = orjson.loads(await reader.readexactly(length))
                assert uuid.UUID(body["hookInstance"]) != uuid.UUID(PLACEHOLDER)
                status = statuses.pop(0) if statuses else 200
                writer.write(
                    f"HTTP/1.1 {status} X\r\nContent-Length: 2\r\n\r\n{{}}".encode("ascii")
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionResetError):
            writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0)


def test_load_generator_measures_only_the_window() -> None:
    async def scenario() -> LoadResult:
        server = await _tiny_http_server([200, 412])
        port = server.sockets[0].getsockname()[1]
        async with server:
            result = await run_load(
                f"http://127.0.0.1:{port}/cds-services/x",
                request_body(PID),
                concurrency=2,
                seconds=0.3,
                warmup=0.1,
                watch={"self": os.getpid()},
            )
            await asyncio.sleep(0.05)  # let the handlers see the client hang up
        return result

    result = asyncio.run(scenario())
    assert result.latencies_ns and all(ns > 0 for ns in result.latencies_ns)
    assert sum(result.statuses.values()) == len(result.latencies_ns)
    assert set(result.statuses) <= {"200", "412"}
    assert result.completed >= len(result.latencies_ns)  # warm-up answers are not in the window
    assert result.window_ns == 300_000_000
    assert set(result.watched_cpu_seconds) == {"self"} and result.failures == 0


def test_report_says_when_the_machine_was_shared() -> None:
    quiet = _measurement(FULL, 50, 1, 2.0)
    assert "was shared" not in render([quiet], "cmd", 1, 1, "2 cores")
    busy = _measurement(FULL, 50, 1, 2.0)
    busy.machine_cpu_seconds = 1.5  # 0.8 s by neither the server nor the load generator
    assert "other processes used 80% of a core" in render([busy], "cmd", 1, 1, "2 cores")


def test_report_explains_error_rows() -> None:
    failing = _measurement(FETCHED, 500, 8, 3000.0)
    failing.statuses = {"200": 90, "412": 10}
    failing.first_error = 'HTTP 412: {"diagnostics": "the FHIR server did not answer in time"}'
    section = render([failing], "cmd", 1, 1, "2 cores")
    assert "Errors, FHIR server, 500 resources, concurrency 8: 10 × HTTP 412 of 100" in section
    assert "did not answer in time" in section
