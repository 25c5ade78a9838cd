"""Operational database: stored predictions and behaviour events in SQLite or PostgreSQL, schema managed by Alembic."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

from sqlalchemy import (
    Boolean,
    DateTime,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    create_engine,
    false,
    func,
    select,
    text,
)
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column
from sqlalchemy.pool import StaticPool

from shangpin.errors import ConfigError

if TYPE_CHECKING:
    from collections.abc import Sequence
    from types import TracebackType

    from sqlalchemy.engine import Connection

    from shangpin.records import AttributeValue, Product
    from shangpin.storage.review import Thresholds

DB_URL_ENV = "SHANGPIN_DB_URL"
DEFAULT_DB_URL = "sqlite:///shangpin.db"
MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"
EVIDENCE_CONTEXT = 40
"""Characters of product text kept on each side of a span in `evidence`."""
CONNECT_TIMEOUT_S = 10
"""PostgreSQL connect timeout unless the URL sets `connect_timeout`; an unreachable server fails fast."""

# Any fixed 64-bit key: serialises `upgrade head` between processes (service workers starting together).
_MIGRATION_LOCK_KEY = 0x5368616E6770696E
_URL_FORMS = "'sqlite:///path/to/file.db' or 'postgresql://user:password@host:5432/dbname'"


class Base(DeclarativeBase):
    """Declarative base of the operational tables; its metadata is the Alembic autogenerate target."""

    # Named constraints let Alembic drop and alter them on every backend (SQLite batch mode needs names).
    metadata = MetaData(
        naming_convention={
            "ix": "ix_%(column_0_label)s",
            "uq": "uq_%(table_name)s_%(column_0_name)s",
            "ck": "ck_%(table_name)s_%(constraint_name)s",
            "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
            "pk": "pk_%(table_name)s",
        }
    )


class PredictionRow(Base):
    """One stored prediction: an attribute value, a category or a tag, with its model version and evidence."""

    __tablename__ = "predictions"
    __table_args__ = (
        Index("ix_predictions_product_id_stage", "product_id", "stage"),
        # product_id last: the workbench's "products with a pending suggestion scoring >= x" reads the index only.
        Index("ix_predictions_status_score", "status", "score", "product_id"),
        Index("ix_predictions_status_attribute_score", "status", "attribute", "score"),
        Index("ix_predictions_stage_value", "stage", "value", "product_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    product_id: Mapped[str] = mapped_column(String, index=True)
    stage: Mapped[str] = mapped_column(String)
    attribute: Mapped[str | None] = mapped_column(String)
    value: Mapped[str] = mapped_column(Text)
    score: Mapped[float] = mapped_column(Float)
    source: Mapped[str] = mapped_column(String)
    field: Mapped[str | None] = mapped_column(String)
    start: Mapped[int | None] = mapped_column(Integer)
    # "end" is an SQL keyword; the attribute gets a trailing underscore, the column keeps the plain name.
    end_: Mapped[int | None] = mapped_column("end", Integer)
    evidence: Mapped[str | None] = mapped_column(Text)
    canonical: Mapped[str | None] = mapped_column(Text)
    rule: Mapped[str | None] = mapped_column(Text)
    conflict: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    rejected: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    model_version: Mapped[str] = mapped_column(String)
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=lambda: datetime.now(UTC), server_default=func.now()
    )
    # Review state (see `shangpin.storage.review`): a stored prediction is a suggestion until decided.
    status: Mapped[str] = mapped_column(String(16), default="pending", server_default="pending")
    final_value: Mapped[str | None] = mapped_column(Text)
    reviewed_by: Mapped[str | None] = mapped_column(String)
    updated_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class ProductRow(Base):
    """The input of a product whose predictions are stored: what reviewers read and `--from-reviews` trains on."""

    __tablename__ = "products"

    id: Mapped[str] = mapped_column(String, primary_key=True)
    title: Mapped[str] = mapped_column(Text)
    description: Mapped[str | None] = mapped_column(Text)
    category: Mapped[str | None] = mapped_column(Text)
    image: Mapped[str | None] = mapped_column(Text)
    attributes: Mapped[str | None] = mapped_column(Text)
    """The attributes given on input, as JSON ({name: value or null})."""
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class AuditRow(Base):
    """One change of a suggestion: who, when, which model, state before and after (JSON), and the evidence."""

    __tablename__ = "audit"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    prediction_id: Mapped[int | None] = mapped_column(Integer, index=True)
    product_id: Mapped[str] = mapped_column(String, index=True)
    actor: Mapped[str] = mapped_column(String, index=True)
    action: Mapped[str] = mapped_column(String(16))
    before: Mapped[str | None] = mapped_column(Text)
    after: Mapped[str | None] = mapped_column(Text)
    model_version: Mapped[str | None] = mapped_column(String)
    evidence: Mapped[str | None] = mapped_column(Text)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class ApiKeyRow(Base):
    """An API key, stored as the SHA-256 of the token; `prefix` (public part of the token) finds the row."""

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    prefix: Mapped[str] = mapped_column(String(16), unique=True)
    key_hash: Mapped[str] = mapped_column(String(64))
    scope: Mapped[str] = mapped_column(String(8))
    name: Mapped[str | None] = mapped_column(String)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class EventRow(Base):
    """One behaviour event (see `shangpin.storage.events.EventStore`); the user id is stored only as a salted hash.

    `timestamp` is epoch seconds (UTC) as a float: retention and `since` filters are plain comparisons, and it
    reads the same on SQLite and PostgreSQL. `results` is the JSON list of product ids a search showed.
    """

    __tablename__ = "events"
    __table_args__ = (Index("ix_events_session_id_timestamp", "session_id", "timestamp"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    session_id: Mapped[str] = mapped_column(String)
    user_hash: Mapped[str | None] = mapped_column(String(64), index=True)
    action: Mapped[str] = mapped_column(String(16))
    timestamp: Mapped[float] = mapped_column(Float, index=True)
    product_id: Mapped[str | None] = mapped_column(String)
    category: Mapped[str | None] = mapped_column(Text)
    query: Mapped[str | None] = mapped_column(Text)
    results: Mapped[str | None] = mapped_column(Text)
    position: Mapped[int | None] = mapped_column(Integer)
    # Set by the database, so bulk inserts send no per-row value.
    ingested_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


@dataclass(frozen=True, slots=True)
class StoredPrediction:
    """A row of the `predictions` table, detached from the database.

    `attribute` is the attribute name for attribute predictions and "category" for a category; `field`,
    `start` and `end` locate a text span as in `AttributeValue`; `evidence` is the product text around it.
    """

    id: int
    product_id: str
    stage: str
    attribute: str | None
    value: str
    score: float
    source: str
    field: str | None
    start: int | None
    end: int | None
    evidence: str | None
    model_version: str
    created_at: datetime
    canonical: str | None = None
    rule: str | None = None
    conflict: bool = False
    rejected: bool = False
    status: str = "pending"
    """Review state: pending, auto_accepted, accepted, edited, rejected or superseded."""
    final_value: str | None = None
    """The value in force after review: the accepted value or the reviewer's correction; None otherwise."""
    reviewed_by: str | None = None
    updated_at: datetime | None = None


def default_db_url() -> str:
    """The URL in the environment variable SHANGPIN_DB_URL, else `shangpin.db` in the working folder."""
    return os.environ.get(DB_URL_ENV) or DEFAULT_DB_URL


def normalize_db_url(url: str) -> str:
    """Rewrite plain `postgresql://` (and `postgres://`) URLs to the psycopg 3 driver; others pass unchanged.

    Raises:
        ConfigError: the URL cannot be parsed.
    """
    parsed = _parse_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed.render_as_string(hide_password=False)


def init_db(url: str) -> Engine:
    """Connect to the database at `url` and bring its schema up to date (`alembic upgrade head`).

    Upgrading a database already at head changes nothing, so this is safe to call at every start.

    Raises:
        ConfigError: the URL is malformed, its driver is not installed, or the database cannot be reached.
    """
    parsed = make_url(normalize_db_url(url))
    engine = _create_engine(parsed)
    try:
        connection = engine.connect()
    except DBAPIError as exc:
        engine.dispose()
        raise ConfigError(_unreachable_message(parsed, exc)) from exc
    with connection, connection.begin():
        if connection.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK_KEY})
        _upgrade_head(connection)
    return engine


class Store:
    """A connection to the operational database at `url`, migrated on construction (see `init_db`); usable
    as a context manager that releases the connections."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._engine = init_db(url)

    def close(self) -> None:
        """Release the database connections."""
        self._engine.dispose()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({_mask(self.url)!r})"


class PredictionStore(Store):
    """Stored predictions of batch runs and the service, in the database at `url`.

    Construction connects and migrates the schema to the latest version (see `init_db`).

    Args:
        url: an SQLAlchemy database URL; plain `postgresql://` URLs use psycopg 3.
    """

    def save_products(
        self,
        products: Sequence[Product],
        *,
        model_version: str,
        include_category: bool = False,
        include_tags: bool = False,
        thresholds: Thresholds | None = None,
    ) -> int:
        """Store the predictions of `products` in one transaction; return the number of rows written.

        Every entry of `extracted` (stage "extract_attributes") and `predicted` (stage "predict_attributes")
        is stored. `category` is stored (stage "categorize", attribute "category") only with
        `include_category`, because on input it holds the known category rather than a prediction; pass it
        when the pipeline ran `categorize`. A category the model abstained on is not stored. Likewise the
        selected tags (stage "recommend_tags", attribute "tag") with `include_tags`.

        Stored predictions are review suggestions: each is auto-accepted when `thresholds` says its score is
        high enough (an audit record says so), otherwise pending. A product's older pending suggestions of the
        same stages are superseded by the new ones, and its input (title, description, ...) is kept in
        `products` so reviewers and `train --from-reviews` can read it.
        """
        from shangpin.storage.review import new_suggestion_rows

        now = datetime.now(UTC)
        rows: list[dict[str, Any]] = []
        for product in products:
            for stage, values in (
                ("extract_attributes", product.extracted),
                ("predict_attributes", product.predicted),
            ):
                rows.extend(_attribute_row(product, stage, av, model_version, now) for av in values.values())
            category = product.category
            if include_category and category is not None and not category.abstained:
                row = _plain_row(
                    product, "categorize", "category", category.path, category.score, model_version, now
                )
                if category.alternatives:  # what a reviewer would pick from instead
                    row["evidence"] = "alternatives: " + "; ".join(
                        f"{a.label} ({a.score:.2f})" for a in category.alternatives[:5]
                    )
                rows.append(row)
            if include_tags:
                rows.extend(
                    _plain_row(product, "recommend_tags", "tag", t.label, t.score, model_version, now)
                    for t in product.tags
                    if getattr(t, "selected", True)
                )
        if rows:
            with Session(self._engine) as session, session.begin():
                new_suggestion_rows(
                    session, products, rows, thresholds, now, category_is_input=not include_category
                )
        return len(rows)

    def predictions_for(self, product_id: str) -> list[StoredPrediction]:
        """All stored predictions of one product, oldest first."""
        query = select(PredictionRow).where(PredictionRow.product_id == product_id).order_by(PredictionRow.id)
        with Session(self._engine) as session:
            return [_stored(row) for row in session.scalars(query)]

    def count(self) -> int:
        """The number of stored predictions."""
        with Session(self._engine) as session:
            return session.scalar(select(func.count()).select_from(PredictionRow)) or 0


def _plain_row(
    product: Product, stage: str, attribute: str, value: str, score: float, model_version: str, now: datetime
) -> dict[str, Any]:
    return {
        "product_id": product.product_id,
        "stage": stage,
        "attribute": attribute,
        "value": value,
        "score": score,
        "source": "predicted",
        "conflict": False,
        "rejected": False,
        "model_version": model_version,
        "created_at": now,
    }


def _attribute_row(
    product: Product, stage: str, av: AttributeValue, model_version: str, now: datetime
) -> dict[str, Any]:
    return {
        "product_id": product.product_id,
        "stage": stage,
        "attribute": av.name,
        "value": av.value,
        "score": av.score,
        "source": av.source,
        "field": av.field,
        "start": av.start,
        "end_": av.end,
        "evidence": _evidence(product, av),
        "canonical": av.canonical,
        "rule": av.rule,
        "conflict": av.conflict,
        "rejected": av.rejected,
        "model_version": model_version,
        "created_at": now,
    }


def _evidence(product: Product, av: AttributeValue) -> str | None:
    """The product text around the span of `av`, EVIDENCE_CONTEXT characters each side; None if no span."""
    if av.field is None or av.start is None or av.end is None:
        return None
    text_ = product.text(av.field)
    snippet = text_[max(av.start - EVIDENCE_CONTEXT, 0) : av.end + EVIDENCE_CONTEXT]
    return snippet or None


def _stored(row: PredictionRow) -> StoredPrediction:
    created_at = _utc(row.created_at)
    assert created_at is not None
    return StoredPrediction(
        id=row.id,
        product_id=row.product_id,
        stage=row.stage,
        attribute=row.attribute,
        value=row.value,
        score=row.score,
        source=row.source,
        field=row.field,
        start=row.start,
        end=row.end_,
        evidence=row.evidence,
        model_version=row.model_version,
        created_at=created_at,
        canonical=row.canonical,
        rule=row.rule,
        conflict=bool(row.conflict),
        rejected=bool(row.rejected),
        status=row.status,
        final_value=row.final_value,
        reviewed_by=row.reviewed_by,
        updated_at=_utc(row.updated_at),
    )


def _utc(value: datetime | None) -> datetime | None:
    """SQLite keeps no time zone; every timestamp is written in UTC."""
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


def _upgrade_head(connection: Connection) -> None:
    from alembic import command
    from alembic.config import Config

    config = Config()
    # The option value goes through configparser interpolation, where "%" is special.
    config.set_main_option("script_location", str(MIGRATIONS_DIR).replace("%", "%%"))
    config.attributes["connection"] = connection
    command.upgrade(config, "head")


def _parse_url(url: str) -> URL:
    try:
        return make_url(url)
    except ArgumentError as exc:
        raise ConfigError(
            f"database URL {_mask(url)!r} could not be parsed ({exc}); expected a URL like {_URL_FORMS}. "
            f"Fix the URL passed with --db or set in {DB_URL_ENV}."
        ) from exc


def _create_engine(url: URL) -> Engine:
    kwargs: dict[str, Any] = {}
    backend = url.get_backend_name()
    if backend == "sqlite" and url.database in (None, "", ":memory:"):
        # One shared connection, so every thread sees the same in-memory database.
        kwargs.update(poolclass=StaticPool, connect_args={"check_same_thread": False})
    elif backend == "postgresql":
        # Test pooled connections before use: after a server restart the service recovers on the next request.
        kwargs["pool_pre_ping"] = True
        if "connect_timeout" not in url.query:
            kwargs["connect_args"] = {"connect_timeout": CONNECT_TIMEOUT_S}
    try:
        return create_engine(url, **kwargs)
    except ImportError as exc:
        raise ConfigError(
            f"database URL {_mask(url)!r} needs the driver '{url.drivername}', which is not installed "
            f"({exc}); for PostgreSQL run: pip install 'shangpin[postgres]'"
        ) from exc
    except ArgumentError as exc:
        raise ConfigError(
            f"database URL {_mask(url)!r} is not supported ({exc}); expected a URL like {_URL_FORMS}."
        ) from exc


def _unreachable_message(url: URL, exc: DBAPIError) -> str:
    reason = str(exc.orig).strip().splitlines()[0] if exc.orig is not None else str(exc)
    if url.password:
        reason = reason.replace(str(url.password), "***")
    if url.get_backend_name() == "sqlite":
        check = "check that the folder of the database file exists and is writable"
    else:
        check = (
            "check that the server is running and reachable and that host, port, user, password and "
            "database name are right"
        )
    return (
        f"could not connect to the database at {_mask(url)!r}: {reason}. Expected a reachable "
        f"{url.get_backend_name()} database ({_URL_FORMS}); {check}, or pass another URL with --db "
        f"or {DB_URL_ENV}."
    )


def _mask(url: str | URL) -> str:
    """The URL with its password replaced by ***; a URL that does not parse is masked textually."""
    if isinstance(url, URL):
        return url.render_as_string(hide_password=True)
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", url)
