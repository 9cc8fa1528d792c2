"""HTTP error statuses -> FhirErrors: the tables of the REST and the bulk client.

Checked once against the hand-written mappings they replaced (every status 300-599, same
class, message, status, diagnostics and status_url); these cases keep the rules in place.
"""

from __future__ import annotations

import pytest

from fhir_adapter.bulk import (
    _DOWNLOAD_ERRORS,
    _GROUP_ERRORS,
    _REQUEST_ERRORS,
    _STATUS_ERRORS,
    DownloadFailed,
    ExportExpired,
    ExportFailed,
    ExportNotFound,
)
from fhir_adapter.rest import (
    _READ_ERRORS,
    _SEARCH_ERRORS,
    FhirError,
    FhirNotFound,
    FhirRejected,
    FhirUnauthorized,
    FhirUnavailable,
    StatusErrors,
)

WHAT = "Patient read"


@pytest.mark.parametrize(
    ("table", "status", "kind", "message"),
    [
        (_READ_ERRORS, 401, FhirUnauthorized, "refused the access token for the Patient read"),
        (_READ_ERRORS, 410, FhirNotFound, "has no such resource for the Patient read"),
        (_SEARCH_ERRORS, 404, FhirRejected, "rejected the Patient read (HTTP 404)"),
        (_SEARCH_ERRORS, 302, FhirUnavailable, "redirects are not followed"),
        (_SEARCH_ERRORS, 429, FhirUnavailable, "failed the Patient read (HTTP 429)"),
        (_REQUEST_ERRORS, 403, FhirUnauthorized, "refused the access for the Patient read"),
        (_REQUEST_ERRORS, 404, FhirRejected, "rejected the Patient read"),
        (_GROUP_ERRORS, 404, FhirNotFound, "has no such Group for the Patient read"),
        (_STATUS_ERRORS, 410, ExportNotFound, "does not know the export job (HTTP 410)"),
        (_STATUS_ERRORS, 400, ExportFailed, "reports that the export failed (HTTP 400)"),
        (_STATUS_ERRORS, 307, FhirUnavailable, "redirects are not followed"),
        (_DOWNLOAD_ERRORS, 404, ExportExpired, "no longer has the file for the Patient read"),
        (_DOWNLOAD_ERRORS, 301, DownloadFailed, "failed the Patient read (HTTP 301)"),
        (_DOWNLOAD_ERRORS, 400, DownloadFailed, "failed the Patient read (HTTP 400)"),
    ],
)
def test_each_status_maps_to_its_error(
    table: StatusErrors, status: int, kind: type[FhirError], message: str
) -> None:
    error = table.error(status, WHAT, "the server's words")
    assert type(error) is kind
    assert message in str(error)
    assert error.status == status
    redirected = 300 <= status < 400 and kind is FhirUnavailable
    assert error.diagnostics == (None if redirected else "the server's words")


def test_the_status_url_goes_to_the_job_errors_only() -> None:
    gone = _STATUS_ERRORS.error(404, "export status request", None, status_url="https://x/s")
    failed = _STATUS_ERRORS.error(500, "export status request", None, status_url="https://x/s")
    assert isinstance(gone, ExportNotFound) and gone.status_url == "https://x/s"
    assert isinstance(failed, ExportFailed) and failed.status_url == "https://x/s"
