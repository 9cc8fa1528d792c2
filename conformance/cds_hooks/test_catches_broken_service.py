"""The suite fails a service that makes the mistakes CDS_HOOKS.md lists (HAPI, cqf-ruler, AHRQ).

A conformance suite that passes everything proves nothing: this test points it at a small
service that gets every rule wrong (answers 200 to anything, never fetches, plain-text errors,
a 500 on feedback, cards without uuid or source, raw HTML, invalid FHIR in a suggestion, the
standard's own invalid ``sort:desc`` template) and checks each check's verdict.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from conformance.cds_hooks.checks import CheckResult, Status, SuiteConfig
from conformance.cds_hooks.suite import CHECK_NAMES, run_suite

DISCOVERY = {
    "services": [
        {
            "hook": "patient-view",
            "id": "broken",
            "title": "",
            "description": "Gets every rule wrong",
            "prefetch": {
                "patient": "Patient/{{context.patientId}}",
                "a1c": "Observation?patient={{context.patientId}}&code=4548-4&_count=1&sort:desc=date",
            },
        }
    ]
}
CARDS = {
    "cards": [
        {
            "uuid": None,
            "summary": "x" * 150,
            "indicator": "hard-stop",
            "detail": "<b>Raw HTML</b>",
            "source": {"label": ""},
            "suggestions": [
                {"label": "Order", "actions": [{"type": "create", "resource": {"x": 1}}]}
            ],
            "overrideReasons": [{"code": "no-display"}],
            "links": [{"label": "More", "url": "/relative", "type": "absolute", "appContext": "c"}],
        }
    ]
}

EXPECTED: dict[str, Status] = {
    "discovery.shape": Status.failed,  # title ""
    "discovery.prefetch_tokens": Status.failed,  # sort:desc=date
    "request.complete_prefetch": Status.passed,
    "request.spec_example": Status.passed,
    "request.missing_hook_400": Status.failed,
    "request.missing_hook_instance_400": Status.failed,
    "request.missing_context_400": Status.failed,
    "request.empty_context_400": Status.failed,
    "request.missing_patient_400": Status.failed,
    "request.wrong_hook_400": Status.failed,
    "request.non_json_400": Status.failed,
    "request.unknown_service_404": Status.passed,
    "request.extension_ignored": Status.passed,
    "prefetch.absent_keys_without_fhirserver_412": Status.failed,
    "prefetch.null_is_no_data": Status.passed,  # answering 200 without fetching is right here
    "prefetch.empty_bundle_is_no_data": Status.passed,
    "prefetch.operation_outcome_is_absent": Status.failed,
    "prefetch.none_without_fhirserver_412": Status.failed,
    "prefetch.none_sent_all_fetched": Status.failed,  # never fetches
    "prefetch.fetches_only_missing_keys": Status.failed,  # never fetches (cqf-ruler #536)
    "prefetch.operation_outcome_refetched": Status.failed,
    "prefetch.follows_next_links": Status.failed,
    "prefetch.fhir_server_failure_412": Status.failed,
    "cards.required_fields": Status.failed,
    "cards.no_empty_values": Status.failed,
    "cards.suggestions": Status.failed,
    "cards.override_reasons": Status.failed,
    "cards.links": Status.failed,
    "feedback.accepts_and_is_idempotent": Status.not_run,  # no card uuid to give feedback on
    "feedback.malformed_400": Status.failed,  # a 500 with a trace
    **{name: Status.not_run for name in CHECK_NAMES if name.startswith("jwt.")},
    "cors.preflight": Status.not_run,  # no CORS headers for the probe origin
    "cors.actual_response": Status.not_run,
    "request.latency": Status.passed,
    "request.errors_are_operation_outcomes": Status.failed,  # plain-text 404 and 500
    "request.no_server_errors": Status.failed,
}


class BrokenService(BaseHTTPRequestHandler):
    """Everything a CDS service should not do."""

    def _send(self, status: int, body: Any, content_type: str = "application/json") -> None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        if self.path == "/cds-services":
            self._send(200, DISCOVERY)
        else:
            self._send(404, b"Not Found", "text/plain")

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        if self.path == "/cds-services/broken":
            self._send(200, CARDS)
        elif self.path == "/cds-services/broken/feedback":
            trace = b'Traceback (most recent call last):\n  File "app.py", line 1\nKeyError: card'
            self._send(500, trace, "text/plain")
        else:
            self._send(404, b"Not Found", "text/plain")

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet."""


@pytest.fixture(scope="module")
def results() -> Iterator[dict[str, CheckResult]]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), BrokenService)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        host, port = server.server_address[:2]
        config = SuiteConfig(base_url=f"http://{host}:{port}", timeout=5.0)
        yield {result.name: result for result in run_suite(config)}
    finally:
        server.shutdown()
        server.server_close()


def test_every_check_has_an_expectation() -> None:
    assert set(EXPECTED) == set(CHECK_NAMES)


@pytest.mark.parametrize("name", CHECK_NAMES)
def test_verdict(name: str, results: dict[str, CheckResult]) -> None:
    result = results[name]
    assert result.status is EXPECTED[name], f"{result.status}: {result.reason}"
    assert result.reason, "every verdict says why"
    if result.status is Status.failed:
        assert "could not complete" not in result.reason


def test_failures_quote_the_response(results: dict[str, CheckResult]) -> None:
    result = results["request.missing_hook_400"]
    assert result.reason == "a request without hook: expected HTTP 400, got HTTP 200"
    assert "-> HTTP 200" in result.snippet and "hard-stop" in result.snippet
    assert "Traceback" in results["request.no_server_errors"].snippet
