"""Bulk $export against a real FHIR server (sekmet: auth none and the SMART variant), plus an
httpx2 MockTransport for what sekmet cannot do on cue: cut a download short, honour Range, ask
for Retry-After as an HTTP date, fail a job, answer with error files or foreign URLs.

sekmet's export jobs take about a second and answer ``Retry-After: 1``, so each real export
costs one to two seconds; the mocks record requested waits through an injected sleep instead
of waiting."""

from __future__ import annotations

import codecs
import email.utils
import gzip
import json
import logging
import shutil
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx2
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from fhir_adapter.backend_auth import BackendServicesAuth, public_jwks
from fhir_adapter.bulk import (
    DELETED_DIR,
    STATE_FILE,
    BulkExportClient,
    DownloadFailed,
    ExportDirectoryInUse,
    ExportExpired,
    ExportFailed,
    ExportNotFound,
    ExportResult,
    ExportTimeout,
    deleted_resources,
)
from fhir_adapter.normalise import FhirInputError
from fhir_adapter.rest import FhirNotFound, FhirRejected, FhirUnauthorized, FhirUnavailable
from tests.support.populations import population
from tests.support.sekmet import FastSekmet, SekmetServer, running

PREFIX = "bulk-"
SMART_CLIENT = "vejviser-bulk"
MOCK_BASE = "https://fhir.example.dk/fhir"
Resource = dict[str, Any]
Key = tuple[str, str]


def by_key(resources: list[Resource]) -> dict[Key, Resource]:
    return {(r["resourceType"], r["id"]): r for r in resources}


def exported(result: ExportResult, prefix: str = "") -> dict[Key, Resource]:
    """The exported resources whose id starts with ``prefix``, without the server's meta."""
    found: dict[Key, Resource] = {}
    for rtype in result.files:
        for resource in result.resources(rtype):
            assert resource["resourceType"] == rtype
            key = (rtype, resource["id"])
            assert key not in found, f"{key} exported twice"
            if resource["id"].startswith(prefix):
                found[key] = {k: v for k, v in resource.items() if k != "meta"}
    return found


def check_counts(result: ExportResult) -> None:
    """Every manifest count matches the lines of the downloaded file; no leftovers."""
    for entry in result.manifest.output:
        lines = sum(1 for _ in result.resources(entry.type))
        assert entry.count == lines
    assert not list(result.directory.rglob("*.part"))


# --- a real server, auth none -----------------------------------------------------------------


@pytest.fixture(scope="module")
def loaded(fhir_server: SekmetServer) -> dict[Key, Resource]:
    """Three patients, their practice and a Group of patients 1 and 3 on the shared server."""
    resources = population(PREFIX, [11, 12, 13])
    group = {
        "resourceType": "Group",
        "id": f"{PREFIX}g1",
        "type": "person",
        "actual": True,
        "member": [{"entity": {"reference": f"Patient/{PREFIX}p{n}"}} for n in (1, 3)],
    }
    fhir_server.load([*resources, group])
    return by_key([*resources, group])


@pytest.fixture(scope="module")
def http() -> Iterator[httpx2.Client]:
    with httpx2.Client() as client:
        yield client


@pytest.fixture(scope="module")
def system_export(
    fhir_server: SekmetServer,
    loaded: dict[Key, Resource],
    http: httpx2.Client,
    tmp_path_factory: pytest.TempPathFactory,
) -> ExportResult:
    """One system-level export, kept on the server (later tests resume against its job)."""
    client = BulkExportClient(http, fhir_server.base_url)
    return client.export(tmp_path_factory.mktemp("system"), delete_job=False, timeout=30)


def test_system_export_holds_exactly_the_loaded_resources(
    system_export: ExportResult, loaded: dict[Key, Resource]
) -> None:
    assert exported(system_export, PREFIX) == loaded
    check_counts(system_export)
    manifest = system_export.manifest
    assert manifest.requires_access_token is False
    assert manifest.error == () and system_export.error_count == 0
    assert system_export.transaction_time == manifest.transaction_time
    assert system_export.job_deleted is False
    assert (system_export.directory / STATE_FILE).exists()
    assert system_export.files["Patient"] == [system_export.directory / "Patient.ndjson"]


def test_patient_export_with_type_filter(
    fhir_server: SekmetServer,
    loaded: dict[Key, Resource],
    http: httpx2.Client,
    tmp_path: Path,
) -> None:
    progress: list[str] = []
    client = BulkExportClient(http, fhir_server.base_url)
    result = client.export(
        tmp_path,
        level="patient",
        types=["Patient", "Observation"],
        timeout=30,
        on_progress=progress.append,
    )
    assert set(result.files) <= {"Patient", "Observation"}
    expected = {k: v for k, v in loaded.items() if k[0] in ("Patient", "Observation")}
    assert exported(result, PREFIX) == expected
    assert "_type=" in result.manifest.request
    assert progress  # sekmet reports X-Progress while the job runs
    check_counts(result)
    assert result.job_deleted is True


def test_group_export_holds_the_members_data(
    fhir_server: SekmetServer,
    loaded: dict[Key, Resource],
    http: httpx2.Client,
    tmp_path: Path,
) -> None:
    client = BulkExportClient(http, fhir_server.base_url)
    result = client.export(tmp_path, level="group", group_id=f"{PREFIX}g1", timeout=30)
    found = exported(result)  # the whole export, not only our prefix: a Group scopes it
    # sekmet includes the Group itself (it references its members); the IG does not ask for it.
    found.pop(("Group", f"{PREFIX}g1"), None)
    members = (f"{PREFIX}p1", f"{PREFIX}p3")
    expected = {
        k: v
        for k, v in loaded.items()
        if k[0] not in ("Organization", "Group") and k[1].startswith(members)
    }
    assert found == expected
    assert result.job_deleted is True
    assert result.status_url is not None
    assert http.get(result.status_url).status_code == 404  # the job is gone


def test_unknown_group_is_not_found(fhir_server: SekmetServer, http: httpx2.Client) -> None:
    client = BulkExportClient(http, fhir_server.base_url)
    with pytest.raises(FhirNotFound, match="no such Group"):
        client.kick_off("group", group_id="no-such-group", deadline=_in(10))


def test_since_exports_only_later_changes(
    fhir_server: SekmetServer,
    system_export: ExportResult,
    loaded: dict[Key, Resource],
    http: httpx2.Client,
    tmp_path: Path,
) -> None:
    practice = loaded[("Organization", f"{PREFIX}org")]
    later = population("bulksince-", [21], practice)[1:]  # the practice is not written again
    fhir_server.load(later)
    client = BulkExportClient(http, fhir_server.base_url)
    result = client.export(tmp_path, since=system_export.transaction_time, timeout=30)
    assert exported(result) == by_key(later)  # the whole export: nothing older came along


def test_rerun_skips_complete_files_and_restarts_partial_ones(
    fhir_server: SekmetServer, system_export: ExportResult, tmp_path: Path
) -> None:
    """sekmet ignores Range, so a partial file is downloaded again from the start."""
    directory = tmp_path / "copy"
    shutil.copytree(system_export.directory, directory)
    original = {p.name: p.read_bytes() for p in directory.glob("*.ndjson")}
    observations = directory / "Observation.ndjson"
    half = observations.read_bytes()[: observations.stat().st_size // 2]
    observations.unlink()
    (directory / "Observation.ndjson.part").write_bytes(half)  # as left by a crash
    (directory / "Patient.ndjson").unlink()

    sent: list[httpx2.Request] = []
    with httpx2.Client(event_hooks={"request": [sent.append]}) as http:
        client = BulkExportClient(http, fhir_server.base_url)
        result = client.export(directory, delete_job=False, timeout=30)

    assert {p.name: p.read_bytes() for p in directory.glob("*.ndjson")} == original
    assert not list(directory.glob("*.part"))
    assert sorted(r.url.path.rsplit("/", 1)[-1] for r in sent) == [
        "Observation.ndjson",
        "Patient.ndjson",
    ]  # no kick-off, no polling, no other file
    resumed = next(r for r in sent if r.url.path.endswith("Observation.ndjson"))
    assert resumed.headers["Range"] == f"bytes={len(half)}-"
    assert result.files == {
        t: [directory / p.name for p in paths] for t, paths in system_export.files.items()
    }


def test_other_export_in_the_same_directory_is_refused(
    fhir_server: SekmetServer, system_export: ExportResult, http: httpx2.Client
) -> None:
    client = BulkExportClient(http, fhir_server.base_url)
    with pytest.raises(ExportDirectoryInUse):
        client.export(system_export.directory, types=["Patient"])


# --- a real server, SMART Backend Services ----------------------------------------------------


@pytest.fixture(scope="module")
def client_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP384R1())


@pytest.fixture(scope="module")
def smart_server(
    tmp_path_factory: pytest.TempPathFactory, client_key: ec.EllipticCurvePrivateKey
) -> Iterator[SekmetServer]:
    server = FastSekmet(
        tmp_path_factory.mktemp("sekmet-smart"),
        server_auth={
            "types": ["smart"],
            "smart_clients": [
                {
                    "client_id": SMART_CLIENT,
                    "jwks": public_jwks(client_key),
                    "scopes": "system/*.cruds",
                }
            ],
        },
    )
    with running(server):
        yield server


def test_export_with_a_backend_services_token(
    smart_server: SekmetServer,
    client_key: ec.EllipticCurvePrivateKey,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    resources = population("smart-", [31, 32])
    with httpx2.Client() as http:
        writer = BackendServicesAuth(
            http,
            fhir_base_url=smart_server.base_url,
            client_id=SMART_CLIENT,
            private_key=client_key,
            scope="system/*.cruds",
        )
        smart_server.load(resources, access_token=writer.access_token())
        reader = BackendServicesAuth(
            http,
            fhir_base_url=smart_server.base_url,
            client_id=SMART_CLIENT,
            private_key=client_key,
            scope="system/*.rs",
        )
        client = BulkExportClient(http, smart_server.base_url, auth=reader)
        with pytest.raises(FhirUnauthorized):
            BulkExportClient(http, smart_server.base_url).kick_off(deadline=_in(10))

        result = client.export(tmp_path, level="patient", delete_job=False, timeout=30)
        assert result.manifest.requires_access_token is True
        patients_only = {k: v for k, v in by_key(resources).items() if k[0] != "Organization"}
        assert exported(result) == patients_only
        check_counts(result)

        token = reader.access_token()
        url = result.manifest.output[0].url
        assert http.get(url).status_code == 401  # the files need the token ...
        with_token = http.get(url, headers={"Authorization": f"Bearer {token}"})
        assert with_token.status_code == 200  # ... which the client sent

        assert result.status_url is not None
        with pytest.raises(FhirUnauthorized):  # sekmet wants a delete scope for DELETE
            client.delete(result.status_url, deadline=_in(10))
    assert token not in caplog.text


# --- MockTransport ----------------------------------------------------------------------------


class FakeTime:
    """A monotonic clock that only the injected sleep advances; records requested delays."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def wall(self) -> float:
        return 1_750_000_000.0 + self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


class StaticTokens:
    """A token source handing out the given tokens in turn; counts invalidations."""

    def __init__(self, *tokens: str) -> None:
        self.tokens = list(tokens)
        self.invalidated = 0

    def access_token(self, deadline: float | None = None) -> str:
        return self.tokens[min(self.invalidated, len(self.tokens) - 1)]

    def invalidate(self) -> None:
        self.invalidated += 1


class CutStream(httpx2.SyncByteStream):
    """A body that breaks off after ``cut`` bytes, as a dropped connection does."""

    def __init__(self, data: bytes, cut: int) -> None:
        self.data, self.cut = data, cut

    def __iter__(self) -> Iterator[bytes]:
        yield self.data[: self.cut]
        raise httpx2.ReadError("connection reset by peer")


class Chunks(httpx2.SyncByteStream):
    """A body sent in chunks of ``size`` bytes."""

    def __init__(self, data: bytes, size: int = 7) -> None:
        self.data, self.size = data, size

    def __iter__(self) -> Iterator[bytes]:
        for start in range(0, len(self.data), self.size):
            yield self.data[start : start + self.size]


NDJSON = b"".join(
    json.dumps({"resourceType": "Observation", "id": f"o{n}", "status": "final"}).encode() + b"\n"
    for n in range(40)
)


class MockServer:
    """Scripted bulk endpoints on ``MOCK_BASE``; records every request it receives.

    ``status`` answers come first, then the manifest. ``files`` maps a URL path to bytes;
    ``cuts`` lists, per path, where successive downloads break off.
    """

    def __init__(
        self,
        *,
        status: list[httpx2.Response] | None = None,
        files: dict[str, bytes] | None = None,
        manifest: dict[str, Any] | None = None,
        ranges: bool = True,
        cuts: dict[str, list[int]] | None = None,
        kickoff: httpx2.Response | None = None,
        delete: httpx2.Response | None = None,
    ) -> None:
        self.status = list(status or [])
        self.files = files if files is not None else {"/files/Observation.ndjson": NDJSON}
        self.manifest = manifest or {
            "transactionTime": "2025-03-01T10:00:00.000Z",
            "request": f"{MOCK_BASE}/$export",
            "requiresAccessToken": True,
            "output": [
                {"type": "Observation", "url": f"https://fhir.example.dk{p}", "count": 40}
                for p in self.files
            ],
            "error": [],
        }
        self.ranges = ranges
        self.cuts = cuts or {}
        self.kickoff = kickoff or httpx2.Response(
            202, headers={"Content-Location": f"{MOCK_BASE}/status/1"}
        )
        self.delete = delete or httpx2.Response(202)
        self.requests: list[httpx2.Request] = []

    def __call__(self, request: httpx2.Request) -> httpx2.Response:
        self.requests.append(request)
        path = request.url.path
        if path.endswith("$export"):
            return _fresh(self.kickoff)
        if path == "/fhir/status/1":
            if request.method == "DELETE":
                return _fresh(self.delete)
            if self.status:
                return _fresh(self.status.pop(0))
            return httpx2.Response(200, json=self.manifest)
        if path in self.files:
            return self.serve(path, request)
        return httpx2.Response(404)

    def serve(self, path: str, request: httpx2.Request) -> httpx2.Response:
        data = self.files[path]
        start = 0
        headers = {"Content-Type": "application/fhir+ndjson"}
        status = 200
        wanted = request.headers.get("Range")
        if wanted and self.ranges:
            start = int(wanted.removeprefix("bytes=").rstrip("-"))
            if start >= len(data):
                return httpx2.Response(416, headers={"Content-Range": f"bytes */{len(data)}"})
            status = 206
            headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        body = data[start:]
        headers["Content-Length"] = str(len(body))
        cuts = self.cuts.get(path)
        if cuts:
            return httpx2.Response(status, headers=headers, stream=CutStream(body, cuts.pop(0)))
        return httpx2.Response(status, headers=headers, stream=httpx2.ByteStream(body))  # as sent

    def file_requests(self) -> list[httpx2.Request]:
        return [r for r in self.requests if "/files/" in r.url.path]


def _fresh(template: httpx2.Response) -> httpx2.Response:
    """A new Response like ``template``: a Response object can be sent only once."""
    return httpx2.Response(template.status_code, headers=template.headers, content=template.content)


def mock_client(
    server: Callable[[httpx2.Request], httpx2.Response],
    fake: FakeTime,
    auth: StaticTokens | None = None,
    **options: Any,
) -> BulkExportClient:
    http = httpx2.Client(transport=httpx2.MockTransport(server))
    return BulkExportClient(
        http,
        MOCK_BASE,
        auth=auth,
        sleep=fake.sleep,
        clock=fake.clock,
        wall_clock=fake.wall,
        **options,
    )


def _in(seconds: float, fake: FakeTime | None = None) -> float:
    """A deadline ``seconds`` ahead on the fake clock, or on the real one."""
    return (fake.clock() if fake else time.monotonic()) + seconds


def test_retry_after_is_honoured_in_seconds_and_as_a_date(tmp_path: Path) -> None:
    fake = FakeTime()
    in_five = email.utils.formatdate(fake.wall() + 1 + 5, usegmt=True)  # after the first wait
    server = MockServer(
        status=[
            httpx2.Response(202, headers={"Retry-After": "1", "X-Progress": "collecting 10%"}),
            httpx2.Response(202, headers={"Retry-After": in_five, "X-Progress": "writing\x1b[2J"}),
            httpx2.Response(202),  # no Retry-After: the client's own interval
        ]
    )
    progress: list[str] = []
    client = mock_client(server, fake, StaticTokens("t0k3n"), poll_interval=3.0)
    result = client.export(tmp_path, on_progress=progress.append)
    assert fake.sleeps == [1.0, 5.0, 3.0]
    assert progress == ["collecting 10%", "writing[2J"]  # control characters dropped
    assert (tmp_path / "Observation.ndjson").read_bytes() == NDJSON
    assert result.job_deleted is True
    assert [r.method for r in server.requests if r.url.path == "/fhir/status/1"][-1] == "DELETE"


def test_kickoff_request_shape() -> None:
    fake = FakeTime()
    server = MockServer()
    client = mock_client(server, fake, StaticTokens("t0k3n"))
    since = datetime(2025, 3, 1, 11, 30, 0, 123456, tzinfo=timezone(timedelta(hours=1)))
    status_url = client.kick_off(
        "group",
        group_id="praksis-1",
        types=["Patient", "Observation"],
        since=since,
        deadline=_in(10, fake),
    )
    assert status_url == f"{MOCK_BASE}/status/1"
    request = server.requests[0]
    assert request.method == "GET"
    assert request.url.path == "/fhir/Group/praksis-1/$export"
    assert request.url.params["_type"] == "Observation,Patient"
    assert request.url.params["_since"] == "2025-03-01T10:30:00.123Z"
    assert request.headers["Prefer"] == "respond-async"
    assert request.headers["Accept"] == "application/fhir+json"
    assert request.headers["Authorization"] == "Bearer t0k3n"


@pytest.mark.parametrize(
    "since", [datetime(2025, 1, 1), "yesterday", "2025-01-01"], ids=["naive", "word", "date"]
)
def test_since_must_be_an_instant(since: Any) -> None:
    client = mock_client(MockServer(), FakeTime())
    with pytest.raises(ValueError, match="since"):
        client.kick_off(since=since, deadline=_in(10))


def test_kickoff_refused_with_diagnostics() -> None:
    outcome = {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": "not-supported", "diagnostics": "no _since"}],
    }
    server = MockServer(kickoff=httpx2.Response(400, json=outcome))
    with pytest.raises(FhirRejected) as caught:
        mock_client(server, FakeTime()).kick_off(since="2025-01-01T00:00:00Z", deadline=_in(10))
    assert caught.value.diagnostics == "no _since"


def test_status_url_on_another_origin_is_refused(tmp_path: Path) -> None:
    server = MockServer(
        kickoff=httpx2.Response(202, headers={"Content-Location": "https://evil.example/status/1"})
    )
    with pytest.raises(FhirUnavailable, match="another origin"):
        mock_client(server, FakeTime(), StaticTokens("t0k3n")).export(tmp_path)
    assert all(r.url.host == "fhir.example.dk" for r in server.requests)


def test_transient_status_errors_are_retried(tmp_path: Path) -> None:
    transient = {"resourceType": "OperationOutcome", "issue": [{"code": "transient"}]}
    fake = FakeTime()
    server = MockServer(
        status=[
            httpx2.Response(503, json=transient, headers={"Retry-After": "7"}),
            httpx2.Response(429),
        ]
    )
    mock_client(server, fake, StaticTokens("t0k3n"), poll_interval=2.0).export(tmp_path)
    assert fake.sleeps == [7.0, 2.0]


def test_failed_export_reports_the_outcome(tmp_path: Path) -> None:
    outcome = {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": "exception", "diagnostics": "disk full"}],
    }
    server = MockServer(status=[httpx2.Response(202), httpx2.Response(500, json=outcome)])
    with pytest.raises(ExportFailed) as caught:
        mock_client(server, FakeTime(), StaticTokens("t0k3n")).export(tmp_path)
    assert caught.value.diagnostics == "disk full"
    assert caught.value.status == 500
    assert caught.value.status_url == f"{MOCK_BASE}/status/1"
    assert "status/1" not in str(caught.value)


def test_vanished_job_is_export_not_found() -> None:
    server = MockServer(status=[httpx2.Response(404)])
    with pytest.raises(ExportNotFound):
        mock_client(server, FakeTime()).wait(f"{MOCK_BASE}/status/1", deadline=_in(10))


def test_polling_stops_at_the_deadline() -> None:
    fake = FakeTime()
    server = MockServer(status=[httpx2.Response(202, headers={"Retry-After": "10"})] * 100)
    client = mock_client(server, fake)
    with pytest.raises(ExportTimeout) as caught:
        client.wait(f"{MOCK_BASE}/status/1", deadline=_in(35, fake))
    assert fake.sleeps == [10.0, 10.0, 10.0]  # a fourth wait would pass the deadline
    assert caught.value.status_url == f"{MOCK_BASE}/status/1"


def test_polling_is_bounded_by_max_polls() -> None:
    fake = FakeTime()
    server = MockServer(status=[httpx2.Response(202)] * 100)
    client = mock_client(server, fake, max_polls=4)
    with pytest.raises(ExportTimeout, match="4 status requests"):
        client.wait(f"{MOCK_BASE}/status/1", deadline=_in(3600, fake))
    assert len(server.requests) == 4


def test_expired_token_is_renewed_once(tmp_path: Path) -> None:
    tokens = StaticTokens("old", "new")
    server = MockServer(status=[httpx2.Response(401)])
    mock_client(server, FakeTime(), tokens).export(tmp_path)
    assert tokens.invalidated == 1
    status_auth = [r.headers["Authorization"] for r in server.requests if "status" in r.url.path]
    assert status_auth[:2] == ["Bearer old", "Bearer new"]


def test_interrupted_download_resumes_with_range(tmp_path: Path) -> None:
    path = "/files/Observation.ndjson"
    server = MockServer(cuts={path: [100, 250]})  # two drops, then the rest
    result = mock_client(server, FakeTime(), StaticTokens("t0k3n")).export(tmp_path)
    assert (tmp_path / "Observation.ndjson").read_bytes() == NDJSON
    assert not (tmp_path / "Observation.ndjson.part").exists()
    downloads = server.file_requests()
    assert [r.headers.get("Range") for r in downloads] == [None, "bytes=100-", "bytes=350-"]
    assert all(r.headers["Authorization"] == "Bearer t0k3n" for r in downloads)
    assert downloads[1].headers["Accept-Encoding"] == "identity"
    assert result.files == {"Observation": [tmp_path / "Observation.ndjson"]}


def test_download_gives_up_after_the_attempts_and_keeps_the_part(tmp_path: Path) -> None:
    path = "/files/Observation.ndjson"
    server = MockServer(cuts={path: [10, 10, 10]})
    client = mock_client(server, FakeTime(), StaticTokens("t0k3n"))
    with pytest.raises(DownloadFailed, match="interrupted 3 times"):
        client.export(tmp_path)
    assert (tmp_path / "Observation.ndjson.part").read_bytes() == NDJSON[:30]
    result = client.export(tmp_path)  # the re-run picks up the manifest and the 30 bytes
    assert (tmp_path / "Observation.ndjson").read_bytes() == NDJSON
    assert server.file_requests()[-1].headers["Range"] == "bytes=30-"
    assert result.error_count == 0


def test_partial_file_restarts_when_range_is_ignored(tmp_path: Path) -> None:
    server = MockServer(ranges=False)
    client = mock_client(server, FakeTime(), StaticTokens("t0k3n"))
    manifest = client.wait(f"{MOCK_BASE}/status/1", deadline=_in(10))
    (tmp_path / "Observation.ndjson.part").write_bytes(b"garbage from another attempt")
    client.download(manifest, tmp_path, deadline=_in(10))
    assert (tmp_path / "Observation.ndjson").read_bytes() == NDJSON


def test_complete_partial_file_is_kept_on_416(tmp_path: Path) -> None:
    server = MockServer()
    client = mock_client(server, FakeTime(), StaticTokens("t0k3n"))
    manifest = client.wait(f"{MOCK_BASE}/status/1", deadline=_in(10))
    (tmp_path / "Observation.ndjson.part").write_bytes(NDJSON)  # crashed before the rename
    client.download(manifest, tmp_path, deadline=_in(10))
    assert (tmp_path / "Observation.ndjson").read_bytes() == NDJSON
    assert server.file_requests()[-1].headers["Range"] == f"bytes={len(NDJSON)}-"


def test_count_mismatch_discards_the_file(tmp_path: Path) -> None:
    server = MockServer(files={"/files/Observation.ndjson": NDJSON[: NDJSON.index(b"\n") + 1]})
    with pytest.raises(DownloadFailed, match="holds 1 resources but the manifest says 40"):
        mock_client(server, FakeTime(), StaticTokens("t0k3n")).export(tmp_path)
    assert not list(tmp_path.glob("Observation.*"))


def outcome(severity: str, text: str) -> bytes:
    issue = {"severity": severity, "code": "processing", "diagnostics": text}
    return json.dumps({"resourceType": "OperationOutcome", "issue": [issue]}).encode() + b"\n"


def test_error_files_are_downloaded_and_counted_by_severity(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The IG puts errors, warnings and information in the error files: only errors (and what
    says no severity) are resources not exported; a warning was counted as one."""
    outcomes = (
        outcome("error", "Observation/x unreadable")
        + outcome("fatal", "Condition/y unreadable")
        + outcome("warning", "_typeFilter ignored")
        + outcome("information", "took 3 s")
        + outcome("information", "took 4 s")
        + b'{"resourceType": "OperationOutcome"}\n'
    )
    server = MockServer(files={"/files/Observation.ndjson": NDJSON, "/files/err.ndjson": outcomes})
    server.manifest["output"] = server.manifest["output"][:1]
    server.manifest["error"] = [
        {"type": "OperationOutcome", "url": "https://fhir.example.dk/files/err.ndjson"}
    ]
    caplog.set_level(logging.INFO)
    result = mock_client(server, FakeTime(), StaticTokens("t0k3n")).export(tmp_path)
    assert result.error_files == [tmp_path / "errors" / "OperationOutcome.ndjson"]
    assert (result.error_count, result.warning_count, result.information_count) == (3, 1, 2)
    assert result.has_errors
    texts = [o["issue"][0]["diagnostics"] for o in result.outcomes() if "issue" in o]
    assert texts[:2] == ["Observation/x unreadable", "Condition/y unreadable"]
    assert "3 error(s), 1 warning(s) and 2 information message(s)" in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]  # the caller says it
    assert "unreadable" not in caplog.text  # diagnostics may name patients: not logged


def deleting(*urls: str) -> bytes:
    entries = [{"request": {"method": "DELETE", "url": url}} for url in urls]
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": entries}
    return json.dumps(bundle).encode() + b"\n"


def test_deleted_files_are_downloaded_apart_from_the_data(tmp_path: Path) -> None:
    deleted = deleting("Observation/o1", "Patient/p1") + deleting(f"{MOCK_BASE}/Condition/c-1")
    server = MockServer(files={"/files/Observation.ndjson": NDJSON, "/files/del.ndjson": deleted})
    server.manifest["output"] = server.manifest["output"][:1]
    server.manifest["deleted"] = [
        {"type": "Bundle", "url": "https://fhir.example.dk/files/del.ndjson", "count": 2}
    ]
    result = mock_client(server, FakeTime(), StaticTokens("t0k3n")).export(tmp_path)
    assert result.deleted_files == [tmp_path / DELETED_DIR / "Bundle.ndjson"]
    assert list(result.files) == ["Observation"]  # the deletions are not data
    found = deleted_resources(result.deleted_files)
    assert found.names == {"Observation/o1", "Patient/p1", "Condition/c-1"}
    assert found.unreadable == ()


def test_what_a_deleted_file_cannot_say_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "Bundle.ndjson"
    path.write_bytes(
        deleting("Observation/o1")
        + b"\n"  # a blank line is no entry
        + deleting("Patient?identifier=0101010101", "Patient/p2")  # conditional: not applied
        + b'{"resourceType": "Patient", "id": "p3"}\n'
        + b"not json\n"
        + json.dumps(
            {"resourceType": "Bundle", "entry": [{"request": {"method": "PUT", "url": "Goal/g"}}]}
        ).encode()
    )
    found = deleted_resources([path])
    assert found.names == {"Observation/o1", "Patient/p2"}
    assert found.unreadable == (
        "Bundle.ndjson:3: an entry without a DELETE request of a Type/id url",
        "Bundle.ndjson:4: not a Bundle",
        "Bundle.ndjson:5: not JSON",
        "Bundle.ndjson:6: an entry without a DELETE request of a Type/id url",
    )


def test_deleted_files_are_read_gzipped_or_with_a_byte_order_mark(tmp_path: Path) -> None:
    """As the ingest reads NDJSON: a gzip file told by its bytes, a BOM ignored (both were
    'not JSON', so nothing was deleted)."""
    (tmp_path / "Bundle.ndjson.gz").write_bytes(gzip.compress(deleting("Patient/p1")))
    (tmp_path / "named.ndjson").write_bytes(gzip.compress(deleting("Goal/g1")))
    (tmp_path / "bom.ndjson").write_bytes(codecs.BOM_UTF8 + deleting("Observation/o1"))
    found = deleted_resources(sorted(tmp_path.iterdir()))
    assert found.names == {"Patient/p1", "Goal/g1", "Observation/o1"}
    assert found.unreadable == ()
    (tmp_path / "broken.ndjson.gz").write_bytes(gzip.compress(deleting("Patient/p2"))[:-8])
    with pytest.raises(FhirInputError, match=r"broken\.ndjson\.gz: not a readable gzip"):
        deleted_resources([tmp_path / "broken.ndjson.gz"])


def test_files_elsewhere_get_no_token(tmp_path: Path) -> None:
    """A file on another origin is refused when it needs the token, else fetched without it."""
    server = MockServer(files={"/files/Observation.ndjson": NDJSON})
    server.manifest["output"][0]["url"] = "https://storage.example.net/files/Observation.ndjson"
    client = mock_client(server, FakeTime(), StaticTokens("t0k3n"))
    with pytest.raises(DownloadFailed, match="another origin"):
        client.export(tmp_path / "a")
    assert not server.file_requests()

    server.manifest["requiresAccessToken"] = False
    client.export(tmp_path / "b")
    download = server.file_requests()[0]
    assert download.url.host == "storage.example.net"
    assert "Authorization" not in download.headers


def test_manifest_needing_a_token_without_a_token_source(tmp_path: Path) -> None:
    client = mock_client(MockServer(), FakeTime())
    with pytest.raises(FhirUnauthorized, match="no token source"):
        client.export(tmp_path)


def test_manifest_type_cannot_leave_the_directory(tmp_path: Path) -> None:
    server = MockServer()
    server.manifest["output"][0]["type"] = "../../etc"
    with pytest.raises(FhirUnavailable, match="invalid type"):
        mock_client(server, FakeTime(), StaticTokens("t0k3n")).export(tmp_path)


def _entry(**changes: Any) -> dict[str, Any]:
    entry = {"type": "Observation", "url": "https://fhir.example.dk/files/Observation.ndjson"}
    return {**entry, "count": 40, **changes}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"transactionTime": "yesterday"}, "no valid transactionTime"),
        ({"transactionTime": None}, "no valid transactionTime"),
        ({"request": 42}, "no request URL"),
        ({"requiresAccessToken": "false"}, "requiresAccessToken is not a boolean"),
        ({"output": None}, "output is not a list"),
        ({"output": {"type": "Observation"}}, "output is not a list"),
        ({"output": ["Observation.ndjson"]}, "output list has a malformed entry"),
        ({"output": [_entry(url="")]}, "output list has an entry without url"),
        ({"output": [_entry(count="40")]}, "output list has a non-integer count"),
        ({"output": [_entry(count=True)]}, "output list has a non-integer count"),
        ({"output": [_entry(count=-1)]}, "output list has a negative count"),
        ({"error": "none"}, "error is not a list"),
        ({"deleted": [_entry(type="Bundle/..")]}, "deleted list names an invalid type"),
    ],
)
def test_an_unusable_manifest_is_a_server_fault(
    tmp_path: Path, change: dict[str, Any], message: str
) -> None:
    """Every field of the manifest is checked before anything is downloaded or written."""
    server = MockServer()
    server.manifest = {**server.manifest, **change}
    with pytest.raises(FhirUnavailable, match=message):
        mock_client(server, FakeTime(), StaticTokens("t0k3n")).export(tmp_path)
    assert server.file_requests() == []
    assert not (tmp_path / "Observation.ndjson").exists()


def test_a_manifest_that_is_not_an_object(tmp_path: Path) -> None:
    server = MockServer(status=[httpx2.Response(200, json=[{"type": "Observation"}])])
    with pytest.raises(FhirUnavailable, match="not a JSON object"):
        mock_client(server, FakeTime(), StaticTokens("t0k3n")).export(tmp_path)


def test_a_manifest_without_requires_access_token_is_taken_to_need_one(tmp_path: Path) -> None:
    """Required by the IG; when it is missing the token is sent (only to the server's origin)."""
    server = MockServer()
    del server.manifest["requiresAccessToken"]
    mock_client(server, FakeTime(), StaticTokens("t0k3n")).export(tmp_path)
    assert all(r.headers["Authorization"] == "Bearer t0k3n" for r in server.file_requests())


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"poll_interval": 0.1}, "min_poll_interval"),
        ({"min_poll_interval": 0}, "min_poll_interval"),
        ({"max_poll_interval": 1.0}, "min_poll_interval"),
        ({"max_polls": 0}, "max_polls"),
        ({"download_attempts": 0}, "download_attempts"),
        ({"max_retries": -1}, "max_retries"),
    ],
)
def test_client_options_are_checked(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        mock_client(MockServer(), FakeTime(), **options)


@pytest.mark.parametrize(
    "base",
    ["ftp://fhir.example.dk/fhir", "https://fhir.example.dk/fhir?x=1", "/fhir", "https:///fhir"],
)
def test_the_base_url_must_be_an_http_fhir_base(base: str) -> None:
    with pytest.raises(ValueError, match="base_url"):
        BulkExportClient(httpx2.Client(), base)


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        ({"level": "practice"}, "level must be"),
        ({"level": "group"}, "needs group_id"),
        ({"level": "group", "group_id": "../Patient"}, "needs group_id"),
        ({"level": "patient", "group_id": "g1"}, "only for level='group'"),
        ({"types": "Patient"}, "must be a list"),
        ({"types": ["Patient", "observation"]}, "not a FHIR resource type"),
    ],
)
def test_an_export_request_is_checked_before_it_is_sent(
    request_: dict[str, Any], message: str
) -> None:
    server = MockServer()
    with pytest.raises(ValueError, match=message):
        mock_client(server, FakeTime()).kick_off(**request_, deadline=_in(10))
    assert server.requests == []


def test_failed_delete_is_reported_not_raised(tmp_path: Path) -> None:
    server = MockServer(delete=httpx2.Response(500))
    result = mock_client(server, FakeTime(), StaticTokens("t0k3n")).export(tmp_path)
    assert result.job_deleted is False
    assert isinstance(result.cleanup_error, FhirUnavailable)
    assert (tmp_path / "Observation.ndjson").read_bytes() == NDJSON


def test_rerun_after_completion_needs_no_server(tmp_path: Path) -> None:
    server = MockServer()
    client = mock_client(server, FakeTime(), StaticTokens("t0k3n"))
    first = client.export(tmp_path)
    sent = len(server.requests)
    second = client.export(tmp_path)
    assert len(server.requests) == sent  # complete, verified from disk, job already deleted
    assert second.files == first.files and second.job_deleted


def test_utc_since_from_aware_datetime() -> None:
    server = MockServer()
    client = mock_client(server, FakeTime())
    client.kick_off(since=datetime(2025, 6, 1, tzinfo=UTC), deadline=_in(10))
    assert server.requests[0].url.params["_since"] == "2025-06-01T00:00:00.000Z"


def test_a_rerun_after_a_failed_job_starts_a_new_one(tmp_path: Path) -> None:
    """The server keeps reporting the failed job; re-running must not poll it for ever."""
    outcome = {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": "exception", "diagnostics": "worker crashed"}],
    }
    jobs: list[int] = []
    files = MockServer()

    def server(request: httpx2.Request) -> httpx2.Response:
        path = request.url.path
        if path.endswith("$export"):
            jobs.append(len(jobs) + 1)
            return httpx2.Response(202, headers={"Content-Location": f"{MOCK_BASE}/job/{jobs[-1]}"})
        if path == "/fhir/job/1":
            return httpx2.Response(500, json=outcome)
        if path == "/fhir/job/2":
            return (
                httpx2.Response(202)
                if request.method == "DELETE"
                else files(httpx2.Request("GET", f"{MOCK_BASE}/status/1"))
            )
        return files(request)

    fake = FakeTime()
    with pytest.raises(ExportFailed):
        mock_client(server, fake, StaticTokens("t0k3n")).export(tmp_path)
    result = mock_client(server, fake, StaticTokens("t0k3n")).export(tmp_path)
    assert jobs == [1, 2]
    assert (tmp_path / "Observation.ndjson").read_bytes() == NDJSON
    assert result.status_url == f"{MOCK_BASE}/job/2"


def test_transient_retries_are_counted_per_run_of_errors_not_per_export(tmp_path: Path) -> None:
    """A long export behind a flaky load balancer: a 503 now and then, between 202s."""
    flaky = [httpx2.Response(202), httpx2.Response(503, headers={"Retry-After": "1"})] * 8
    server = MockServer(status=flaky)
    result = mock_client(server, FakeTime(), StaticTokens("t0k3n"), max_retries=2).export(tmp_path)
    assert (tmp_path / "Observation.ndjson").read_bytes() == NDJSON
    assert result.job_deleted is True


def test_throttling_without_end_is_not_a_failed_export(tmp_path: Path) -> None:
    server = MockServer(status=[httpx2.Response(429, headers={"Retry-After": "1"})] * 10)
    with pytest.raises(FhirUnavailable) as caught:
        mock_client(server, FakeTime(), StaticTokens("t0k3n"), max_retries=2).export(tmp_path)
    assert not isinstance(caught.value, ExportFailed)
    assert caught.value.status == 429


class TrickleStream(httpx2.SyncByteStream):
    """A body sent a byte at a time, each byte ``delay`` seconds on the fake clock apart."""

    def __init__(self, data: bytes, fake: FakeTime, delay: float) -> None:
        self.data, self.fake, self.delay = data, fake, delay

    def __iter__(self) -> Iterator[bytes]:
        for byte in self.data:
            self.fake.now += self.delay
            yield bytes([byte])


def test_a_trickling_status_answer_cannot_outlast_the_budget(tmp_path: Path) -> None:
    fake = FakeTime()
    manifest = json.dumps(MockServer().manifest).encode()  # ~300 bytes, 2 s apart: 10 minutes

    def server(request: httpx2.Request) -> httpx2.Response:
        if request.url.path.endswith("$export"):
            return httpx2.Response(202, headers={"Content-Location": f"{MOCK_BASE}/status/1"})
        return httpx2.Response(200, stream=TrickleStream(manifest, fake, 2.0))

    started = fake.clock()
    with pytest.raises(ExportTimeout):
        mock_client(server, fake, StaticTokens("t0k3n")).export(tmp_path, timeout=30)
    assert fake.clock() - started <= 32


def test_a_retry_after_of_non_ascii_digits_is_ignored(tmp_path: Path) -> None:
    fake = FakeTime()
    odd = "\u00b2".encode()  # "²": str.isdigit() says yes, float() says no
    server = MockServer(status=[httpx2.Response(202, headers={"Retry-After": odd})])
    mock_client(server, fake, StaticTokens("t0k3n"), poll_interval=3.0).export(tmp_path)
    assert fake.sleeps == [3.0]


# --- downloads nothing proves whole, expired files, busy servers ------------------------------

GZIPPED = gzip.compress(NDJSON)
HALF = len(NDJSON) // 2 + 7  # inside a line


def first_answer(server: MockServer, answer: httpx2.Response) -> Callable[..., httpx2.Response]:
    """``server``, but the first file download gets ``answer``."""
    answers = [answer]

    def handler(request: httpx2.Request) -> httpx2.Response:
        if "/files/" in request.url.path and answers:
            server.requests.append(request)
            return answers.pop(0)
        return server(request)

    return handler


@pytest.mark.parametrize(
    ("headers", "body"),
    [
        ({}, NDJSON[:HALF]),  # no Content-Length: the connection closed half-way
        ({"Content-Encoding": "gzip"}, GZIPPED[: len(GZIPPED) * 2 // 3]),
        ({"Content-Encoding": "gzip", "Content-Length": "150"}, GZIPPED[:150]),  # sized as cut
    ],
    ids=["cut", "gzip-cut", "gzip-short"],
)
def test_a_download_nothing_proves_whole_is_resumed(
    tmp_path: Path, headers: dict[str, str], body: bytes
) -> None:
    """Without a manifest count, a body cut short was taken as the whole file (data lost, the
    job deleted); now the end of the gzip stream, or a last line ended by a newline, is needed."""
    server = MockServer()
    del server.manifest["output"][0]["count"]
    cut = httpx2.Response(200, headers=headers, stream=httpx2.ByteStream(body))
    client = mock_client(first_answer(server, cut), FakeTime(), StaticTokens("t0k3n"))
    client.export(tmp_path)
    assert (tmp_path / "Observation.ndjson").read_bytes() == NDJSON
    first, resumed = server.file_requests()
    assert first.headers["Accept-Encoding"] == "gzip"
    assert resumed.headers["Accept-Encoding"] == "identity" and "Range" in resumed.headers


def test_a_file_never_proven_whole_is_not_taken(tmp_path: Path) -> None:
    server = MockServer()
    del server.manifest["output"][0]["count"]
    unsized = [httpx2.Response(200, stream=httpx2.ByteStream(NDJSON[:HALF])) for _ in range(3)]

    def handler(request: httpx2.Request) -> httpx2.Response:
        return unsized.pop(0) if "/files/" in request.url.path else server(request)

    with pytest.raises(DownloadFailed, match=r"interrupted 3 times .*ends inside a line"):
        mock_client(handler, FakeTime(), StaticTokens("t0k3n")).export(tmp_path)
    assert not (tmp_path / "Observation.ndjson").exists()
    assert (tmp_path / "Observation.ndjson.part").read_bytes() == NDJSON[:HALF]


def test_a_gzipped_download_is_decoded_whole(tmp_path: Path) -> None:
    """Two gzip members (RFC 1952 allows several), one chunk at a time."""
    members = gzip.compress(NDJSON[:HALF]) + gzip.compress(NDJSON[HALF:])
    gzipped = httpx2.Response(200, headers={"Content-Encoding": "gzip"}, stream=Chunks(members))
    server = MockServer()
    mock_client(first_answer(server, gzipped), FakeTime(), StaticTokens("t0k3n")).export(tmp_path)
    assert (tmp_path / "Observation.ndjson").read_bytes() == NDJSON
    assert len(server.file_requests()) == 1


def test_files_gone_from_the_server_start_a_new_export(tmp_path: Path) -> None:
    """The job's files expired half-way: a new job, and none of the old job's files kept (the
    CLI's store was stuck: every run tried the old files, and the message said to start a new
    export in a new directory, which a CLI user cannot do)."""
    newer = NDJSON.replace(b'"final"', b'"amended"')
    server = MockServer(files={"/files/a.ndjson": NDJSON, "/files/b.ndjson": NDJSON})
    kickoffs: list[httpx2.Request] = []

    def handler(request: httpx2.Request) -> httpx2.Response:
        if request.url.path.endswith("$export"):
            kickoffs.append(request)
            if len(kickoffs) == 2:
                server.files["/files/a.ndjson"] = newer
        if request.url.path == "/files/b.ndjson" and len(kickoffs) == 1:
            return httpx2.Response(404)
        return server(request)

    result = mock_client(handler, FakeTime(), StaticTokens("t0k3n")).export(tmp_path)
    assert len(kickoffs) == 2
    assert (tmp_path / "Observation.1.ndjson").read_bytes() == newer  # not the old job's file
    assert (tmp_path / "Observation.2.ndjson").read_bytes() == NDJSON
    assert result.job_deleted


def test_files_gone_again_are_reported_once_per_run(tmp_path: Path) -> None:
    server = MockServer()

    def handler(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(410) if "/files/" in request.url.path else server(request)

    with pytest.raises(ExportExpired, match="a re-run of the export starts a new one"):
        mock_client(handler, FakeTime(), StaticTokens("t0k3n")).export(tmp_path)
    assert [r.url.path.endswith("$export") for r in server.requests].count(True) == 2


def test_a_busy_server_is_asked_again_for_a_file(tmp_path: Path) -> None:
    fake = FakeTime()
    busy = [httpx2.Response(503, headers={"Retry-After": "4"}), httpx2.Response(429)]
    server = MockServer()

    def handler(request: httpx2.Request) -> httpx2.Response:
        if "/files/" in request.url.path and busy:
            return busy.pop(0)
        return server(request)

    mock_client(handler, fake, StaticTokens("t0k3n"), poll_interval=3.0).export(tmp_path)
    assert fake.sleeps == [4.0, 6.0]
    assert (tmp_path / "Observation.ndjson").read_bytes() == NDJSON


def test_a_server_busy_for_too_long_keeps_the_export_resumable(tmp_path: Path) -> None:
    server = MockServer()

    def handler(request: httpx2.Request) -> httpx2.Response:
        if "/files/" in request.url.path:
            return httpx2.Response(503, headers={"Retry-After": "1"})
        return server(request)

    client = mock_client(handler, FakeTime(), StaticTokens("t0k3n"), max_retries=2)
    with pytest.raises(FhirUnavailable, match="HTTP 503 3 times in a row"):
        client.export(tmp_path)
    assert json.loads((tmp_path / STATE_FILE).read_text())["manifest"] == server.manifest


TOKEN = "eyJhbGciOiJFUzM4NCJ9.c2VjcmV0.dG9rZW4"


def echoing(status: int, prefix: str = "") -> Callable[[httpx2.Request], httpx2.Response]:
    """An error answer whose OperationOutcome echoes the request's token."""

    def answer(request: httpx2.Request) -> httpx2.Response:
        token = request.headers["Authorization"].removeprefix("Bearer ")
        issue = {"severity": "error", "code": "invalid", "diagnostics": f"{prefix}bad {token}"}
        return httpx2.Response(status, json={"resourceType": "OperationOutcome", "issue": [issue]})

    return answer


@pytest.mark.parametrize(
    ("path", "status", "error"),
    [
        ("$export", 400, FhirRejected),
        ("/fhir/status/1", 500, ExportFailed),
        ("/files/", 500, DownloadFailed),
        ("/files/", 403, FhirUnauthorized),
    ],
)
def test_an_echoed_token_is_not_in_the_diagnostics(
    tmp_path: Path, path: str, status: int, error: type[Exception]
) -> None:
    server = MockServer()
    for prefix in ("", "x" * 290):  # also where the diagnostics are cut, inside the token
        answer = echoing(status, prefix)

        def handler(request: httpx2.Request, answer: Any = answer) -> httpx2.Response:
            return answer(request) if path in request.url.path else server(request)

        with pytest.raises(error) as caught:
            mock_client(handler, FakeTime(), StaticTokens(TOKEN)).export(tmp_path / prefix[:1])
        assert caught.value.diagnostics is not None
        assert caught.value.diagnostics.startswith(f"{prefix}bad [tok")
        assert TOKEN[:12] not in caught.value.diagnostics


def test_polling_is_bounded_by_the_time_budget_alone(tmp_path: Path) -> None:
    """A 6-hour budget ended after 10,000 polls (2.8 hours when a server asks for one a second):
    the budget is what counts."""
    fake = FakeTime()
    server = MockServer(status=[httpx2.Response(202, headers={"Retry-After": "2"})] * 11_000)
    client = mock_client(server, fake, StaticTokens("t0k3n"))
    with pytest.raises(ExportTimeout, match="time budget"):
        client.export(tmp_path, timeout=6 * 3600)
    assert fake.sleeps == [2.0] * (3 * 3600)  # 10,801 polls
