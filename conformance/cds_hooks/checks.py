"""The checks: one function per requirement of CDS_HOOKS.md, run in order against one service.

A check sends what it needs through the shared :class:`Context` and either returns a short note
(pass), raises :class:`Failed` with a plain-words reason and the response that broke the rule,
or raises :class:`NotRun` when it cannot be checked here (no signing key, no cards to inspect, a
service the suite's stub FHIR server cannot reach). "Not run" is never counted as passed.

Order matters only in one way: checks that look back over the whole run (error bodies, server
errors, latency, 401 bodies, cards) come after the checks whose responses they inspect.
"""

from __future__ import annotations

import copy
import datetime as dt
import statistics
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from conformance.cds_hooks import rules
from conformance.cds_hooks.client import Exchange, ServiceClient, Signer
from conformance.cds_hooks.fhir_stub import PAGE_PARAMETER, FhirStub, StubRequest
from conformance.cds_hooks.fixture import (
    HOOKS_REQUIRING_PATIENT,
    SPEC_EXAMPLE,
    Patient,
    answer,
    context_for,
    fill,
    full_prefetch,
    request_body,
    searchset,
    spec_example,
)

LATENCY_BUDGET_SECONDS = 0.5
"""CDS Hooks asks for a response "on the order of 500 ms"; checked on the median call."""

LATENCY_PROBES = 5
"""Extra complete-prefetch calls timed by request.latency, on top of those made before it."""

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
PROBE_ORIGIN = "https://ehr.example.org"
"""The Origin of the CORS probe when no ``--cors-origin`` is given."""

LEAKY_WORDS = (
    "expired",
    "audience",
    "aud",
    "signature",
    "jti",
    "replay",
    "alg",
    "hs256",
    "hmac",
    "kid",
    "iss",
    "issuer",
    "exp",
    "claim",
    "key",
)
"""Words a 401 must not contain: each would tell an attacker which check the token failed."""


class Status(StrEnum):
    passed = "passed"
    failed = "failed"
    not_run = "not run"


@dataclass(frozen=True, slots=True)
class CheckResult:
    name: str
    status: Status
    reason: str = ""
    snippet: str = ""

    def as_json(self) -> dict[str, str]:
        result = {"name": self.name, "status": self.status.value}
        if self.reason:
            result["reason"] = self.reason
        if self.snippet:
            result["snippet"] = self.snippet
        return result


class Failed(Exception):  # noqa: N818 (reads as the outcome)
    """The service broke the rule; ``exchange`` is the response that shows it."""

    def __init__(self, reason: str, exchange: Exchange | None = None, snippet: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.snippet = exchange.snippet() if exchange is not None else snippet


class NotRun(Exception):  # noqa: N818 (reads as the outcome)
    """The rule could not be checked here; the reason says what would make it checkable."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class SuiteConfig:
    """What the suite needs to know about the service under test."""

    base_url: str
    service_id: str | None = None
    signer: Signer | None = None
    patient_bundle: Path | None = None
    cors_origin: str | None = None
    timeout: float = 10.0


@dataclass
class Context:
    """The state shared by the checks of one run: the service, the patient, what was seen."""

    config: SuiteConfig
    client: ServiceClient
    patient: Patient
    card_responses: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    unauthorized: list[Exchange] = field(default_factory=list)
    _discovery: Exchange | None = None
    _services: list[dict[str, Any]] | None = None
    _service: dict[str, Any] | None = None
    _main: Exchange | None = None
    _stub: FhirStub | None = None

    # --- discovery and the service under test ---------------------------------------------

    def discovery(self) -> Exchange:
        if self._discovery is None:
            self._discovery = self.client.get("/cds-services")
        return self._discovery

    def services(self) -> list[dict[str, Any]]:
        if self._services is None:
            exchange = self.discovery()
            body = exchange.json()
            if exchange.status != 200 or not isinstance(body, dict):
                raise NotRun(f"discovery failed ({_status(exchange)}): see discovery.shape")
            services = body.get("services")
            if not isinstance(services, list):
                raise NotRun("discovery has no services array: see discovery.shape")
            self._services = [s for s in services if isinstance(s, dict)]
        return self._services

    def service(self) -> dict[str, Any]:
        """The service the request checks call: --service-id, else the first patient-view."""
        if self._service is None:
            services = self.services()
            wanted = self.config.service_id
            if wanted is not None:
                chosen = next((s for s in services if s.get("id") == wanted), None)
                if chosen is None:
                    raise NotRun(f"discovery lists no service '{wanted}': see discovery.shape")
            else:
                chosen = next((s for s in services if s.get("hook") == "patient-view"), None)
                chosen = chosen or (services[0] if services else None)
                if chosen is None:
                    raise NotRun("discovery lists no services: nothing to call")
            if not isinstance(chosen.get("id"), str) or not isinstance(chosen.get("hook"), str):
                raise NotRun("the chosen service has no id or hook: see discovery.shape")
            self._service = chosen
        return self._service

    @property
    def hook(self) -> str:
        return str(self.service()["hook"])

    @property
    def path(self) -> str:
        return f"/cds-services/{self.service()['id']}"

    def templates(self) -> dict[str, str]:
        prefetch = self.service().get("prefetch")
        if not isinstance(prefetch, dict):
            return {}
        return {k: v for k, v in prefetch.items() if isinstance(v, str)}

    def search_keys(self) -> list[str]:
        return [key for key, template in self.templates().items() if "?" in template]

    def read_keys(self) -> list[str]:
        return [key for key, template in self.templates().items() if "?" not in template]

    # --- requests ----------------------------------------------------------------------------

    def context(self) -> dict[str, Any]:
        return context_for(self.hook, self.patient)

    def prefetch(self) -> dict[str, Any]:
        return full_prefetch(self.templates(), self.context(), self.patient)

    def body(self, prefetch: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
        """A request for the service's hook; the complete prefetch unless one is given."""
        chosen = self.prefetch() if prefetch is None else prefetch
        return request_body(self.hook, self.context(), chosen, **extra)

    def call(
        self,
        body: Any,
        label: str,
        *,
        valid: bool = True,
        headers: dict[str, str] | None = None,
        authorization: str | None = "auto",
    ) -> Exchange:
        """POST to the service. A 200 with cards to a ``valid`` request is kept for the card
        checks and timed; answers to requests that should have been refused are not."""
        exchange = self.client.post(self.path, body, headers=headers, authorization=authorization)
        payload = exchange.json()
        if valid and exchange.status == 200 and isinstance(payload, dict):
            if isinstance(payload.get("cards"), list):
                self.card_responses.append((label, payload))
            if isinstance(body, dict) and "fhirServer" not in body:
                self.latencies.append(exchange.elapsed)
        return exchange

    def main(self) -> Exchange:
        """The service's answer to the complete prefetch: the baseline many checks compare to."""
        if self._main is None:
            self._main = self.call(self.body(), "complete prefetch")
        return self._main

    def main_cards(self) -> list[dict[str, Any]]:
        exchange = self.main()
        body = exchange.json()
        if exchange.status != 200 or not isinstance(body, dict):
            raise NotRun(f"the complete-prefetch request failed ({_status(exchange)})")
        return [c for c in body.get("cards") or [] if isinstance(c, dict)]

    def stub(self) -> FhirStub:
        """The loopback FHIR server; only a service on this machine can reach it."""
        host = urlsplit(self.config.base_url).hostname
        if host not in LOOPBACK_HOSTS:
            raise NotRun(
                f"the service at {host} cannot reach the suite's FHIR stub on this machine's "
                "loopback; run the suite on the service's host to check FHIR fetching"
            )
        if self._stub is None:
            self._stub = FhirStub(self.patient).__enter__()
        return self._stub

    def fhir_access(self, stub_base: str) -> dict[str, Any]:
        """fhirServer and fhirAuthorization naming the stub, with a token to look for."""
        return {
            "fhirServer": stub_base,
            "fhirAuthorization": {
                "access_token": f"conformance-{uuid.uuid4().hex}",
                "token_type": "Bearer",
                "expires_in": 300,
                "scope": "user/*.read",
                "subject": "vejviser-conformance",
            },
        }

    def close(self) -> None:
        if self._stub is not None:
            self._stub.close()


CheckFunction = Callable[[Context], str]


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    requirement: str
    function: CheckFunction


CHECKS: list[Check] = []


def check(name: str, requirement: str) -> Callable[[CheckFunction], CheckFunction]:
    """Register a check; ``requirement`` is the rule in one line, as listed by ``--list``."""

    def register(function: CheckFunction) -> CheckFunction:
        CHECKS.append(Check(name, requirement, function))
        return function

    return register


def _status(exchange: Exchange) -> str:
    return exchange.error if exchange.status is None else f"HTTP {exchange.status}"


def expect_status(exchange: Exchange, expected: int, why: str) -> None:
    if exchange.status != expected:
        raise Failed(f"{why}: expected HTTP {expected}, got {_status(exchange)}", exchange)


def expect_cards(exchange: Exchange, why: str) -> list[Any]:
    expect_status(exchange, 200, why)
    body = exchange.json()
    if not isinstance(body, dict) or not isinstance(body.get("cards"), list):
        raise Failed(f"{why}: the body is not an object with a cards array", exchange)
    return body["cards"]


def _summaries(cards: list[Any]) -> list[tuple[str, str]]:
    return sorted(
        (str(c.get("indicator")), str(c.get("summary"))) for c in cards if isinstance(c, dict)
    )


# --- discovery -----------------------------------------------------------------------------------


@check("discovery.shape", "GET {base}/cds-services lists services with hook, id, description")
def discovery_shape(ctx: Context) -> str:
    exchange = ctx.discovery()
    if exchange.status == 401 and ctx.config.signer is None:
        raise Failed(
            "discovery answered 401: the service requires a signed JWT; give --private-key, "
            "--kid and --iss for a key it trusts",
            exchange,
        )
    if exchange.status == 401:
        raise Failed(
            "discovery answered 401 to the suite's signed JWT: check that the service trusts "
            "--kid under --iss, and that --base-url is exactly the URL it is served at (the "
            "token's aud is built from it)",
            exchange,
        )
    expect_status(exchange, 200, "discovery")
    body = exchange.json()
    if not isinstance(body, dict) or not isinstance(body.get("services"), list):
        raise Failed('the body is not {"services": [...]}', exchange)
    problems: list[str] = []
    notes: list[str] = []
    ids: list[str] = []
    for index, service in enumerate(body["services"]):
        found, noted = rules.service_problems(service, f"services[{index}]")
        problems += found
        notes += noted
        if isinstance(service, dict) and isinstance(service.get("id"), str):
            ids.append(service["id"])
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        problems.append(f"service ids repeat: {', '.join(duplicates)}")
    problems += rules.empty_values(body)
    if problems:
        raise Failed(rules.first(problems), exchange)
    wanted = ctx.config.service_id
    if wanted is not None and wanted not in ids:
        raise Failed(f"no service '{wanted}' (listed: {', '.join(ids) or 'none'})", exchange)
    listed = ", ".join(f"{s['id']} ({s['hook']})" for s in body["services"])
    chosen = f"; calling {ctx.service()['id']}" if body["services"] else ""
    return f"{len(ids)} service(s): {listed}{chosen}" + (f"; {'; '.join(notes)}" if notes else "")


@check(
    "discovery.prefetch_tokens",
    "templates use only {{context.<field>}}/user tokens and the query subset (read, type search, "
    "token =/:in, date eq|lt|gt|ge|le, _count, _sort=-x)",
)
def discovery_prefetch_tokens(ctx: Context) -> str:
    problems: list[str] = []
    count = 0
    for service in ctx.services():
        prefetch = service.get("prefetch")
        if not isinstance(prefetch, dict):
            continue
        for key, template in prefetch.items():
            if not isinstance(template, str):
                continue
            count += 1
            for problem in rules.template_problems(template, str(service.get("hook"))):
                problems.append(f"{service.get('id')}.{key}: {problem}")
    if count == 0:
        raise NotRun("no service advertises prefetch templates")
    if problems:
        raise Failed(rules.first(problems), ctx.discovery())
    return f"{count} template(s) checked"


# --- requests ------------------------------------------------------------------------------------


@check("request.complete_prefetch", "a request with every prefetch key filled gets 200 {cards}")
def request_complete_prefetch(ctx: Context) -> str:
    cards = expect_cards(ctx.main(), "the complete-prefetch request")
    return f"{len(cards)} card(s) for Patient/{ctx.patient.id}"


@check(
    "request.spec_example",
    "the standard's own patient-view request (fhirServer, fhirAuthorization, context "
    "userId/patientId/encounterId) with a complete prefetch gets 200 {cards}",
)
def request_spec_example(ctx: Context) -> str:
    if ctx.hook != SPEC_EXAMPLE["hook"]:
        raise NotRun(f"the service under test answers {ctx.hook}, the example is patient-view")
    body = spec_example(ctx.templates(), ctx.patient)
    cards = expect_cards(ctx.call(body, "the standard's example request"), "the example request")
    return f"{len(cards)} card(s) for Patient/{SPEC_EXAMPLE['context']['patientId']}"


def _expect_400(ctx: Context, body: Any, what: str) -> str:
    exchange = ctx.call(body, what, valid=False)
    expect_status(exchange, 400, what)
    return "400"


@check("request.missing_hook_400", "a request without hook is refused with 400")
def request_missing_hook(ctx: Context) -> str:
    body = ctx.body()
    del body["hook"]
    return _expect_400(ctx, body, "a request without hook")


@check("request.missing_hook_instance_400", "a request without hookInstance is refused with 400")
def request_missing_hook_instance(ctx: Context) -> str:
    body = ctx.body()
    del body["hookInstance"]
    return _expect_400(ctx, body, "a request without hookInstance")


@check("request.missing_context_400", "a request without context is refused with 400")
def request_missing_context(ctx: Context) -> str:
    body = ctx.body()
    del body["context"]
    return _expect_400(ctx, body, "a request without context")


@check("request.empty_context_400", "an empty context is a 400, not a 500 (HAPI #5212)")
def request_empty_context(ctx: Context) -> str:
    if ctx.hook not in HOOKS_REQUIRING_PATIENT:
        raise NotRun(f"the required context fields of {ctx.hook} are not known to the suite")
    body = ctx.body()
    body["context"] = {}
    return _expect_400(ctx, body, "a request with context {}")


@check("request.missing_patient_400", "a context without its required patientId is a 400")
def request_missing_patient(ctx: Context) -> str:
    if ctx.hook not in HOOKS_REQUIRING_PATIENT:
        raise NotRun(f"{ctx.hook} is not known to require patientId")
    body = ctx.body()
    del body["context"]["patientId"]
    return _expect_400(ctx, body, "a context without patientId")


@check("request.wrong_hook_400", "a request for another hook than the service's is a 400")
def request_wrong_hook(ctx: Context) -> str:
    other = "order-sign" if ctx.hook != "order-sign" else "patient-view"
    body = ctx.body()
    body["hook"] = other
    return _expect_400(ctx, body, f"hook '{other}' sent to a {ctx.hook} service")


@check("request.non_json_400", "a body that is not JSON is a 400")
def request_non_json(ctx: Context) -> str:
    exchange = ctx.client.request(
        "POST",
        ctx.path,
        content=b'{"hook": "patient-view", "context": ',
        headers={"Content-Type": "application/json"},
    )
    expect_status(exchange, 400, "a truncated JSON body")
    return "400"


@check("request.unknown_service_404", "POST to a service id not in discovery is a 404")
def request_unknown_service(ctx: Context) -> str:
    path = f"/cds-services/vejviser-conformance-no-such-service-{uuid.uuid4().hex[:8]}"
    exchange = ctx.client.post(path, ctx.body())
    expect_status(exchange, 404, "an unknown service id")
    return "404"


@check(
    "request.extension_ignored",
    "unknown fields and extension objects are ignored: same cards as without them (HAPI #6262)",
)
def request_extension_ignored(ctx: Context) -> str:
    baseline = expect_cards(ctx.main(), "the complete-prefetch request (baseline)")
    extension = {"dk.vejviser.conformance": {"note": "ignore me", "level": 2}}
    body = ctx.body(extension=extension, unknownField={"nested": ["value"]})
    body["context"]["extension"] = extension
    exchange = ctx.call(body, "request with extensions")
    cards = expect_cards(exchange, "a request carrying extension objects and an unknown field")
    if _summaries(cards) != _summaries(baseline):
        raise Failed("the extension changed the cards (not ignored)", exchange)
    return f"{len(cards)} card(s), as without extensions"


# --- prefetch ------------------------------------------------------------------------------------


@check(
    "prefetch.absent_keys_without_fhirserver_412",
    "a missing prefetch key and no fhirServer to fetch it from gives 412, never cards",
)
def prefetch_absent_keys(ctx: Context) -> str:
    keys = list(ctx.templates())
    if not keys:
        raise NotRun("the service advertises no prefetch templates")
    wrong: list[tuple[str, Exchange]] = []
    for key in keys:
        prefetch = ctx.prefetch()
        del prefetch[key]
        exchange = ctx.call(ctx.body(prefetch), f"prefetch without {key}", valid=False)
        if exchange.status != 412:
            wrong.append((key, exchange))
    if wrong:
        listed = ", ".join(f"{key}: {_status(e)}" for key, e in wrong)
        raise Failed(f"expected 412 when a key is absent; got {listed}", wrong[0][1])
    return f"412 for each of {len(keys)} key(s) left out"


def _without_fetch(ctx: Context, prefetch: dict[str, Any], name: str, what: str) -> str:
    """Send a prefetch that needs nothing fetched; with the stub, prove nothing was fetched."""
    try:
        stub: FhirStub | None = ctx.stub()
    except NotRun:
        stub = None
    if stub is None:
        exchange = ctx.call(ctx.body(prefetch), what)
        expect_cards(exchange, f"{what} (no fhirServer)")
        return "200 without fhirServer (stub FHIR server not reachable: fetches not observed)"
    base = stub.scenario(name)
    exchange = ctx.call(ctx.body(prefetch, **ctx.fhir_access(base)), what)
    expect_cards(exchange, what)
    fetched = stub.requests(name)
    if fetched:
        raise Failed(
            f"the service fetched data it was told there is none of: "
            f"{', '.join(r.describe() for r in fetched)}",
            exchange,
        )
    return "200, nothing fetched from fhirServer"


@check("prefetch.null_is_no_data", "a key whose value is null means no data: 200, not fetched")
def prefetch_null(ctx: Context) -> str:
    keys = ctx.search_keys()
    if not keys:
        raise NotRun("the service advertises no search templates")
    prefetch = ctx.prefetch()
    for key in keys:
        prefetch[key] = None
    return _without_fetch(ctx, prefetch, "null-is-no-data", f"search keys null ({len(keys)})")


@check("prefetch.empty_bundle_is_no_data", "an empty searchset Bundle is no data: 200, not fetched")
def prefetch_empty_bundle(ctx: Context) -> str:
    keys = ctx.search_keys()
    if not keys:
        raise NotRun("the service advertises no search templates")
    prefetch = ctx.prefetch()
    for key in keys:
        prefetch[key] = searchset([])
    return _without_fetch(ctx, prefetch, "empty-bundle", f"search keys empty ({len(keys)})")


def _outcome() -> dict[str, Any]:
    return {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": "timeout", "diagnostics": "prefetch failed"}],
    }


@check(
    "prefetch.operation_outcome_is_absent",
    "an OperationOutcome as a prefetch value counts as absent: no fhirServer -> 412",
)
def prefetch_operation_outcome(ctx: Context) -> str:
    keys = ctx.search_keys()
    if not keys:
        raise NotRun("the service advertises no search templates")
    prefetch = ctx.prefetch()
    prefetch[keys[0]] = _outcome()
    exchange = ctx.call(ctx.body(prefetch), "an OperationOutcome as prefetch", valid=False)
    expect_status(exchange, 412, f"an OperationOutcome for '{keys[0]}' without fhirServer")
    return f"412 for '{keys[0]}'"


def _stub_match(ctx: Context, key: str, request: StubRequest) -> bool:
    """Whether a request the stub saw is the filled template of ``key`` (extra params allowed)."""
    filled = fill(ctx.templates()[key], ctx.context())
    if filled is None:
        return False
    path, _, params = filled.partition("?")
    if path.strip("/") != request.path.strip("/"):
        return False
    return set(parse_qsl(params, keep_blank_values=True)) <= set(request.query)


def _fetch_problems(
    ctx: Context, stub: FhirStub, name: str, wanted: list[str], token: str
) -> list[str]:
    problems: list[str] = []
    fetched = dict.fromkeys(wanted, False)
    for request in stub.requests(name):
        if PAGE_PARAMETER in dict(request.query):
            continue
        if request.authorization != f"Bearer {token}":
            problems.append(
                f"{request.describe()} was sent with Authorization "
                f"{'missing' if request.authorization is None else 'not Bearer <access_token>'}"
            )
        keys = [key for key in wanted if _stub_match(ctx, key, request)]
        if not keys:
            problems.append(
                f"{request.describe()} is none of the absent keys ({', '.join(wanted)}): "
                "only missing data may be fetched"
            )
        for key in keys:
            fetched[key] = True
    problems += [
        f"'{key}' was absent but never fetched" for key, done in fetched.items() if not done
    ]
    return problems


@check(
    "prefetch.none_without_fhirserver_412",
    "a request with no prefetch at all and no fhirServer gives 412, never cards",
)
def prefetch_none_without_server(ctx: Context) -> str:
    if not ctx.templates():
        raise NotRun("the service advertises no prefetch templates")
    body = request_body(ctx.hook, ctx.context(), None)
    exchange = ctx.call(body, "no prefetch, no fhirServer", valid=False)
    expect_status(exchange, 412, "no prefetch and no fhirServer")
    return "412"


@check(
    "prefetch.none_sent_all_fetched",
    "with no prefetch sent, every key is fetched from fhirServer (Bearer token) and the cards "
    "equal those for the complete prefetch",
)
def prefetch_none_sent(ctx: Context) -> str:
    stub = ctx.stub()
    baseline = expect_cards(ctx.main(), "the complete-prefetch request (baseline)")
    context = ctx.context()
    unfillable = [k for k, t in ctx.templates().items() if fill(t, context) is None]
    wanted = [key for key in ctx.templates() if key not in unfillable]
    if not wanted:
        raise NotRun("the service advertises no prefetch templates the suite can fill")
    base = stub.scenario("fetch-all")
    access = ctx.fhir_access(base)
    prefetch = dict.fromkeys(unfillable) if unfillable else None
    body = request_body(ctx.hook, context, prefetch, **access)
    exchange = ctx.call(body, "no prefetch, stub fhirServer")
    cards = expect_cards(exchange, "no prefetch, fhirServer given")
    token = access["fhirAuthorization"]["access_token"]
    problems = _fetch_problems(ctx, stub, "fetch-all", wanted, token)
    if _summaries(cards) != _summaries(baseline):
        problems.append("the cards differ from those for the same data sent as prefetch")
    if problems:
        raise Failed(rules.first(problems), exchange)
    return f"all {len(wanted)} key(s) fetched; {len(cards)} card(s), as with prefetch"


@check(
    "prefetch.fetches_only_missing_keys",
    "absent keys are fetched from fhirServer with Bearer <access_token>; present keys are not "
    "(cqf-ruler #536)",
)
def prefetch_fetches_missing(ctx: Context) -> str:
    stub = ctx.stub()
    dropped = ctx.read_keys()[:1] + ctx.search_keys()[:1]
    if not dropped:
        raise NotRun("the service advertises no prefetch templates")
    base = stub.scenario("fetch-missing")
    prefetch = ctx.prefetch()
    for key in dropped:
        del prefetch[key]
    access = ctx.fhir_access(base)
    exchange = ctx.call(ctx.body(prefetch, **access), "absent keys, stub fhirServer")
    expect_cards(exchange, f"{', '.join(dropped)} absent, fhirServer given")
    token = access["fhirAuthorization"]["access_token"]
    problems = _fetch_problems(ctx, stub, "fetch-missing", dropped, token)
    if problems:
        raise Failed(rules.first(problems), exchange)
    return f"fetched exactly {', '.join(dropped)} with the bearer token"


@check(
    "prefetch.operation_outcome_refetched",
    "a key answered with an OperationOutcome is fetched from fhirServer",
)
def prefetch_operation_outcome_refetched(ctx: Context) -> str:
    stub = ctx.stub()
    keys = ctx.search_keys()
    if not keys:
        raise NotRun("the service advertises no search templates")
    base = stub.scenario("outcome-refetched")
    prefetch = ctx.prefetch()
    prefetch[keys[0]] = _outcome()
    access = ctx.fhir_access(base)
    exchange = ctx.call(ctx.body(prefetch, **access), "OperationOutcome, stub fhirServer")
    expect_cards(exchange, f"an OperationOutcome for '{keys[0]}', fhirServer given")
    token = access["fhirAuthorization"]["access_token"]
    problems = _fetch_problems(ctx, stub, "outcome-refetched", keys[:1], token)
    if problems:
        raise Failed(rules.first(problems), exchange)
    return f"'{keys[0]}' fetched again from fhirServer"


@check("prefetch.follows_next_links", "a paged prefetch searchset's next link is followed")
def prefetch_follows_next(ctx: Context) -> str:
    stub = ctx.stub()
    keys = ctx.search_keys()
    if not keys:
        raise NotRun("the service advertises no search templates")
    prefetch = ctx.prefetch()
    key = max(keys, key=lambda k: len((prefetch[k] or {}).get("entry") or []))
    query = fill(ctx.templates()[key], ctx.context())
    complete = answer(query, ctx.patient) if query else None
    if not isinstance(complete, dict):
        raise NotRun(f"the template of '{key}' cannot be filled")
    resources = [entry["resource"] for entry in complete.get("entry") or []]
    half = len(resources) // 2
    base = stub.scenario("paged")
    access = ctx.fhir_access(base)
    stub.set_second_page("paged", resources[half:])
    path = query.partition("?")[0]
    next_url = f"{base}/{path}?{query.partition('?')[2]}&{PAGE_PARAMETER}=2"
    prefetch[key] = searchset(
        resources[:half],
        link=[
            {"relation": "self", "url": f"{base}/{query}"},
            {"relation": "next", "url": next_url},
        ],
    )
    prefetch[key]["total"] = len(resources)
    exchange = ctx.call(ctx.body(prefetch, **access), "paged prefetch")
    expect_cards(exchange, f"'{key}' sent as page 1 of 2 with a next link")
    pages = [r for r in stub.requests("paged") if PAGE_PARAMETER in dict(r.query)]
    if not pages:
        raise Failed(f"the next link of '{key}' was not followed", exchange)
    token = f"Bearer {access['fhirAuthorization']['access_token']}"
    if any(page.authorization != token for page in pages):
        raise Failed("page 2 was fetched without Bearer <access_token>", exchange)
    return f"page 2 of '{key}' fetched with the bearer token"


@check(
    "prefetch.fhir_server_failure_412",
    "a missing key that the FHIR server fails to deliver (HTTP 500) gives 412, never cards",
)
def prefetch_fhir_failure(ctx: Context) -> str:
    stub = ctx.stub()
    keys = ctx.search_keys()
    if not keys:
        raise NotRun("the service advertises no search templates")
    base = stub.scenario("failing", mode="fail")
    prefetch = ctx.prefetch()
    del prefetch[keys[0]]
    exchange = ctx.call(
        ctx.body(prefetch, **ctx.fhir_access(base)), "failing fhirServer", valid=False
    )
    expect_status(exchange, 412, f"'{keys[0]}' absent and the FHIR server answering 500")
    return "412"


# --- cards ---------------------------------------------------------------------------------------


def _card_sets(ctx: Context) -> list[tuple[str, dict[str, Any]]]:
    """Every 200 card response of the run (the complete-prefetch one first)."""
    ctx.main()
    if not any(body.get("cards") for _, body in ctx.card_responses):
        raise NotRun("the service returned no cards for the test patient: nothing to inspect")
    return ctx.card_responses


def _collect(
    ctx: Context, inspect: Callable[[dict[str, Any]], tuple[list[str], int]]
) -> tuple[list[str], int]:
    """Problems over every card response, each told once with the responses it was seen in."""
    seen: dict[str, list[str]] = {}
    total = 0
    for label, body in _card_sets(ctx):
        problems, count = inspect(body)
        total += count
        for problem in problems:
            seen.setdefault(problem, []).append(label)
    told = [
        f"{problem} ({labels[0]}{f' and {len(labels) - 1} more' if len(labels) > 1 else ''})"
        for problem, labels in seen.items()
    ]
    return told, total


@dataclass(frozen=True, slots=True)
class _CardCheck:
    """A check over every card response, driven by the table below.

    ``inspect`` gives one response's problems and how many things it looked at; the check fails
    on the first problem, is not run when ``nothing`` is set and nothing was found, and else
    reports ``found`` with ``{total}`` and ``{responses}`` filled in.
    """

    name: str
    requirement: str
    inspect: Callable[[dict[str, Any]], tuple[list[str], int]]
    found: str
    nothing: str | None = None

    def __call__(self, ctx: Context) -> str:
        problems, total = _collect(ctx, self.inspect)
        if problems:
            raise Failed(rules.first(problems))
        if self.nothing is not None and total == 0:
            raise NotRun(self.nothing)
        return self.found.format(total=total, responses=len(ctx.card_responses))


_IN_RESPONSES = "{total} card(s) in {responses} response(s)"

for _card_check in (
    _CardCheck(
        "cards.required_fields",
        "every card: uuid (unique per response), summary < 140, indicator info|warning|critical, "
        "source.label, markdown detail without raw HTML",
        lambda body: (rules.card_problems(body["cards"]), len(body["cards"])),
        _IN_RESPONSES,
    ),
    _CardCheck(
        "cards.no_empty_values",
        'no null, "", [] or {} anywhere except cards: []',
        lambda body: (rules.response_empty_values(body), len(body["cards"])),
        _IN_RESPONSES,
    ),
    _CardCheck(
        "cards.suggestions",
        "with suggestions: selectionBehavior at-most-one|any; each suggestion label + uuid; "
        "actions create|update|delete with description; resources valid FHIR R4",
        lambda body: rules.suggestion_problems(body["cards"], body.get("systemActions")),
        "{total} suggestion(s)",
        "no card carried suggestions",
    ),
    _CardCheck(
        "cards.override_reasons",
        "overrideReasons are Codings with system, code and display",
        lambda body: rules.override_reason_problems(body["cards"]),
        "{total} override reason(s)",
        "no card offered overrideReasons",
    ),
    _CardCheck(
        "cards.links",
        "links: label, absolute url, type absolute|smart, appContext only if smart",
        lambda body: rules.link_problems(body["cards"]),
        "{total} link(s)",
        "no card carried links",
    ),
):
    check(_card_check.name, _card_check.requirement)(_card_check)


# --- feedback ------------------------------------------------------------------------------------


def _feedback_items(cards: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """An accepted suggestion and an override with a reason, from the cards that allow them."""
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    items: list[dict[str, Any]] = []
    accepted = next(
        (
            c
            for c in cards
            if c.get("uuid") and any(s.get("uuid") for s in c.get("suggestions") or [])
        ),
        None,
    )
    if accepted is not None:
        suggestion = next(s for s in accepted["suggestions"] if s.get("uuid"))
        items.append(
            {
                "card": accepted["uuid"],
                "outcome": "accepted",
                "acceptedSuggestions": [{"id": suggestion["uuid"]}],
                "outcomeTimestamp": now,
            }
        )
    overridden = next((c for c in cards if c.get("uuid") and c is not accepted), None)
    if overridden is not None:
        reasons = overridden.get("overrideReasons") or []
        override: dict[str, Any] = {"userComment": "Vejviser conformance suite"}
        if reasons:
            override["reason"] = reasons[0]
        items.append(
            {
                "card": overridden["uuid"],
                "outcome": "overridden",
                "overrideReason": override,
                "outcomeTimestamp": now,
            }
        )
    return items


@check(
    "feedback.accepts_and_is_idempotent",
    "feedback (accepted with a suggestion, overridden with a reason) gets 200, also when sent "
    "again",
)
def feedback_idempotent(ctx: Context) -> str:
    items = _feedback_items(ctx.main_cards())
    if not items:
        raise NotRun("the complete-prefetch response has no card with a uuid to give feedback on")
    body = {"feedback": items}
    first = ctx.client.post(f"{ctx.path}/feedback", body)
    expect_status(first, 200, "feedback")
    again = ctx.client.post(f"{ctx.path}/feedback", copy.deepcopy(body))
    expect_status(again, 200, "the same feedback sent again")
    outcomes = ", ".join(item["outcome"] for item in items)
    return f"200 twice for {outcomes} (stored once: not observable from outside)"


@check("feedback.malformed_400", "malformed feedback (bad outcome, not JSON) is a 400")
def feedback_malformed(ctx: Context) -> str:
    path = f"{ctx.path}/feedback"
    bad = ctx.client.post(path, {"feedback": [{"card": str(uuid.uuid4()), "outcome": "maybe"}]})
    expect_status(bad, 400, "feedback with outcome 'maybe' and no outcomeTimestamp")
    garbled = ctx.client.request(
        "POST", path, content=b'{"feedback": [', headers={"Content-Type": "application/json"}
    )
    expect_status(garbled, 400, "feedback that is not JSON")
    return "400 for both"


# --- JWT -----------------------------------------------------------------------------------------


def _signer(ctx: Context) -> Signer:
    if ctx.config.signer is None:
        raise NotRun("no --private-key/--kid/--iss given: the suite cannot sign tokens it trusts")
    return ctx.config.signer


def _with_token(ctx: Context, token: str | None, what: str) -> Exchange:
    """Call the service with this exact token (None: no Authorization header)."""
    exchange = ctx.call(ctx.body(), what, valid=False, authorization=token)
    if exchange.status == 401:
        ctx.unauthorized.append(exchange)
    return exchange


def _expect_accepted(ctx: Context, token: str, what: str) -> Exchange:
    exchange = _with_token(ctx, token, what)
    expect_cards(exchange, what)
    return exchange


def _expect_401(ctx: Context, token: str | None, what: str) -> str:
    exchange = _with_token(ctx, token, what)
    expect_status(exchange, 401, what)
    return "401"


@check("jwt.valid_accepted", "a valid token (kid, typ JWT, iss, aud, exp, iat, jti; no sub) works")
def jwt_valid(ctx: Context) -> str:
    signer = _signer(ctx)
    _expect_accepted(ctx, signer.token(ctx.client.url(ctx.path)), f"a valid {signer.alg} token")
    return f"{signer.alg} token accepted"


@check("jwt.aud_array_accepted", "aud may be an array holding the endpoint URL")
def jwt_aud_array(ctx: Context) -> str:
    signer = _signer(ctx)
    _expect_accepted(ctx, signer.token([ctx.client.url(ctx.path)]), "aud as an array")
    return "accepted"


@check("jwt.missing_401", "a call without a token is a 401")
def jwt_missing(ctx: Context) -> str:
    _signer(ctx)
    return _expect_401(ctx, None, "no Authorization header")


@check("jwt.expired_401", "an expired token is a 401")
def jwt_expired(ctx: Context) -> str:
    signer = _signer(ctx)
    now = int(dt.datetime.now(dt.UTC).timestamp())
    token = signer.token(ctx.client.url(ctx.path), iat=now - 900, exp=now - 600)
    return _expect_401(ctx, token, "a token that expired 10 minutes ago")


@check("jwt.replayed_jti_401", "a token used a second time (same jti) is a 401")
def jwt_replayed(ctx: Context) -> str:
    signer = _signer(ctx)
    token = signer.token(ctx.client.url(ctx.path))
    _expect_accepted(ctx, token, "the first use of a token")
    return _expect_401(ctx, token, "the same token (same jti) again")


@check("jwt.wrong_aud_401", "a token for another endpoint (aud {base}/cds-services) is a 401")
def jwt_wrong_aud(ctx: Context) -> str:
    signer = _signer(ctx)
    token = signer.token(ctx.client.url("/cds-services"))
    return _expect_401(ctx, token, "aud naming the discovery endpoint, not this service")


@check("jwt.untrusted_iss_401", "a token from an issuer not allow-listed is a 401")
def jwt_untrusted_iss(ctx: Context) -> str:
    signer = _signer(ctx)
    token = signer.token(ctx.client.url(ctx.path), iss="https://untrusted-issuer.invalid")
    return _expect_401(ctx, token, "an untrusted iss")


@check("jwt.bad_signature_401", "a token signed by another key under the trusted kid is a 401")
def jwt_bad_signature(ctx: Context) -> str:
    signer = _signer(ctx)
    token = signer.impostor().token(ctx.client.url(ctx.path))
    return _expect_401(ctx, token, "a signature by a different key")


@check("jwt.alg_none_401", "an unsigned token (alg none) is a 401")
def jwt_alg_none(ctx: Context) -> str:
    signer = _signer(ctx)
    return _expect_401(ctx, signer.unsigned(ctx.client.url(ctx.path)), "alg none")


@check("jwt.hs256_key_confusion_401", "HS256 keyed with the client's public key is a 401")
def jwt_hs256(ctx: Context) -> str:
    signer = _signer(ctx)
    token = signer.hmac_with_public_key(ctx.client.url(ctx.path))
    return _expect_401(ctx, token, "HS256 signed with the public key PEM")


@check("jwt.401_without_detail", "every 401 looks the same and names no reason")
def jwt_no_detail(ctx: Context) -> str:
    _signer(ctx)
    if len(ctx.unauthorized) < 2:
        raise NotRun("fewer than two 401 responses to compare (see the other jwt checks)")
    problems: list[str] = []
    first = ctx.unauthorized[0]
    for exchange in ctx.unauthorized:
        text = (exchange.body + exchange.headers.get("www-authenticate", "").encode()).decode(
            "utf-8", errors="replace"
        )
        words = {w.strip(".,:;\"'()[]{}=").lower() for w in text.split()}
        leaked = sorted(words & set(LEAKY_WORDS))
        if leaked:
            problems.append(f"{exchange.check} names {', '.join(leaked)}")
        if exchange.body != first.body or exchange.headers.get(
            "www-authenticate"
        ) != first.headers.get("www-authenticate"):
            problems.append(f"{exchange.check} differs from {first.check}")
    if problems:
        raise Failed(rules.first(problems), ctx.unauthorized[-1])
    return f"{len(ctx.unauthorized)} identical 401 responses"


# --- CORS ----------------------------------------------------------------------------------------


def _origin(ctx: Context) -> str:
    return ctx.config.cors_origin or PROBE_ORIGIN


def _not_configured(ctx: Context, exchange: Exchange) -> None:
    """Without --cors-origin, a service that sends no CORS headers may simply not allow ours."""
    if "access-control-allow-origin" in exchange.headers:
        return
    if ctx.config.cors_origin is None:
        raise NotRun(
            f"no CORS headers for the probe origin {PROBE_ORIGIN}: the service may allow only "
            "listed origins; give --cors-origin with one it allows"
        )
    raise Failed(f"no Access-Control-Allow-Origin for {ctx.config.cors_origin}", exchange)


@check(
    "cors.preflight",
    "OPTIONS preflight (no credentials) allows the origin, the method, Authorization and "
    "Content-Type on discovery, service and feedback",
)
def cors_preflight(ctx: Context) -> str:
    origin = _origin(ctx)
    targets = [("/cds-services", "GET"), (ctx.path, "POST"), (f"{ctx.path}/feedback", "POST")]
    problems: list[str] = []
    last: Exchange | None = None
    for path, method in targets:
        exchange = ctx.client.request(
            "OPTIONS",
            path,
            headers={
                "Origin": origin,
                "Access-Control-Request-Method": method,
                "Access-Control-Request-Headers": "authorization,content-type",
            },
            authorization=None,
        )
        last = exchange
        _not_configured(ctx, exchange)
        problems += [f"{path}: {p}" for p in _preflight_problems(exchange, origin, method)]
    if problems:
        raise Failed(rules.first(problems), last)
    return f"preflight from {origin} allowed on {len(targets)} endpoints"


def _preflight_problems(exchange: Exchange, origin: str, method: str) -> list[str]:
    if exchange.status is None or not 200 <= exchange.status < 300:
        return [f"preflight answered {_status(exchange)}"]
    headers = exchange.headers
    problems = []
    if headers.get("access-control-allow-origin") not in (origin, "*"):
        problems.append(
            f"Access-Control-Allow-Origin is {headers.get('access-control-allow-origin')!r}"
        )
    methods = {
        m.strip().upper() for m in headers.get("access-control-allow-methods", "").split(",")
    }
    if method not in methods and "*" not in methods:
        problems.append(f"{method} is not in Access-Control-Allow-Methods")
    allowed = {
        h.strip().lower() for h in headers.get("access-control-allow-headers", "").split(",")
    }
    if "authorization" not in allowed:
        problems.append(
            "Authorization is not in Access-Control-Allow-Headers (a * does not cover it)"
        )
    if "content-type" not in allowed and "*" not in allowed:
        problems.append("Content-Type is not in Access-Control-Allow-Headers")
    return problems


@check("cors.actual_response", "a call with an Origin gets Access-Control-Allow-Origin back")
def cors_actual(ctx: Context) -> str:
    origin = _origin(ctx)
    exchange = ctx.client.get("/cds-services", headers={"Origin": origin})
    _not_configured(ctx, exchange)
    allowed = exchange.headers.get("access-control-allow-origin")
    if allowed not in (origin, "*"):
        raise Failed(f"Access-Control-Allow-Origin is {allowed!r}, not {origin}", exchange)
    return f"Access-Control-Allow-Origin: {allowed}"


# --- whole run -----------------------------------------------------------------------------------


@check("request.latency", "the median call answers within 500 ms (SHOULD)")
def request_latency(ctx: Context) -> str:
    for _ in range(LATENCY_PROBES):
        ctx.call(ctx.body(), "latency probe")
    if not ctx.latencies:
        raise NotRun("no successful service call to time")
    median = statistics.median(ctx.latencies)
    summary = (
        f"median {median * 1000:.0f} ms, slowest {max(ctx.latencies) * 1000:.0f} ms over "
        f"{len(ctx.latencies)} call(s) without fetching"
    )
    if median > LATENCY_BUDGET_SECONDS:
        raise Failed(f"{summary}: above the 500 ms the standard asks for")
    return summary


@check(
    "request.errors_are_operation_outcomes",
    "every 4xx/5xx body (401 aside) is a FHIR OperationOutcome, never plain text or a trace",
)
def request_errors_outcomes(ctx: Context) -> str:
    errors = [
        e
        for e in ctx.client.exchanges
        if e.status is not None
        and e.status >= 400
        and e.status != 401
        and not e.check.startswith(("cors.", "jwt."))
    ]
    if not errors:
        raise NotRun("no error responses were seen")
    bad = []
    for exchange in errors:
        body = exchange.json()
        issues = body.get("issue") if isinstance(body, dict) else None
        if (
            not isinstance(body, dict)
            or body.get("resourceType") != "OperationOutcome"
            or not isinstance(issues, list)
            or not issues
            or not all(isinstance(i, dict) and i.get("severity") and i.get("code") for i in issues)
        ):
            bad.append(exchange)
    if bad:
        checks = sorted({e.check for e in bad})
        raise Failed(
            f"{len(bad)} of {len(errors)} error bodies are not OperationOutcomes "
            f"(in {', '.join(checks)})",
            bad[0],
        )
    return f"{len(errors)} error bodies, all OperationOutcomes"


@check("request.no_server_errors", "no request of the run got a 5xx or no answer at all")
def request_no_server_errors(ctx: Context) -> str:
    bad = [e for e in ctx.client.exchanges if e.status is None or e.status >= 500]
    if bad:
        checks = sorted({e.check for e in bad})
        raise Failed(
            f"{len(bad)} server error(s) or dropped connection(s), in {', '.join(checks)}", bad[0]
        )
    return f"{len(ctx.client.exchanges)} requests, none failed on the server side"
