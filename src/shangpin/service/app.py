"""The REST service: the library's pipeline, ranker, event store and review queue behind FastAPI.

It adds no model logic: every route validates the body, calls the library, and maps the library's errors to
HTTP answers (DataError 422, NotFoundError 404, ConflictError 409, an unreachable database 503).
"""

import logging
import math
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, TypeVar

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi import Path as PathParam
from fastapi.concurrency import run_in_threadpool
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from sqlalchemy.exc import DBAPIError

from shangpin import __version__
from shangpin.errors import (
    ConfigError,
    ConflictError,
    DataError,
    IncompatibleModelError,
    NotFittedError,
    NotFoundError,
    ShangpinError,
)
from shangpin.pipeline import Pipeline
from shangpin.records import Event, Product
from shangpin.service import schemas
from shangpin.service.batching import MicroBatcher
from shangpin.service.metrics import Metrics, MetricsMiddleware
from shangpin.service.security import ANONYMOUS, BodyLimit, KeyCache, RateLimiter
from shangpin.service.ui import COOKIE, CSRF_HEADER, CSRF_VALUE, HERE, LoginRequired, UiContext, ui_router
from shangpin.storage.catalog import product_from_dict, product_to_output
from shangpin.storage.db import Store, default_db_url
from shangpin.storage.keys import ApiKey
from shangpin.storage.review import Thresholds, suggestion_to_dict

log = logging.getLogger("shangpin.service")

AUTH_ENV = "SHANGPIN_AUTH"
StoreT = TypeVar("StoreT", bound=Store)
STATIC_DIR = HERE / "static"
_MAX_ID = 2**62
"""Ids above this do not exist and would overflow a 64-bit database integer."""
SuggestionId = Annotated[int, PathParam(ge=1, le=_MAX_ID, description="A suggestion's id.")]

_STATUS_OF: dict[type[ShangpinError], int] = {
    DataError: 422,
    NotFoundError: 404,
    ConflictError: 409,
    NotFittedError: 503,
    IncompatibleModelError: 503,
    ConfigError: 400,
}


def auth_enabled() -> bool:
    """False only when SHANGPIN_AUTH is "off" (or 0/false/no): for local demos."""
    return os.environ.get(AUTH_ENV, "on").strip().lower() not in ("off", "0", "false", "no")


@dataclass
class ServiceSettings:
    """How `create_app` serves a model.

    Attributes:
        model_dir: a model directory (pipeline stages and/or a ranking model).
        db_url: the operational database (keys, suggestions, events); default SHANGPIN_DB_URL or shangpin.db.
        auth: require API keys (see `auth_enabled`).
        max_body_bytes: larger request bodies get 413.
        max_products: products per enrichment request; more get 413.
        rate_limit: requests per second per key on average (bursts of twice that); 0 turns limits off.
        thresholds: auto-accept thresholds for stored suggestions.
        max_batch: products per model call when micro-batching concurrent requests.
        salt_file: the salt of user-id hashes for POST /v1/events (default SHANGPIN_SALT or .shangpin-salt).
    """

    model_dir: Path
    db_url: str | None = None
    auth: bool = True
    max_body_bytes: int = 8 * 2**20
    max_products: int = 256
    rate_limit: float = 100.0
    thresholds: Thresholds = field(default_factory=Thresholds)
    max_batch: int = 256
    salt_file: Path | None = None


class DatabaseUnavailable(Exception):
    """The operational database cannot be reached right now (HTTP 503); the service keeps trying."""


class Databases:
    """The stores of the service, opened on first use: the service starts, and recovers, while the database is
    down; a route that needs it answers 503 meanwhile."""

    def __init__(self, url: str, salt_file: Path | None) -> None:
        self.url, self.salt_file = url, salt_file
        self._stores: dict[type[Store], Store] = {}

    def get(self, cls: type[StoreT]) -> StoreT:
        store = self._stores.get(cls)
        if store is None:
            try:
                store = self._open(cls)
            except ConfigError as exc:
                if "could not connect" in exc.message:
                    raise DatabaseUnavailable(exc.message) from exc
                raise
            self._stores[cls] = store
        assert isinstance(store, cls)
        return store

    def _open(self, cls: type[Store]) -> Store:
        from shangpin.storage.events import EventStore, load_salt

        if cls is EventStore:
            return EventStore(self.url, salt=load_salt(self.salt_file))
        return cls(self.url)

    def close(self) -> None:
        for store in self._stores.values():
            store.close()


def create_app(settings: ServiceSettings) -> FastAPI:
    """The FastAPI application serving `settings.model_dir` (see the module docs and docs/SERVICE.md)."""
    from shangpin.predict import model_version as read_model_version
    from shangpin.storage.keys import KeyStore
    from shangpin.storage.review import ReviewStore

    model_dir = Path(settings.model_dir)
    has_pipeline = (model_dir / "pipeline.json").is_file()
    pipeline = Pipeline.load(model_dir) if has_pipeline else Pipeline()
    ranker = _load_ranker(model_dir)
    if not has_pipeline and ranker is None:
        raise ConfigError(
            f"expected a model directory at {model_dir} (pipeline.json or a ranking model), found neither; train "
            "one with 'shangpin train' or 'shangpin rank train'."
        )
    version = read_model_version(model_dir) if has_pipeline else f"{model_dir.name}@rank"
    dbs = Databases(settings.db_url or default_db_url(), settings.salt_file)
    metrics = Metrics(version, lambda: dbs.get(ReviewStore).queue_depth())
    keys = KeyCache(lambda token: dbs.get(KeyStore).verify(token))
    limiter = RateLimiter(settings.rate_limit)
    batcher = MicroBatcher(
        _runner(pipeline), max_batch=settings.max_batch, on_batch=metrics.batch_size.observe
    )
    if not settings.auth:
        log.warning(
            "authentication is OFF (%s=off): anyone who can reach this port can read, write and review. "
            "Use this for local demos only.",
            AUTH_ENV,
        )

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        await batcher.close()
        dbs.close()

    app = FastAPI(
        title="shangpin",
        version=__version__,
        summary="Structured catalog data from raw e-commerce listings.",
        description=(
            "Enrichment (categorisation, attribute extraction and prediction, tags), re-ranking from behaviour, "
            "event ingest and a review queue with an audit trail. Every route but /healthz needs an API key "
            "(`Authorization: Bearer sp_...`, made with `shangpin keys create`)."
        ),
        lifespan=lifespan,
    )
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    bearer = HTTPBearer(auto_error=False, description="An API key made with `shangpin keys create`.")

    def caller(scope: str) -> Callable[..., Awaitable[ApiKey]]:
        async def dependency(
            request: Request,
            credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
        ) -> ApiKey:
            # Async, so a cached key costs no thread hop; only a cache miss reads the database, in a thread.
            if not settings.auth:
                key = ANONYMOUS
            else:
                token = _token(request, credentials)
                if token is None:
                    raise HTTPException(
                        401,
                        "missing API key: send 'Authorization: Bearer <key>' (make one with 'shangpin keys create').",
                        headers={"WWW-Authenticate": "Bearer"},
                    )
                cached, found = keys.cached(token)
                if not cached:
                    found = await run_in_threadpool(keys.get, token)
                if found is None:
                    raise HTTPException(
                        401, "unknown or revoked API key.", headers={"WWW-Authenticate": "Bearer"}
                    )
                if not found.allows(scope):
                    raise HTTPException(
                        403, f"this key has scope '{found.scope}'; this route needs '{scope}' or higher."
                    )
                key = found
            wait = limiter.check(key.prefix)
            if wait:
                raise HTTPException(
                    429,
                    f"rate limit of {settings.rate_limit:g} requests/s for this key reached; retry in {wait:.2f} s.",
                    headers={"Retry-After": str(max(1, math.ceil(wait)))},
                )
            return key

        return dependency

    Read = Annotated[ApiKey, Depends(caller("read"))]
    Write = Annotated[ApiKey, Depends(caller("write"))]

    async def enrich(
        body: schemas.EnrichRequest, key: ApiKey, stages: tuple[str, ...] | None
    ) -> JSONResponse:
        if len(body.products) > settings.max_products:
            raise HTTPException(
                413,
                f"products: {len(body.products)} products in one request, the limit is {settings.max_products}; "
                "split the request.",
            )
        if body.store and not key.allows("write"):
            raise HTTPException(403, "store=true needs a key with scope 'write'.")
        missing = [s for s in stages or () if s not in pipeline.names]
        if missing:
            raise NotFoundError(
                f"the served model has no '{missing[0]}' stage (it has: {', '.join(pipeline.names) or 'none'}); "
                "train it into the model directory and restart the service."
            )
        products = [_product(p, i) for i, p in enumerate(body.products)]
        metrics.request_products.observe(len(products))
        out = await batcher.submit(products, stages)
        ran = pipeline.stages if stages is None else [s for s in pipeline.stages if s.name in stages]
        fields = {f for s in ran for f in s.assigns}
        if body.store:
            names = {s.name for s in ran}
            await run_in_threadpool(
                lambda: dbs.get(ReviewStore).save_products(
                    out,
                    model_version=version,
                    include_category="categorize" in names,
                    include_tags="recommend_tags" in names,
                    thresholds=settings.thresholds,
                )
            )
        # The results are built by the library's output contract: returned as JSON directly, not re-validated.
        return JSONResponse({"results": [product_to_output(p, fields) for p in out]})

    @app.post("/v1/enrich", response_model=schemas.EnrichResponse, tags=["enrichment"])
    async def enrich_all(body: schemas.EnrichRequest, key: Read) -> JSONResponse:
        """Run every stage of the model over 1-256 products; results in input order."""
        return await enrich(body, key, None)

    @app.post("/v1/categorize", response_model=schemas.EnrichResponse, tags=["enrichment"])
    async def categorize(body: schemas.EnrichRequest, key: Read) -> JSONResponse:
        """Categorise products only."""
        return await enrich(body, key, ("categorize",))

    @app.post("/v1/extract", response_model=schemas.EnrichResponse, tags=["enrichment"])
    async def extract(body: schemas.EnrichRequest, key: Read) -> JSONResponse:
        """Extract attribute values stated in the text only (spans with offsets)."""
        return await enrich(body, key, ("extract_attributes",))

    @app.post("/v1/tags", response_model=schemas.EnrichResponse, tags=["enrichment"])
    async def tags(body: schemas.EnrichRequest, key: Read) -> JSONResponse:
        """Recommend tags only."""
        return await enrich(body, key, ("recommend_tags",))

    @app.post("/v1/rank", response_model=schemas.RankResponse, tags=["ranking"])
    def rank(body: schemas.RankRequestIn, _key: Read) -> dict[str, Any]:
        """Order candidates by the preferences the session's events revealed, with explanations."""
        from shangpin.ranking import ranking_to_dict, request_from_dict

        model = _need_ranker(ranker, model_dir)
        request = request_from_dict(body.model_dump(exclude_none=True), "body")
        return ranking_to_dict(model.rank(request))

    @app.get("/v1/importance/{category:path}", response_model=schemas.ImportanceResponse, tags=["ranking"])
    def importance(category: str, _key: Read) -> dict[str, Any]:
        """Attribute importance of a category (backing off to its nearest trained ancestor) and facet order."""
        facets = _need_ranker(ranker, model_dir).facets(category)
        return {"category": category, "weights": dict(facets), "facets": [name for name, _w in facets]}

    @app.post("/v1/events", response_model=schemas.EventsResponse, tags=["ranking"])
    def events(body: schemas.EventsRequest, _key: Write) -> dict[str, Any]:
        """Store behaviour events (user ids hashed); bad events are listed with the reason, the rest are kept."""
        from shangpin.storage.events import EventStore, event_from_dict

        good: list[Event] = []
        rejected: list[dict[str, Any]] = []
        for i, obj in enumerate(body.events):
            try:
                good.append(event_from_dict(obj, f"events[{i}]"))
            except DataError as exc:
                rejected.append({"index": i, "reason": exc.message})
        accepted = dbs.get(EventStore).add(good) if good else 0
        return {"accepted": accepted, "rejected": rejected}

    @app.get("/v1/suggestions", response_model=schemas.SuggestionPage, tags=["review"])
    def suggestions(
        _key: Read,
        status: str | None = "pending",
        stage: str | None = None,
        attribute: str | None = None,
        category: str | None = None,
        product_id: str | None = None,
        min_score: Annotated[float | None, Query(ge=0.0, le=1.0)] = None,
        max_score: Annotated[float | None, Query(ge=0.0, le=1.0)] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 50,
        offset: Annotated[int, Query(ge=0, le=_MAX_ID)] = 0,
    ) -> dict[str, Any]:
        """Suggestions by status (pending: lowest score first), stage, attribute, category or product."""
        items, total = dbs.get(ReviewStore).suggestions(
            status=status or None,
            stage=stage,
            attribute=attribute,
            category=category,
            product_id=product_id,
            min_score=min_score,
            max_score=max_score,
            limit=limit,
            offset=offset,
        )
        return {"total": total, "items": [suggestion_to_dict(s) for s in items]}

    def decide(suggestion_id: int, action: str, body: schemas.Decision | None, key: ApiKey) -> dict[str, Any]:
        body = body or schemas.Decision()
        decided = dbs.get(ReviewStore).decide(
            suggestion_id, action, actor=key.actor, value=body.value, note=body.note
        )
        return suggestion_to_dict(decided)

    @app.post("/v1/suggestions/{suggestion_id}/accept", response_model=schemas.Suggestion, tags=["review"])
    def accept(
        suggestion_id: SuggestionId, key: Write, body: schemas.Decision | None = None
    ) -> dict[str, Any]:
        """Accept a suggestion as it is (its canonical value when normalisation gave one)."""
        return decide(suggestion_id, "accept", body, key)

    @app.post("/v1/suggestions/{suggestion_id}/reject", response_model=schemas.Suggestion, tags=["review"])
    def reject(
        suggestion_id: SuggestionId, key: Write, body: schemas.Decision | None = None
    ) -> dict[str, Any]:
        """Reject a suggestion (it becomes a negative example for `train --from-reviews`)."""
        return decide(suggestion_id, "reject", body, key)

    @app.post("/v1/suggestions/{suggestion_id}/edit", response_model=schemas.Suggestion, tags=["review"])
    def edit(suggestion_id: SuggestionId, body: schemas.Decision, key: Write) -> dict[str, Any]:
        """Replace a suggestion's value with a correction (`value`)."""
        return decide(suggestion_id, "edit", body, key)

    @app.post("/v1/suggestions/bulk-accept", response_model=schemas.BulkAccepted, tags=["review"])
    def bulk_accept(body: schemas.BulkAccept, key: Write) -> dict[str, Any]:
        """Accept every pending suggestion scoring at least `min_score` (optionally one stage/attribute/category)."""
        n = dbs.get(ReviewStore).bulk_accept(
            body.min_score,
            actor=key.actor,
            stage=body.stage,
            attribute=body.attribute,
            category=body.category,
        )
        return {"accepted": n}

    @app.post("/v1/suggestions/undo", response_model=schemas.Suggestion, tags=["review"])
    def undo(key: Write) -> dict[str, Any]:
        """Undo this key's most recent accept, reject or edit."""
        return suggestion_to_dict(dbs.get(ReviewStore).undo(actor=key.actor))

    @app.get("/v1/audit", response_model=list[schemas.AuditRecord], tags=["review"])
    def audit(
        _key: Read,
        product_id: str | None = None,
        suggestion_id: Annotated[int | None, Query(ge=1, le=_MAX_ID)] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 200,
    ) -> list[dict[str, Any]]:
        """Audit records, newest first: who changed what, when, with which model, before -> after."""
        return dbs.get(ReviewStore).audit(product_id=product_id, suggestion_id=suggestion_id, limit=limit)

    @app.get("/healthz", response_model=schemas.Health, tags=["operations"])
    def healthz() -> dict[str, Any]:
        """Liveness: always 200 while the process serves; `database` says whether the database answers."""
        try:
            dbs.get(ReviewStore).queue_depth()
            database = "ok"
        except (DatabaseUnavailable, DBAPIError):
            database = "unavailable"
        return {
            "status": "ok" if database == "ok" else "degraded",
            "model_version": version,
            "stages": pipeline.names,
            "ranking": ranker is not None,
            "database": database,
            "auth": settings.auth,
        }

    @app.get("/metrics", tags=["operations"], response_class=Response)
    def prometheus(_key: Read) -> Response:
        """Prometheus metrics (text format)."""
        return Response(metrics.render(), media_type=metrics.content_type)

    app.include_router(
        ui_router(
            UiContext(
                verify=keys.get,
                reviews=lambda: dbs.get(ReviewStore),
                ranker=ranker,
                model_dir=model_dir,
                model_version=version,
                auth=settings.auth,
                anonymous=ANONYMOUS,
            )
        )
    )
    app.mount("/ui/static", StaticFiles(directory=str(STATIC_DIR)), name="static")
    _install_error_handlers(app)
    return app


def _token(request: Request, credentials: HTTPAuthorizationCredentials | None) -> str | None:
    """The caller's token: the Bearer header, or the workbench's login cookie on a same-origin script call."""
    if credentials is not None and credentials.scheme.lower() == "bearer" and credentials.credentials.strip():
        return credentials.credentials.strip()
    cookie = request.cookies.get(COOKIE)
    if cookie and request.headers.get(CSRF_HEADER, "").lower() == CSRF_VALUE:
        return cookie
    return None


def _runner(pipeline: Pipeline) -> Callable[[list[Product], tuple[str, ...] | None], list[Product]]:
    def run(products: list[Product], stages: tuple[str, ...] | None) -> list[Product]:
        return list(pipeline.pipe(products, batch_size=max(len(products), 1), stages=stages))

    return run


def _product(p: schemas.ProductIn, i: int) -> Product:
    obj = {k: v for k, v in p.model_dump(exclude_unset=True).items() if v is not None}
    return product_from_dict(obj, where=f"products[{i}]")


def _load_ranker(model_dir: Path) -> Any:
    from shangpin.ranking import RANK_DIR, load_ranker

    if not (model_dir / RANK_DIR / "meta.json").is_file():
        return None
    return load_ranker(model_dir)


def _need_ranker(ranker: Any, model_dir: Path) -> Any:
    if ranker is None:
        raise NotFoundError(
            f"the served model {model_dir} has no ranking model; train one into it with 'shangpin rank train "
            f"--catalog CATALOG.jsonl --events EVENTS.jsonl --model {model_dir}' and restart the service."
        )
    return ranker


def _install_error_handlers(app: FastAPI) -> None:
    async def library_error(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ShangpinError)
        status = next((code for cls, code in _STATUS_OF.items() if isinstance(exc, cls)), 400)
        return JSONResponse({"detail": exc.message}, status_code=status)

    async def database_error(_request: Request, exc: Exception) -> JSONResponse:
        log.warning("database unavailable: %s", str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        return JSONResponse(
            {"detail": "the database is unavailable right now; retry shortly."},
            status_code=503,
            headers={"Retry-After": "5"},
        )

    async def validation_error(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        errors: Sequence[Any] = exc.errors()
        message = "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', 'invalid')}" for e in errors[:20]
        )
        return JSONResponse(
            {"detail": jsonable_encoder(errors), "message": message or "invalid request"}, status_code=422
        )

    async def login_required(_request: Request, _exc: Exception) -> RedirectResponse:
        return RedirectResponse("/ui/login", status_code=303)

    app.add_exception_handler(LoginRequired, login_required)
    app.add_exception_handler(ShangpinError, library_error)
    app.add_exception_handler(DatabaseUnavailable, database_error)
    app.add_exception_handler(DBAPIError, database_error)
    app.add_exception_handler(RequestValidationError, validation_error)
