"""Errors as FHIR OperationOutcome bodies, never stack traces."""

from __future__ import annotations

import orjson
from fastapi import Response


class CdsError(Exception):
    """An error with the HTTP status and OperationOutcome issue code it maps to."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def operation_outcome(code: str, message: str) -> dict[str, object]:
    return {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": code, "diagnostics": message}],
    }


def outcome_response(status: int, code: str, message: str) -> Response:
    return Response(
        orjson.dumps(operation_outcome(code, message)),
        status_code=status,
        media_type="application/json",
    )
