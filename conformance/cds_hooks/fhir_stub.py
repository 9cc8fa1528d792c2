"""A tiny FHIR server the service under test can fetch missing prefetch data from.

Whether a service fetches *only* the keys it was not sent, with the client's bearer token, and
follows ``next`` links can only be seen from the FHIR server's side. The stub serves the test
patient over loopback and records every request. Each check gets its own base URL
(``http://127.0.0.1:PORT/<scenario>/fhir``), so requests are attributed to the check that caused
them and each scenario can behave differently (serve, fail with 500) without shared state.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from conformance.cds_hooks.fixture import Patient, answer, searchset

PAGE_PARAMETER = "_conformance_page"
"""Marks the second page of a paged search; the stub's own ``next`` links carry it."""


@dataclass(frozen=True, slots=True)
class StubRequest:
    """One GET the service made: the path below the scenario's FHIR base, and its header."""

    path: str
    query: tuple[tuple[str, str], ...]
    authorization: str | None

    @property
    def resource_type(self) -> str:
        return self.path.strip("/").split("/")[0]

    def describe(self) -> str:
        query = "&".join(f"{k}={v}" for k, v in self.query)
        return f"GET {self.path}{'?' + query if query else ''}"


@dataclass
class Scenario:
    """How one check's base URL behaves, and what it was asked."""

    mode: str  # "serve" | "fail"
    second_page: list[dict[str, Any]] = field(default_factory=list)
    requests: list[StubRequest] = field(default_factory=list)


class FhirStub:
    """A threaded HTTP server on 127.0.0.1 serving one patient; use as a context manager."""

    def __init__(self, patient: Patient, host: str = "127.0.0.1") -> None:
        self.patient = patient
        self._scenarios: dict[str, Scenario] = {}
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer((host, 0), _handler(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def origin(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> FhirStub:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        if self._thread.is_alive():
            self._server.shutdown()
        self._server.server_close()

    def scenario(self, name: str, mode: str = "serve") -> str:
        """Register a scenario and return its FHIR base URL."""
        with self._lock:
            self._scenarios[name] = Scenario(mode)
        return f"{self.origin}/{name}/fhir"

    def set_second_page(self, name: str, resources: list[dict[str, Any]]) -> None:
        with self._lock:
            self._scenarios[name].second_page = resources

    def requests(self, name: str) -> list[StubRequest]:
        with self._lock:
            return list(self._scenarios[name].requests)

    def _respond(self, raw_path: str, authorization: str | None) -> tuple[int, Any]:
        parts = urlsplit(raw_path)
        name, _, rest = parts.path.strip("/").partition("/")
        if not rest.startswith("fhir"):
            return 404, _outcome("not-found", "unknown path")
        path = rest.removeprefix("fhir").strip("/")
        query = tuple(parse_qsl(parts.query, keep_blank_values=True))
        with self._lock:
            scenario = self._scenarios.get(name)
            if scenario is None:
                return 404, _outcome("not-found", "unknown scenario")
            scenario.requests.append(StubRequest(path, query, authorization))
            mode, second_page = scenario.mode, list(scenario.second_page)
        if mode == "fail":
            return 500, _outcome("exception", "the conformance stub fails this scenario on purpose")
        if any(key == PAGE_PARAMETER for key, _ in query):
            return 200, searchset(second_page)
        relative = path + ("?" + parts.query if parts.query else "")
        result = answer(relative, self.patient)
        if result is None:
            return 404, _outcome("not-found", f"no {path}")
        return 200, result


def _outcome(code: str, text: str) -> dict[str, Any]:
    return {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": code, "diagnostics": text}],
    }


def _handler(stub: FhirStub) -> Callable[..., BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        """GET only; everything else is 405, as a read-only FHIR server would answer."""

        def do_GET(self) -> None:
            status, body = stub._respond(self.path, self.headers.get("Authorization"))
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/fhir+json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self) -> None:
            self.send_error(405)

        def log_message(self, format: str, *args: Any) -> None:
            """Silent: the suite reports what matters."""

    return Handler
