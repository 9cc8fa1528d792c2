"""The FastAPI application: CDS Hooks endpoints, health and readiness.

Handlers stay small: parse and validate at the boundary, then call the pure engine. Request
bodies are parsed with orjson and validated with pydantic; every error is an OperationOutcome.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from http.cookiejar import CookieJar, DefaultCookiePolicy
from typing import Annotated, Any

import anyio
import httpx2
import orjson
from fastapi import Depends, FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from fhir_adapter.normalise import normalise
from fhir_adapter.records import PatientRecord
from fhir_adapter.rest import FhirRestClient
from rules.effective import danish_date
from rules.guideline_set import GuidelineSet
from rules.tree import CompiledGuideline
from service import heap
from service.auth import build_authenticator, client_auth
from service.cds_hooks.cards import build_cards, unread_resources
from service.cds_hooks.discovery import SERVICES_BY_ID, discovery, prefetch_templates
from service.cds_hooks.drafts import (
    DraftOrders,
    draft_orders,
    medication_systems,
    not_checked_card,
    require_drugs,
    unchecked_orders,
)
from service.cds_hooks.errors import CdsError, outcome_response
from service.cds_hooks.models import ORDER_HOOKS, CdsRequest
from service.cds_hooks.prefetch import gather
from service.feedback import FeedbackRequest, FeedbackStore, IssuedCard, prune_periodically
from service.guideline_source import GuidelinePublisher, source_from_settings
from service.request_id import RequestIdMiddleware
from service.settings import Settings


def json_response(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


def language_of(request: Request) -> str:
    """Danish unless the client prefers English: by the header's quality values (RFC 9110
    §12.5.4), not its order, so "da;q=0.5, en" and "de, en;q=0.8" are English, "en;q=0" is not."""
    best, best_q = "da", 0.0
    for part in request.headers.get("accept-language", "").split(","):
        tag, *params = part.split(";")
        language = tag.strip().lower().split("-")[0]
        if language in ("da", "en") and (q := _quality(params)) > best_q:
            best, best_q = language, q
    return best


def _quality(params: list[str]) -> float:
    """The q of a language range (1 without one); an unreadable q counts as 0."""
    for param in params:
        name, _, value = param.strip().partition("=")
        if name.strip().lower() == "q":
            try:
                return float(value)
            except ValueError:
                return 0.0
    return 1.0


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    # Raises RuleFileError when the first load fails: a service with no guidelines is no service.
    publisher = GuidelinePublisher(
        source_from_settings(settings), poll_seconds=settings.guidelines_poll_seconds
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        limits = httpx2.Limits(max_connections=settings.fhir_max_connections)
        # One client for every user and EHR: it must never carry one caller's cookies to another.
        no_cookies = CookieJar(policy=DefaultCookiePolicy(allowed_domains=[]))
        async with httpx2.AsyncClient(
            limits=limits, timeout=settings.fhir_budget_seconds, cookies=no_cookies
        ) as http:
            app.state.fhir = FhirRestClient(http)
            app.state.authenticator = build_authenticator(settings.auth, http)
            app.state.feedback = FeedbackStore(
                settings.feedback_database,
                feedback_window=timedelta(days=settings.feedback_window_days),
            )
            heap.settle()  # the guidelines and the modules are loaded: keep them out of the GC's way
            try:
                async with anyio.create_task_group() as tasks:
                    tasks.start_soon(publisher.watch)
                    tasks.start_soon(prune_periodically, app.state.feedback)
                    try:
                        yield
                    finally:
                        tasks.cancel_scope.cancel()
            finally:
                app.state.feedback.close()

    app = FastAPI(
        title="Vejviser CDS Hooks service",
        version="0.1.0",
        lifespan=lifespan,
        description="CDS Hooks 2.0 services evaluating Vejviser's guideline rule files.",
    )
    app.state.publisher = publisher
    app.state.settings = settings
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "OPTIONS"],
            allow_headers=["Authorization", "Content-Type", "Accept-Language"],
        )
    app.add_middleware(RequestIdMiddleware)  # outermost of ours: its id is on every line
    _add_error_handlers(app)
    app.state.openapi_components = {}
    _add_routes(app)
    _openapi_with_components(app)
    return app


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(CdsError)
    async def cds_error(request: Request, exc: CdsError) -> Response:
        request.state.outcome = exc.message  # for the access line (a 412's reason, say)
        return outcome_response(exc.status, exc.code, exc.message)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> Response:
        return outcome_response(400, "invalid", _plain_errors(exc.errors()))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 401:
            return Response(status_code=401, headers={"WWW-Authenticate": "Bearer"})
        code = "not-found" if exc.status_code == 404 else "processing"
        return outcome_response(exc.status_code, code, str(exc.detail))


def _plain_errors(errors: Any) -> str:
    parts = []
    for error in errors:
        where = ".".join(str(p) for p in error.get("loc", ()) if p != "body")
        parts.append(f"{where}: {error.get('msg')}" if where else str(error.get("msg")))
    return "; ".join(parts) or "invalid request"


async def _body(request: Request) -> Any:
    """The JSON body, read only up to ``max_request_bytes``: a client cannot make the service
    hold more (a 5,000-resource patient with full prefetch is about 3.3 MB)."""
    limit = request.app.state.settings.max_request_bytes
    too_large = CdsError(413, "too-long", f"the request body is larger than {limit:,} bytes")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    raw = b"".join(chunks)
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise CdsError(400, "invalid", "the request body is not JSON") from None


def _validate(model: type, data: Any) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise CdsError(400, "invalid", _plain_errors(exc.errors(include_url=False))) from None


async def authenticated(request: Request) -> Any:
    """The CDS client behind the request (None when auth is switched off)."""
    dependency = client_auth(request.app.state.authenticator)
    return await dependency(request)


Client = Annotated[Any, Depends(authenticated)]


REF_TEMPLATE = "#/components/schemas/{model}"


def request_body(app: FastAPI, model: type[BaseModel]) -> dict[str, Any]:
    """The OpenAPI request body of a handler that parses its own body (orjson + pydantic).

    Nested models go to ``components/schemas`` so every ``$ref`` resolves from the document root.
    """
    schema = model.model_json_schema(ref_template=REF_TEMPLATE)
    app.state.openapi_components.update(schema.pop("$defs", {}))
    return {"requestBody": {"content": {"application/json": {"schema": schema}}, "required": True}}


def _openapi_with_components(app: FastAPI) -> None:
    serve = app.openapi

    def openapi() -> dict[str, Any]:
        document = serve()
        document.setdefault("components", {}).setdefault("schemas", {}).update(
            app.state.openapi_components
        )
        return document

    app.openapi = openapi  # type: ignore[method-assign]


def _add_routes(app: FastAPI) -> None:
    @app.get("/cds-services", summary="CDS Hooks discovery")
    async def services(request: Request, client: Client) -> Response:
        snapshot, now = request.app.state.publisher.current()
        settings: Settings = request.app.state.settings
        body = discovery(
            snapshot.guidelines,
            danish_date(now),
            snapshot.in_force_at(now),
            settings.max_prefetch_url_length,
        )
        return json_response(body)

    @app.post(
        "/cds-services/{service_id}",
        summary="Call a CDS service",
        openapi_extra=request_body(app, CdsRequest),
    )
    async def call_service(service_id: str, request: Request, client: Client) -> Response:
        service = SERVICES_BY_ID.get(service_id)
        if service is None:
            raise CdsError(404, "not-found", f"no CDS service '{service_id}'")
        cds_request: CdsRequest = _validate(CdsRequest, await _body(request))
        if cds_request.hook != service.hook:
            raise CdsError(
                400,
                "invalid",
                f"service '{service_id}' answers '{service.hook}', not '{cds_request.hook}'",
            )
        # One snapshot for the whole request: a swap while it runs does not touch it.
        snapshot, now = request.app.state.publisher.current()
        in_force = snapshot.in_force_at(now)
        settings: Settings = request.app.state.settings
        today = danish_date(now)
        templates = prefetch_templates(
            snapshot.guidelines, today, settings.max_prefetch_url_length, in_force
        )
        drafts = draft_orders(cds_request)
        resources = await gather(
            cds_request,
            templates,
            request.app.state.fhir,
            settings.fhir_budget_seconds,
            drafts.resources,
        )
        patient, focus = _patient(cds_request, resources, drafts)
        outcomes = snapshot.engine.evaluate(patient, today, in_force)
        unread = unread_resources(patient.issues, resources)
        language = language_of(request)
        pairs = build_cards(snapshot.guidelines, outcomes, patient.id, language, unread)
        if focus is not None:
            pairs = [(card, issued) for card, issued in pairs if focus & set(issued.evidence)]
        issued = [
            IssuedCard(
                card_uuid=i.uuid,
                service_id=service_id,
                hook_instance=cds_request.hookInstance,
                patient_id=patient.id,
                guideline_id=i.guideline.id,
                guideline_version=i.guideline.version,
                content_hash=i.guideline.content_hash,
                recommendation_id=i.recommendation,
            )
            for _, i in pairs
        ]
        notices, noticed = _not_checked(
            cds_request, service_id, drafts, resources, language, (snapshot.guidelines, in_force)
        )
        if issued or noticed:
            _record_cards(request.app.state.feedback, issued + noticed)
        return json_response({"cards": [card for card, _ in pairs] + notices})

    @app.post(
        "/cds-services/{service_id}/feedback",
        summary="Feedback on cards",
        openapi_extra=request_body(app, FeedbackRequest),
    )
    async def feedback(service_id: str, request: Request, client: Client) -> Response:
        if service_id not in SERVICES_BY_ID:
            raise CdsError(404, "not-found", f"no CDS service '{service_id}'")
        payload: FeedbackRequest = _validate(FeedbackRequest, await _body(request))
        store: FeedbackStore = request.app.state.feedback
        try:
            await anyio.to_thread.run_sync(store.record_feedback, service_id, payload)
        except sqlite3.Error:  # logged by the store; a 503 tells the EHR to send it again
            raise CdsError(
                503, "transient", "the feedback could not be stored now; send it again later"
            ) from None
        return Response(status_code=200)

    @app.get("/health", summary="Liveness")
    async def health() -> Response:
        return json_response({"status": "ok"})

    @app.get("/ready", summary="Readiness: a guideline set is loaded; what needs an operator")
    async def ready(request: Request) -> Response:
        publisher: GuidelinePublisher = request.app.state.publisher
        snapshot, now = publisher.current()
        write_error = request.app.state.feedback.write_error
        body = {
            "status": "ready",
            "guidelines_in_force": len(snapshot.in_force_at(now)),
            "guidelines_rejected": publisher.rejection_pending(),
            "guidelines_source_error": publisher.source_error is not None,
            "feedback_database_error": None
            if write_error is None
            else {"at": write_error[0].isoformat(timespec="milliseconds"), "error": write_error[1]},
        }
        return json_response(body)

    @app.get("/guidelines", summary="The guideline versions in service and the last changes")
    async def guidelines_status(request: Request, client: Client) -> Response:
        return json_response(request.app.state.publisher.status())


def _record_cards(store: FeedbackStore, cards: list[IssuedCard]) -> None:
    """Record the cards, and answer with them even when the database cannot take them (a full
    disk, a read-only file): no decision support at all is worse than feedback that cannot be
    tied to its card. The store logs the failure once and ``/ready`` shows it.

    On the event loop: one small SQLite transaction (~0.25 ms) costs less than a hop to a worker
    thread, which halved the requests/s at 32 concurrent clients (measured 2026-11-27). A write
    lock held by another process on the same file holds every request up meanwhile, to the
    store's busy timeout: one service process per feedback file."""
    with contextlib.suppress(sqlite3.Error):
        store.record_cards(cards)


def _patient(
    request: CdsRequest, resources: list[Any], drafts: DraftOrders
) -> tuple[PatientRecord, set[str] | None]:
    """The context patient's record, and for the order hooks the orders a card must involve.

    The draft orders join the record as active medication. order-select's cards are about the
    orders in ``selections`` (the other drafts are context, e.g. one half of an interaction);
    without ``selections`` every draft counts, as in order-sign. None: patient-view, every card.
    """
    patient_id = request.context.patientId
    normalised = normalise(resources)
    patient = normalised.get(patient_id)
    if patient is None:  # the id is not repeated: some practice systems use the CPR number
        raise CdsError(
            412,
            "not-found",
            "no Patient with the id context.patientId in the prefetch data or on the FHIR server",
        )
    if request.hook not in ORDER_HOOKS:
        return patient, None
    # a draft may name its drug by a Medication in the draftOrders bundle or the prefetch
    known = _medication_resources(resources)
    require_drugs(drafts, known, request.fhirServer)
    placeholder = {"resourceType": "Patient", "id": patient_id}
    ordered = normalise([placeholder, *known, *drafts.resources], drafts.full_urls).get(patient_id)
    medications = ordered.medications if ordered else ()
    focus = {m.resource for m in medications}
    if request.hook == "order-select" and request.context.selections is not None:
        focus &= set(request.context.selections)
    return patient._replace(medications=patient.medications + medications), focus


def _medication_resources(resources: list[Any]) -> list[dict[str, Any]]:
    return [r for r in resources if isinstance(r, dict) and r.get("resourceType") == "Medication"]


def _not_checked(
    request: CdsRequest,
    service_id: str,
    drafts: DraftOrders,
    resources: list[Any],
    language: str,
    evaluated: tuple[GuidelineSet, tuple[CompiledGuideline, ...]],
) -> tuple[list[dict[str, Any]], list[IssuedCard]]:
    """Vejviser's cards for the drafts no guideline could be applied to (no drug code, or codes
    only of systems in which no guideline of ``evaluated`` (the set, the versions in force)
    reads drugs), so that no card does not read as "nothing against this order". Recorded like
    any card, so feedback on them is tied to the patient, but with no guideline: an override
    never makes a patient exception, and no guideline's feedback counts them."""
    if not drafts.resources:  # patient-view, or no medication ordered
        return [], []
    used = medication_systems(*evaluated)
    known = _medication_resources(resources)
    cards = [
        not_checked_card(order, language)
        for order in unchecked_orders(request, drafts, known, used)
    ]
    issued = [
        IssuedCard(card["uuid"], service_id, request.hookInstance, request.context.patientId)
        for card in cards
    ]
    return cards, issued
