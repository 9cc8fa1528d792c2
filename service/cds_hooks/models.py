"""CDS Hooks 2.0 request envelope. Unknown fields and ``extension`` objects are ignored."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

ORDER_HOOKS = frozenset({"order-select", "order-sign"})


class Lenient(BaseModel):
    """Extra fields are allowed by the standard and ignored by us."""

    model_config = ConfigDict(extra="ignore")


class FhirAuthorization(Lenient):
    access_token: str = Field(min_length=1)
    token_type: str = Field(pattern="^[Bb][Ee][Aa][Rr][Ee][Rr]$")  # any case: RFC 6749 5.1
    expires_in: int | None = None
    scope: str | None = None
    subject: str | None = None
    patient: str | None = None


class Context(Lenient):
    """The hook context fields Vejviser reads; others pass through untouched."""

    patientId: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9\-.]{1,64}$")  # noqa: N815
    userId: str | None = None  # noqa: N815
    encounterId: str | None = None  # noqa: N815
    draftOrders: dict[str, Any] | None = None  # noqa: N815
    selections: list[str] | None = None


class CdsRequest(Lenient):
    hook: str = Field(min_length=1)
    hookInstance: str = Field(min_length=1)  # noqa: N815
    context: Context
    fhirServer: str | None = Field(default=None, pattern=r"^https?://")  # noqa: N815
    fhirAuthorization: FhirAuthorization | None = None  # noqa: N815
    prefetch: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _authorization_needs_server(self) -> CdsRequest:
        if self.fhirAuthorization is not None and self.fhirServer is None:
            raise ValueError("fhirAuthorization is given without fhirServer")
        return self

    @model_validator(mode="after")
    def _orders_need_draft_orders(self) -> CdsRequest:
        """order-select and order-sign are about the draft orders (REQUIRED there): without
        them the service would answer about the chart, as if the chart had been opened."""
        if self.hook in ORDER_HOOKS and self.context.draftOrders is None:
            raise ValueError(f"context.draftOrders is required for {self.hook}")
        return self
