"""FHIR REST client: fetch the prefetch keys a CDS Hooks client did not send.

The CDS Hooks service answers in about 500 ms, so every fetch runs against one absolute deadline
(a ``time.monotonic()`` value) shared by all its requests and pages. Failures are typed so the
service can answer 412 instead of computing cards from missing data:

- :class:`FhirUnauthorized`: 401/403, or an access token that is not a valid bearer token.
- :class:`FhirNotFound`: 404/410 on a read ("Patient/123"); the caller may treat it as no data.
- :class:`FhirRejected`: any other 4xx (e.g. 400 for an unknown search parameter, which servers
  only report under ``Prefer: handling=strict``); retrying the same request will not help.
- :class:`FhirUnavailable`: connection failures, 408/429/5xx, redirects, invalid JSON, a body of
  the wrong resourceType, a ``next`` link to another origin, too many pages.
- :class:`FhirTimeout`: the time budget ran out.

Searches return the resources of entries whose ``search.mode`` is ``match`` or absent;
``include`` and ``outcome`` entries are left out (the prefetch subset has no ``_include``; an
outcome entry with an error or fatal issue fails the fetch, since the result may be incomplete).
``next`` links are followed until done, but only to the origin of ``base_url``: the access token
is never sent anywhere else, so a link to another origin fails the fetch instead.

Messages never contain the access token, query strings or resource ids (in Danish systems an id
may be a CPR number): only the resource type, the kind of request and the HTTP status. The
server's own diagnostics are kept on :attr:`FhirError.diagnostics` for callers that choose to
log them.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from dataclasses import dataclass
from typing import Any, Literal

import httpx2
import orjson

__all__ = [
    "FhirError",
    "FhirNotFound",
    "FhirRejected",
    "FhirRestClient",
    "FhirTimeout",
    "FhirUnauthorized",
    "FhirUnavailable",
]

log = logging.getLogger(__name__)

MAX_PAGES = 100
"""Pages followed per search before giving up: a guard against servers that loop."""

MAX_PAGE_BYTES = 16 * 1024 * 1024
"""Largest response body read; a bigger one is refused rather than held in memory."""

_ERROR_BODY_BYTES = 64 * 1024
FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")
"""A resource id as FHIR R4 defines it (use ``fullmatch``)."""
_READ_PATH = re.compile(
    rf"^(?P<type>[A-Z][A-Za-z]+)/{FHIR_ID.pattern}(?:/_history/{FHIR_ID.pattern})?$"
)
_BEARER_TOKEN = re.compile(r"^[A-Za-z0-9\-._~+/]+=*$")  # RFC 6750 b64token
_DEFAULT_PORTS = {"http": 80, "https": 443}

Kind = Literal["read", "search"]


class FhirError(Exception):
    """The data could not be fetched; the message is plain words, safe to log and show."""

    def __init__(
        self, message: str, *, status: int | None = None, diagnostics: str | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        """HTTP status of the failing response, if there was one."""
        self.diagnostics = diagnostics
        """The server's OperationOutcome text (token removed, shortened); may name patients."""


class FhirUnauthorized(FhirError):  # noqa: N818 (reads as the outcome)
    """The FHIR server refused the access token (401/403), or the token is malformed."""


class FhirNotFound(FhirError):  # noqa: N818 (reads as the outcome)
    """A read found no resource (404/410): the caller may treat this as no data."""


class FhirRejected(FhirError):  # noqa: N818 (reads as the outcome)
    """The server refused the request as written (4xx): retrying will not help."""


class FhirUnavailable(FhirError):  # noqa: N818 (reads as the outcome)
    """The server could not be reached or answered with something unusable."""


class FhirTimeout(FhirError):  # noqa: N818 (reads as the outcome)
    """The time budget ran out before the data were complete."""


@dataclass(frozen=True, slots=True)
class StatusErrors:
    """How one kind of request turns an HTTP error status into a :class:`FhirError`.

    The first rule that applies: 401/403 :class:`FhirUnauthorized` (``refused``); 404/410
    ``gone``, if given; 3xx :class:`FhirUnavailable` if ``redirects`` (they are never
    followed); another 4xx than 408/429 :class:`FhirRejected` if ``rejects``; else ``failed``.
    Messages are templates with ``{what}`` and ``{status}``; ``extra`` keyword arguments go to
    the ``gone`` and ``failed`` exceptions (a bulk job's ``status_url``).
    """

    refused: str = "The FHIR server refused the access token for the {what} (HTTP {status})."
    gone: tuple[type[FhirError], str] | None = None
    redirects: bool = True
    rejects: bool = True
    failed: tuple[type[FhirError], str] = (
        FhirUnavailable,
        "The FHIR server failed the {what} (HTTP {status}).",
    )

    def error(self, status: int, what: str, diagnostics: str | None, **extra: Any) -> FhirError:
        def make(kind: type[FhirError], template: str, **arguments: Any) -> FhirError:
            return kind(template.format(what=what, status=status), status=status, **arguments)

        if status in (401, 403):
            return make(FhirUnauthorized, self.refused, diagnostics=diagnostics)
        if self.gone is not None and status in (404, 410):
            return make(*self.gone, diagnostics=diagnostics, **extra)
        if self.redirects and 300 <= status < 400:
            return make(FhirUnavailable, _REDIRECTED)
        if self.rejects and 400 <= status < 500 and status not in (408, 429):
            return make(
                FhirRejected,
                "The FHIR server rejected the {what} (HTTP {status}).",
                diagnostics=diagnostics,
            )
        return make(*self.failed, diagnostics=diagnostics, **extra)


_REDIRECTED = "The FHIR server redirected the {what} (HTTP {status}); redirects are not followed."
_SEARCH_ERRORS = StatusErrors()
_READ_ERRORS = StatusErrors(
    gone=(FhirNotFound, "The FHIR server has no such resource for the {what} (HTTP {status}).")
)


class FhirRestClient:
    """Reads and searches on a FHIR server, over a shared ``httpx2.AsyncClient``.

    The caller owns the client (connection limits, timeouts, TLS, closing it). Per request the
    client's timeouts are shortened to the remaining budget; redirects are never followed, so
    the token cannot travel to a host named in a ``Location`` header. The client's cookie jar is
    shared by every user and tenant: give it one that stores nothing, e.g.
    ``cookies=http.cookiejar.CookieJar(policy=DefaultCookiePolicy(allowed_domains=[]))``, or a
    session cookie set for one token is sent along with the next user's.
    """

    def __init__(
        self,
        client: httpx2.AsyncClient,
        *,
        max_pages: int = MAX_PAGES,
        max_page_bytes: int = MAX_PAGE_BYTES,
    ) -> None:
        self._client = client
        self._max_pages = max_pages
        self._max_page_bytes = max_page_bytes

    async def fetch(
        self, base_url: str, relative_url: str, access_token: str | None, deadline: float
    ) -> list[dict[str, Any]] | dict[str, Any]:
        """Fetch ``relative_url`` from ``base_url`` before ``deadline`` (``time.monotonic()``).

        A read (``Type/id``, optionally ``/_history/vid``) returns the resource; anything else
        (type search, compartment search, ``$everything``) must answer with a searchset Bundle
        and returns the matching resources of all its pages, possibly an empty list.
        """
        base = _parse_base(base_url)
        relative = _parse_relative(relative_url)
        headers = {"Accept": "application/fhir+json", "Prefer": "handling=strict"}
        if access_token:
            if not _BEARER_TOKEN.match(access_token):
                raise FhirUnauthorized("The access token is not a valid bearer token; not sent.")
            headers["Authorization"] = f"Bearer {access_token}"

        path = relative.split("?", 1)[0]
        read = _READ_PATH.match(path)
        url = f"{str(base).rstrip('/')}/{relative}"
        if read:
            what = f"{read['type']} read"
            resource = await self._get_json(url, headers, deadline, what, "read")
            if resource.get("resourceType") != read["type"]:
                raise FhirUnavailable(
                    f"The FHIR server answered a {what} with {_describe(resource)}."
                )
            return resource
        return await self._search(base, url, headers, deadline, f"{path.split('/')[0]} search")

    async def _search(
        self,
        base: httpx2.URL,
        url: str,
        headers: dict[str, str],
        deadline: float,
        what: str,
    ) -> list[dict[str, Any]]:
        """Collect matches page by page; any failure fails the whole search (no partial data)."""
        resources: list[dict[str, Any]] = []
        seen: set[str] = set()
        next_url: str | None = url
        pages = 0
        while next_url is not None:
            pages += 1
            if pages > self._max_pages:
                raise FhirUnavailable(
                    f"The {what} has more than {self._max_pages} pages; stopped following them."
                )
            seen.add(next_url)
            bundle = await self._get_json(next_url, headers, deadline, what, "search")
            if bundle.get("resourceType") != "Bundle" or bundle.get("type") != "searchset":
                raise FhirUnavailable(
                    f"The FHIR server answered a {what} with {_describe(bundle)}."
                )
            resources.extend(_matches(bundle, what))
            next_url = _next_link(bundle, next_url, base, what)
            if next_url is not None and next_url in seen:
                raise FhirUnavailable(f"The FHIR server's next link for a {what} repeats a page.")
        return resources

    async def _get_json(
        self, url: str, headers: dict[str, str], deadline: float, what: str, kind: Kind
    ) -> dict[str, Any]:
        """One GET within the remaining budget, mapped to a JSON object or a typed error."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise FhirTimeout(f"The time budget ran out before the {what} was complete.")
        started = time.monotonic()
        try:
            async with (
                asyncio.timeout(remaining),
                self._client.stream(
                    "GET",
                    url,
                    headers=headers,
                    timeout=_shortened(self._client.timeout, remaining),
                    follow_redirects=False,
                ) as response,
            ):
                status = response.status_code
                limit = self._max_page_bytes if status == 200 else _ERROR_BODY_BYTES
                body = await _read_body(response, limit, what)
        except (TimeoutError, httpx2.TimeoutException):
            raise FhirTimeout(
                f"The FHIR server did not answer the {what} within the time budget."
            ) from None
        except httpx2.TransportError as exc:
            raise FhirUnavailable(
                f"The FHIR server could not be reached for the {what} ({_transport_reason(exc)})."
            ) from None
        except httpx2.InvalidURL:
            raise FhirUnavailable(f"The URL for the {what} is not usable.") from None
        log.debug("FHIR %s: HTTP %d in %.0f ms", what, status, (time.monotonic() - started) * 1000)
        if status != 200:
            _raise_for_status(status, body, headers, what, kind)
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise FhirUnavailable(
                f"The FHIR server answered the {what} with invalid JSON."
            ) from None
        if not isinstance(data, dict):
            raise FhirUnavailable(f"The FHIR server answered the {what} with {_describe(data)}.")
        return data


def _parse_base(base_url: str) -> httpx2.URL:
    """The FHIR base must be an absolute http(s) URL without query or fragment."""
    try:
        url = httpx2.URL(base_url)
    except (httpx2.InvalidURL, TypeError):
        raise FhirUnavailable("The FHIR server URL is not a valid URL.") from None
    if url.scheme not in _DEFAULT_PORTS or not url.host or url.query or url.fragment:
        raise FhirUnavailable("The FHIR server URL is not an http(s) base URL.")
    return url


def _parse_relative(relative_url: str) -> str:
    """Prefetch URLs are relative to the FHIR base; an absolute one is a programming error."""
    relative = relative_url.strip().lstrip("/")
    if not relative or "://" in relative.split("?", 1)[0] or relative_url.startswith("//"):
        raise ValueError("relative_url must be a FHIR URL relative to the base, e.g. 'Patient/1'")
    return relative


def _origin(url: httpx2.URL) -> tuple[str, str, int | None]:
    return url.scheme, url.host.lower(), url.port or _DEFAULT_PORTS.get(url.scheme)


def _shortened(configured: httpx2.Timeout, remaining: float) -> httpx2.Timeout:
    """The caller's timeouts, each capped at the remaining budget."""

    def cap(value: float | None) -> float:
        return remaining if value is None else min(value, remaining)

    return httpx2.Timeout(
        connect=cap(configured.connect),
        read=cap(configured.read),
        write=cap(configured.write),
        pool=cap(configured.pool),
    )


async def _read_body(response: httpx2.Response, limit: int, what: str) -> bytes:
    """Read at most ``limit`` bytes; a 200 body beyond it is refused, an error body cut."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        size += len(chunk)
        if size > limit:
            if response.status_code == 200:
                raise FhirUnavailable(
                    f"The FHIR server's answer to the {what} is larger than {limit} bytes."
                )
            break
        chunks.append(chunk)
    return b"".join(chunks)


def _transport_reason(exc: httpx2.TransportError) -> str:
    """Plain words for a transport failure; never the request (its headers hold the token)."""
    if isinstance(exc, httpx2.ConnectError):
        return "connection failed"
    if isinstance(exc, httpx2.UnsupportedProtocol):
        return "unsupported URL scheme"
    if isinstance(exc, httpx2.RemoteProtocolError):
        return "the server broke the HTTP protocol"
    return type(exc).__name__


def _raise_for_status(
    status: int, body: bytes, headers: dict[str, str], what: str, kind: Kind
) -> None:
    diagnostics = _diagnostics(body, headers.get("Authorization", "").removeprefix("Bearer "))
    raise (_READ_ERRORS if kind == "read" else _SEARCH_ERRORS).error(status, what, diagnostics)


def _diagnostics(body: bytes, token: str) -> str | None:
    """The OperationOutcome's issue texts, shortened, with the token blanked if echoed."""
    try:
        outcome = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(outcome, dict) or outcome.get("resourceType") != "OperationOutcome":
        return None
    texts = []
    for issue in outcome.get("issue") or []:
        if isinstance(issue, dict):
            text = issue.get("diagnostics") or (issue.get("details") or {}).get("text")
            if isinstance(text, str):
                texts.append(text)
    joined = "; ".join(texts)
    if token:  # before shortening: a token cut in two would no longer be found
        joined = joined.replace(token, "[token]")
    return joined[:300] or None


def _matches(bundle: dict[str, Any], what: str) -> list[dict[str, Any]]:
    resources = []
    for entry in bundle.get("entry") or []:
        if not isinstance(entry, dict):
            raise FhirUnavailable(f"The FHIR server's answer to the {what} has a malformed entry.")
        mode = (entry.get("search") or {}).get("mode")
        resource = entry.get("resource")
        if mode == "outcome":
            if isinstance(resource, dict) and _has_error_issue(resource):
                raise FhirRejected(f"The FHIR server reported an error in the {what} result.")
            continue
        if mode not in (None, "match"):
            continue
        if not isinstance(resource, dict) or not isinstance(resource.get("resourceType"), str):
            raise FhirUnavailable(
                f"The FHIR server's answer to the {what} has an entry without a resource."
            )
        resources.append(resource)
    return resources


def _has_error_issue(outcome: dict[str, Any]) -> bool:
    return any(
        isinstance(issue, dict) and issue.get("severity") in ("error", "fatal")
        for issue in outcome.get("issue") or []
    )


def _next_link(bundle: dict[str, Any], current: str, base: httpx2.URL, what: str) -> str | None:
    """The absolute ``next`` URL, or None; refused if it leaves the base URL's origin."""
    for link in bundle.get("link") or []:
        if isinstance(link, dict) and link.get("relation") == "next":
            href = link.get("url")
            if not isinstance(href, str) or not href:
                raise FhirUnavailable(f"The FHIR server's next link for the {what} has no URL.")
            try:
                url = httpx2.URL(current).join(href)
            except httpx2.InvalidURL:
                raise FhirUnavailable(
                    f"The FHIR server's next link for the {what} is not a valid URL."
                ) from None
            if _origin(url) != _origin(base):
                raise FhirUnavailable(
                    f"The FHIR server's next link for the {what} points to another origin "
                    f"({url.scheme}://{url.host}); not followed, so the access token stays with "
                    "the FHIR server it was issued for."
                )
            return str(url)
    return None


def _describe(data: object) -> str:
    if isinstance(data, dict):
        rtype = data.get("resourceType")
        if rtype == "Bundle":
            return f"a Bundle of type {data.get('type')!r}"
        if isinstance(rtype, str):
            return f"a {rtype}"
        return "JSON that is not a FHIR resource"
    return "JSON that is not a FHIR resource"
