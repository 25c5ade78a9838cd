"""Request and answer bodies of the REST API (pydantic: they also document the OpenAPI schema)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class ProductIn(BaseModel):
    """A product in the input contract of `shangpin predict` (issue 2); `id` is required, `title` unless `image`."""

    model_config = ConfigDict(extra="allow")

    id: str | int = Field(description="Product id, unique within the request.")
    title: str | None = Field(default=None, description="Product title.")
    description: str | None = None
    category: str | None = Field(default=None, description='Known category path, "A > B > C".')
    attributes: dict[str, Any] | None = Field(default=None, description="Known values; null = known absent.")
    tags: list[Any] | None = None
    image: str | None = Field(default=None, description="Image path readable by the server.")
    breadcrumb: str | None = None


class EnrichRequest(BaseModel):
    products: list[ProductIn] = Field(
        min_length=1, description="1 to 256 products (the server's --max-products)."
    )
    store: bool = Field(
        default=False,
        description="Also store the predictions as review suggestions (needs a write key).",
    )


class EnrichResponse(BaseModel):
    results: list[dict[str, Any]] = Field(description="One output object per input product, in input order.")


class RankRequestIn(BaseModel):
    """A ranking request (issue 6): the session's events so far and the candidates to order."""

    model_config = ConfigDict(extra="allow")

    id: str | int = "request"
    category: str | None = None
    session_events: list[dict[str, Any]] = Field(default_factory=list)
    candidates: list[str | int | dict[str, Any]] = Field(
        min_length=1, max_length=10_000, description='Product ids, or {"id", "score"} with a base relevance.'
    )


class RankResponse(BaseModel):
    id: str
    ranking: list[str]
    explanations: dict[str, dict[str, float]]
    scores: dict[str, float]
    category: str | None = None


class EventsRequest(BaseModel):
    events: list[dict[str, Any]] = Field(
        min_length=1, max_length=10_000, description="Behaviour events (issue 6)."
    )


class Rejected(BaseModel):
    index: int
    reason: str


class EventsResponse(BaseModel):
    accepted: int
    rejected: list[Rejected]


class ImportanceResponse(BaseModel):
    category: str = Field(description="The category asked for.")
    weights: dict[str, float] = Field(
        description="Attribute -> importance, summing to 1, most important first."
    )
    facets: list[str] = Field(description="Attributes in facet order.")


class Suggestion(BaseModel):
    id: int
    product_id: str
    stage: str
    attribute: str | None
    value: str
    score: float
    status: str
    final_value: str | None
    source: str
    field: str | None
    start: int | None
    end: int | None
    evidence: str | None
    canonical: str | None
    rule: str | None
    conflict: bool
    model_version: str
    reviewed_by: str | None
    created_at: str
    updated_at: str | None


class SuggestionPage(BaseModel):
    total: int
    items: list[Suggestion]


class Decision(BaseModel):
    value: str | None = Field(default=None, description="The corrected value (edit only).")
    note: str | None = Field(default=None, max_length=2000, description="Why; kept in the audit record.")


class BulkAccept(BaseModel):
    min_score: float = Field(ge=0.0, le=1.0)
    stage: str | None = None
    attribute: str | None = None
    category: str | None = None


class BulkAccepted(BaseModel):
    accepted: int


class AuditRecord(BaseModel):
    id: int
    suggestion_id: int | None
    product_id: str
    actor: str
    action: str
    before: dict[str, Any] | None
    after: dict[str, Any] | None
    model_version: str | None
    evidence: str | None
    at: str


class Health(BaseModel):
    status: str
    model_version: str
    stages: list[str]
    ranking: bool
    database: str
    auth: bool
