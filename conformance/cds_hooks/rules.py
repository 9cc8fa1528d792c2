"""Pure checks of CDS Hooks JSON: the JSON value rule, prefetch templates, cards, markdown.

Each function returns the problems it finds as plain sentences (empty: conforming), so the
checks in :mod:`conformance.cds_hooks.checks` only decide what to send and what to call a pass.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from pydantic import ValidationError

from conformance.cds_hooks.fixture import HOOK_CONTEXT_FIELDS, USER_TOKENS

SUMMARY_LIMIT = 140
INDICATORS = frozenset({"info", "warning", "critical"})
SELECTION_BEHAVIOURS = frozenset({"at-most-one", "any"})
ACTION_TYPES = frozenset({"create", "update", "delete"})
LINK_TYPES = frozenset({"absolute", "smart"})
DATE_PREFIXES = frozenset({"eq", "lt", "gt", "ge", "le"})
SPECIAL_PARAMETERS = frozenset({"_count", "_sort", "_id", "_lastUpdated"})
"""Parameters starting with ``_`` that fit the prefetch subset (``_id`` is a token,
``_lastUpdated`` a date; the standard names ``_count`` and ``_sort``)."""

_TOKEN = re.compile(r"\{\{(.*?)\}\}")
_READ = re.compile(r"^[A-Z][A-Za-z]+/[A-Za-z0-9\-.]{1,64}$")
_TYPE = re.compile(r"^[A-Z][A-Za-z]+$")
_SORT_KEY = re.compile(r"^-?[A-Za-z][A-Za-z0-9_-]*$")
_PREFIXED_DATE = re.compile(r"^([a-z]{2})(\d{4}.*)$")
_CODE_FENCE = re.compile(r"^(`{3,}|~{3,}).*?^\1", re.MULTILINE | re.DOTALL)
_CODE_SPAN = re.compile(r"(`+)(?:(?!\1).)+?\1", re.DOTALL)
_HTML = re.compile(r"<!--|<\s*/?\s*[A-Za-z][A-Za-z0-9-]*(?:\s[^<>]*)?/?\s*>")


def path_join(path: str, key: str | int) -> str:
    return f"{path}[{key}]" if isinstance(key, int) else f"{path}.{key}"


def empty_values(value: Any, path: str = "$", *, allow_empty_cards: bool = False) -> list[str]:
    """Places breaking the JSON rule: no null, "", blank string, [] or {} (except ``cards: []``)."""
    problems: list[str] = []
    if value is None:
        problems.append(f"{path} is null")
    elif isinstance(value, str) and not value.strip():
        problems.append(f"{path} is an empty string" if not value else f"{path} is blank")
    elif isinstance(value, list):
        if not value and not (allow_empty_cards and path == "$.cards"):
            problems.append(f"{path} is an empty array")
        for index, item in enumerate(value):
            problems += empty_values(item, path_join(path, index))
    elif isinstance(value, dict):
        if not value:
            problems.append(f"{path} is an empty object")
        for key, item in value.items():
            problems += empty_values(item, path_join(path, key), allow_empty_cards=False)
    return problems


def response_empty_values(body: Any) -> list[str]:
    """The JSON rule for a service response, where ``cards: []`` is the one allowed empty."""
    if not isinstance(body, dict):
        return empty_values(body)
    problems: list[str] = []
    for key, item in body.items():
        if key == "cards" and item == []:
            continue
        problems += empty_values(item, path_join("$", key))
    return problems


def is_absolute_url(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    parts = urlsplit(value)
    return parts.scheme in ("http", "https") and bool(parts.netloc)


def nonblank(value: Any) -> bool:
    return isinstance(value, str) and bool(value.strip())


# --- discovery -----------------------------------------------------------------------------------


def service_problems(service: Any, where: str) -> tuple[list[str], list[str]]:
    """(problems, notes) for one discovery entry; notes are SHOULDs that are not failures."""
    if not isinstance(service, dict):
        return [f"{where} is not an object"], []
    problems: list[str] = []
    notes: list[str] = []
    for name in ("hook", "id", "description"):
        if not nonblank(service.get(name)):
            problems.append(f"{where}.{name} is required and must be a non-empty string")
    service_id = service.get("id")
    if isinstance(service_id, str) and re.search(r"[/?#\s]", service_id):
        problems.append(f"{where}.id {service_id!r} cannot be a URL path segment")
    if "title" not in service:
        notes.append(f"{where} has no title (recommended)")
    elif not nonblank(service["title"]):
        problems.append(f"{where}.title must be a non-empty string")
    prefetch = service.get("prefetch")
    if prefetch is not None:
        if not isinstance(prefetch, dict):
            problems.append(f"{where}.prefetch must be an object of key -> query template")
        else:
            for key, template in prefetch.items():
                if not nonblank(template):
                    problems.append(f"{where}.prefetch.{key} must be a query template string")
    if "usageRequirements" in service and not nonblank(service["usageRequirements"]):
        problems.append(f"{where}.usageRequirements must be a non-empty string")
    return problems, notes


def template_problems(template: str, hook: str) -> list[str]:
    """Why a prefetch template leaves the tokens or the query subset of CDS Hooks 2.0."""
    problems: list[str] = []
    fields = HOOK_CONTEXT_FIELDS.get(hook)
    if template.count("{{") != template.count("}}"):
        problems.append("unbalanced {{ }}")
    for raw in _TOKEN.findall(template):
        token = raw.strip()
        if token in USER_TOKENS:
            continue
        name = token.removeprefix("context.")
        if not token.startswith("context.") or not re.fullmatch(r"[A-Za-z][A-Za-z0-9]*", name):
            problems.append(
                f"token {{{{{raw}}}}} is neither {{{{context.<field>}}}} nor a user token "
                f"({', '.join(sorted(USER_TOKENS))})"
            )
        elif fields is not None and name not in fields:
            problems.append(f"token {{{{{raw}}}}}: '{name}' is not a context field of {hook}")
    sample = _TOKEN.sub("x", template)
    path, _, query = sample.partition("?")
    path = path.strip("/")
    if not query and _TOKEN.fullmatch(template.strip()):
        return problems  # e.g. "{{context.userId}}": a read of the resource the token names
    if query or _TYPE.fullmatch(path):
        if not _TYPE.fullmatch(path):
            problems.append(f"'{path}' is not a type-level search (Type?params)")
    elif not _READ.fullmatch(path):
        problems.append(f"'{path}' is neither a read (Type/id) nor a type search")
    for name, value in parse_qsl(query, keep_blank_values=True):
        problems += _parameter_problems(name, value)
    return problems


def _parameter_problems(name: str, value: str) -> list[str]:
    base, _, modifier = name.partition(":")
    if name.startswith("sort:") or name == "_sort:desc":
        return [f"'{name}={value}' is not FHIR: write _sort=-{value}"]
    if "." in base:
        return [f"'{name}': chained search is outside the prefetch subset"]
    if base.startswith("_") and base not in SPECIAL_PARAMETERS:
        return [f"'{name}': {base} is outside the prefetch subset"]
    if modifier and modifier != "in":
        return [f"'{name}': the :{modifier} modifier is outside the subset (only :in)"]
    if base == "_sort":
        bad = [key for key in value.split(",") if not _SORT_KEY.fullmatch(key)]
        return [f"'_sort={value}': {', '.join(bad)} is not a sort key"] if bad else []
    if base == "_count":
        return [] if value.isdigit() else [f"'_count={value}' is not a number"]
    problems = []
    for alternative in value.split(","):
        match = _PREFIXED_DATE.match(alternative)
        if match and match[1] not in DATE_PREFIXES:
            problems.append(
                f"'{name}={alternative}': the date prefix {match[1]} is outside the subset "
                "(eq, lt, gt, ge, le)"
            )
    return problems


# --- cards ---------------------------------------------------------------------------------------


def html_in_markdown(text: str) -> list[str]:
    """Raw HTML tags or comments in markdown, outside code spans and fenced code."""
    stripped = _CODE_SPAN.sub("", _CODE_FENCE.sub("", text))
    return [match[0] for match in _HTML.finditer(stripped)]


def coding_problems(coding: Any, where: str, *, display_required: bool) -> list[str]:
    if not isinstance(coding, dict):
        return [f"{where} is not a Coding object"]
    wanted = ("system", "code", "display") if display_required else ("system", "code")
    return [
        f"{where}.{name} is missing or empty" for name in wanted if not nonblank(coding.get(name))
    ]


def card_problems(cards: list[Any]) -> list[str]:
    """Required card fields: uuid (unique), summary < 140, indicator, source, markdown detail."""
    problems: list[str] = []
    seen: dict[str, int] = {}
    for index, card in enumerate(cards):
        where = f"cards[{index}]"
        if not isinstance(card, dict):
            problems.append(f"{where} is not an object")
            continue
        problems += _uuid_problems(card.get("uuid"), f"{where}.uuid", seen, index)
        summary = card.get("summary")
        if not nonblank(summary):
            problems.append(f"{where}.summary is required")
        elif len(summary) >= SUMMARY_LIMIT:
            problems.append(f"{where}.summary has {len(summary)} characters (must be < 140)")
        if card.get("indicator") not in INDICATORS:
            problems.append(
                f"{where}.indicator is {card.get('indicator')!r}, not info|warning|critical"
            )
        problems += _source_problems(card.get("source"), f"{where}.source")
        detail = card.get("detail")
        if detail is not None:
            if not isinstance(detail, str):
                problems.append(f"{where}.detail must be a markdown string")
            elif tags := html_in_markdown(detail):
                problems.append(f"{where}.detail contains raw HTML: {', '.join(tags[:3])}")
    return problems


def _uuid_problems(value: Any, where: str, seen: dict[str, int], index: int) -> list[str]:
    if not isinstance(value, str):
        return [f"{where} is missing (needed for feedback)"]
    try:
        canonical = str(uuid.UUID(value))
    except ValueError:
        return [f"{where} {value!r} is not a UUID"]
    if canonical in seen:
        return [f"{where} repeats the uuid of cards[{seen[canonical]}]"]
    seen[canonical] = index
    return []


def _source_problems(source: Any, where: str) -> list[str]:
    if not isinstance(source, dict):
        return [f"{where} is required (an object with a label)"]
    problems = []
    if not nonblank(source.get("label")):
        problems.append(f"{where}.label is required")
    for name in ("url", "icon"):
        if name in source and not is_absolute_url(source[name]):
            problems.append(f"{where}.{name} {source[name]!r} is not an absolute URL")
    if "topic" in source:
        problems += coding_problems(source["topic"], f"{where}.topic", display_required=False)
    return problems


def suggestion_problems(cards: list[Any], system_actions: Any = None) -> tuple[list[str], int]:
    """Problems in suggestions and their actions, and how many suggestions were seen."""
    problems: list[str] = []
    count = 0
    for index, card in enumerate(cards):
        if not isinstance(card, dict) or "suggestions" not in card:
            continue
        where = f"cards[{index}]"
        suggestions = card["suggestions"]
        if not isinstance(suggestions, list):
            problems.append(f"{where}.suggestions is not an array")
            continue
        if card.get("selectionBehavior") not in SELECTION_BEHAVIOURS:
            problems.append(
                f"{where}.selectionBehavior is {card.get('selectionBehavior')!r}; with "
                "suggestions it must be at-most-one or any"
            )
        seen: dict[str, int] = {}
        for number, suggestion in enumerate(suggestions):
            count += 1
            problems += _suggestion(suggestion, f"{where}.suggestions[{number}]", seen, number)
    if system_actions is not None:
        if not isinstance(system_actions, list):
            problems.append("systemActions is not an array")
        else:
            for number, action in enumerate(system_actions):
                problems += action_problems(action, f"systemActions[{number}]")
    return problems, count


def _suggestion(suggestion: Any, where: str, seen: dict[str, int], index: int) -> list[str]:
    if not isinstance(suggestion, dict):
        return [f"{where} is not an object"]
    problems = []
    if not nonblank(suggestion.get("label")):
        problems.append(f"{where}.label is required")
    problems += _uuid_problems(suggestion.get("uuid"), f"{where}.uuid", seen, index)
    if "isRecommended" in suggestion and not isinstance(suggestion["isRecommended"], bool):
        problems.append(f"{where}.isRecommended must be true or false")
    actions = suggestion.get("actions")
    if actions is not None:
        if not isinstance(actions, list):
            problems.append(f"{where}.actions is not an array")
        else:
            for number, action in enumerate(actions):
                problems += action_problems(action, f"{where}.actions[{number}]")
    return problems


def action_problems(action: Any, where: str) -> list[str]:
    """type and description always; a valid FHIR R4 resource for create/update; an id for delete."""
    if not isinstance(action, dict):
        return [f"{where} is not an object"]
    problems = []
    kind = action.get("type")
    if kind not in ACTION_TYPES:
        problems.append(f"{where}.type is {kind!r}, not create|update|delete")
    if not nonblank(action.get("description")):
        problems.append(f"{where}.description is required")
    if kind in ("create", "update"):
        resource = action.get("resource")
        if not isinstance(resource, dict):
            problems.append(f"{where}.resource is required for {kind}")
        else:
            problems += fhir_problems(resource, f"{where}.resource")
            if kind == "update" and not nonblank(resource.get("id")):
                problems.append(f"{where}.resource has no id: an update needs one")
    elif kind == "delete":
        resource_id = action.get("resourceId")
        if not nonblank(resource_id) and not nonblank(action.get("resource")):
            problems.append(f"{where}: a delete names the resource in resourceId (Type/id)")
    return problems


def fhir_problems(resource: dict[str, Any], where: str) -> list[str]:
    """Validate against the FHIR R4(B) models of fhir.resources."""
    from fhir.resources.R4B import get_fhir_model_class

    resource_type = resource.get("resourceType")
    if not isinstance(resource_type, str):
        return [f"{where} has no resourceType"]
    try:
        model = get_fhir_model_class(resource_type)
    except (KeyError, ValueError):
        return [f"{where}: {resource_type!r} is not a FHIR R4 resource type"]
    try:
        model.model_validate(resource)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[:3]
        details = "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg')}" for e in first
        )
        return [f"{where} is not valid FHIR R4 {resource_type}: {details}"]
    return []


def override_reason_problems(cards: list[Any]) -> tuple[list[str], int]:
    problems: list[str] = []
    count = 0
    for index, card in enumerate(cards):
        if not isinstance(card, dict) or "overrideReasons" not in card:
            continue
        reasons = card["overrideReasons"]
        if not isinstance(reasons, list):
            problems.append(f"cards[{index}].overrideReasons is not an array")
            continue
        for number, reason in enumerate(reasons):
            count += 1
            problems += coding_problems(
                reason, f"cards[{index}].overrideReasons[{number}]", display_required=True
            )
    return problems, count


def link_problems(cards: list[Any]) -> tuple[list[str], int]:
    problems: list[str] = []
    count = 0
    for index, card in enumerate(cards):
        if not isinstance(card, dict) or "links" not in card:
            continue
        links = card["links"]
        if not isinstance(links, list):
            problems.append(f"cards[{index}].links is not an array")
            continue
        for number, link in enumerate(links):
            count += 1
            where = f"cards[{index}].links[{number}]"
            if not isinstance(link, dict):
                problems.append(f"{where} is not an object")
                continue
            if not nonblank(link.get("label")):
                problems.append(f"{where}.label is required")
            if not is_absolute_url(link.get("url")):
                problems.append(f"{where}.url {link.get('url')!r} is not an absolute URL")
            if link.get("type") not in LINK_TYPES:
                problems.append(f"{where}.type is {link.get('type')!r}, not absolute|smart")
            if "appContext" in link and link.get("type") != "smart":
                problems.append(f"{where}.appContext is only allowed on smart links")
            if "autolaunchable" in link and not isinstance(link["autolaunchable"], bool):
                problems.append(f"{where}.autolaunchable must be true or false")
    return problems, count


def first(items: Iterable[str], limit: int = 5) -> str:
    """A few problems in one line, with a count of the rest."""
    items = list(items)
    shown = "; ".join(items[:limit])
    return shown + (f" (and {len(items) - limit} more)" if len(items) > limit else "")
