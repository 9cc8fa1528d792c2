"""A request id for every call, and one access line per request, so an operator can tie what
an EHR saw (a 401, a 412, a 500) to the service's log lines about it.

The id is the proxy's ``X-Request-ID`` when it sends a sane one (so one id spans proxy and
service logs), else a fresh one; it is echoed in the answer and every log line written while
the request runs carries it (``request_id``, added by the JSON formatter). The access line names
the route template and a known service id, never the raw path: a caller may put anything there,
a CPR number too.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from contextvars import ContextVar

from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.cds_hooks.discovery import SERVICES_BY_ID
from service.cds_hooks.errors import outcome_response

REQUEST_ID: ContextVar[str | None] = ContextVar("request_id", default=None)
HEADER = "X-Request-ID"
# A caller's id goes into every log line: no spaces, quotes or control characters, bounded.
_SAFE = re.compile(r"[A-Za-z0-9._:-]{1,128}")

log = logging.getLogger("vejviser.service")
access = logging.getLogger("vejviser.access")
#: Answers whose OperationOutcome text is the service's own words (no caller input): logged.
LOGGED_OUTCOMES = frozenset({412, 413, 500, 503})
#: A load balancer's probes, every few seconds: a line for each would bury the requests.
PROBES = frozenset({"/health", "/ready"})


class RequestIdMiddleware:
    """Pure ASGI: sets the id, echoes it, and answers an unexpected error itself.

    Why the error here, not in an exception handler: Starlette re-raises after a handler for
    ``Exception``, so uvicorn logged every 500 a second time, as a plain-text traceback."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = Headers(scope=scope).get(HEADER, "")
        request_id = given if _SAFE.fullmatch(given) else uuid.uuid4().hex
        token = REQUEST_ID.set(request_id)
        state = scope.setdefault("state", {})
        began = time.perf_counter()
        status: int | None = None

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                MutableHeaders(scope=message)[HEADER] = request_id
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            if status is not None:  # too late for an answer of our own; uvicorn closes it
                raise
            log.exception("unexpected error on %s", _route(scope))
            state["outcome"] = "internal error; the request was not processed"
            answer = outcome_response(500, "exception", state["outcome"])
            await answer(scope, receive, send_with_id)
        finally:
            _log_access(scope, status, began, state.get("outcome"))
            REQUEST_ID.reset(token)


def _route(scope: Scope) -> str | None:
    route = scope.get("route")
    return getattr(route, "path", None)


def _log_access(scope: Scope, status: int | None, began: float, outcome: str | None) -> None:
    """One line per request: what was asked (as the route), the answer and how long it took."""
    if _route(scope) in PROBES and status == 200:
        return
    service = scope.get("path_params", {}).get("service_id")
    fields = {
        "event": "request",
        "method": scope.get("method"),
        "route": _route(scope),
        **({"service": service} if service in SERVICES_BY_ID else {}),
        "status": status,
        "duration_ms": round((time.perf_counter() - began) * 1000, 1),
        **({"outcome": outcome} if outcome and status in LOGGED_OUTCOMES else {}),
    }
    access.info("request", extra={"fields": fields})
