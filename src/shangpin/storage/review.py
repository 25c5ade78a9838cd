"""The review queue: stored predictions as suggestions that people accept, correct or reject, with an audit trail.

A prediction is stored `pending`, or `auto_accepted` when its score reaches the threshold for its attribute (or
task, or the default). Reviewers move it to `accepted`, `edited` (with a corrected value) or `rejected`; a newer
prediction for the same product and stage moves an undecided one to `superseded`. Every change writes an audit
record (who, when, model version, state before -> after, evidence). Only human decisions count as gold for
`train --from-reviews`: auto-accepted values that nobody looked at are never used for training.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import ColumnElement, and_, case, delete, func, insert, or_, select, text, union, update
from sqlalchemy.orm import Session

from shangpin._util import batched
from shangpin.errors import ConfigError, ConflictError, DataError, NotFoundError
from shangpin.records import AttributeValue, CategoryPrediction, Product, ScoredLabel
from shangpin.storage.db import (
    AuditRow,
    PredictionRow,
    PredictionStore,
    ProductRow,
    StoredPrediction,
    _stored,
)

STATUSES = ("pending", "auto_accepted", "accepted", "edited", "rejected", "superseded")
DECISIONS = {"accept": "accepted", "reject": "rejected", "edit": "edited"}
"""Reviewer action -> the status it leaves."""
SYSTEM_ACTOR = "system"
HUMAN_STATUSES = ("accepted", "edited", "rejected")
_ANALYZE_ROWS = 200
"""Stored rows in one call from which SQLite's planner statistics are refreshed."""
_CHUNK = 500
"""Ids per IN (...) list: well under SQLite's bound-parameter limit."""


@dataclass(frozen=True)
class Thresholds:
    """Auto-accept thresholds: a suggestion whose score reaches its threshold needs no review.

    The threshold of an attribute is looked up by attribute name, then by stage (or task name: "extract",
    "attributes", "categorize", "tags"), then `default`. A value above 1 turns auto-accept off. Values that a
    business rule rejected or that conflict with a confident model are always queued for a person.
    """

    default: float = 0.9
    stages: Mapping[str, float] = field(default_factory=dict)
    attributes: Mapping[str, float] = field(default_factory=dict)

    def threshold(self, stage: str, attribute: str | None) -> float:
        if attribute is not None and attribute in self.attributes:
            return self.attributes[attribute]
        task = _TASK_OF_STAGE.get(stage, stage)
        for key in (stage, task):
            if key in self.stages:
                return self.stages[key]
        return self.default

    def status(self, stage: str, attribute: str | None, score: float, *, flagged: bool = False) -> str:
        """ "auto_accepted" or "pending"."""
        if flagged:
            return "pending"
        return "auto_accepted" if score >= self.threshold(stage, attribute) else "pending"

    @classmethod
    def parse(cls, default: float, items: Sequence[str]) -> Thresholds:
        """Thresholds from "name=value" items: a stage or task name sets that task's, anything else an attribute's.

        Raises:
            ConfigError: an item is not "name=number" or a number lies outside [0, 1.01].
        """
        stages: dict[str, float] = {}
        attributes: dict[str, float] = {}
        for item in items:
            name, sep, raw = item.partition("=")
            try:
                value = float(raw)
            except ValueError:
                value = float("nan")
            if not sep or not name.strip() or not 0.0 <= value <= 1.01:
                raise ConfigError(
                    f"auto-accept threshold {item!r}: expected NAME=SCORE with a score in [0, 1] (above 1 turns "
                    "auto-accept off), e.g. 'color=0.95' or 'categorize=0.8'; fix the --threshold option."
                )
            key = name.strip()
            (stages if key in _TASK_OF_STAGE or key in _TASK_OF_STAGE.values() else attributes)[key] = value
        return cls(default=default, stages=stages, attributes=attributes)


_TASK_OF_STAGE = {
    "extract_attributes": "extract",
    "predict_attributes": "attributes",
    "categorize": "categorize",
    "recommend_tags": "tags",
}


def new_suggestion_rows(
    session: Session,
    products: Sequence[Product],
    rows: list[dict[str, Any]],
    thresholds: Thresholds | None,
    now: datetime,
    *,
    category_is_input: bool,
) -> None:
    """Insert prediction `rows` as suggestions (called by `PredictionStore.save_products` in its transaction).

    Keeps the products' input, supersedes their undecided suggestions of the same stages, sets each row's status
    by `thresholds` (all pending without them) and audits the automatic decisions.
    """
    _upsert_products(session, products, now, category_is_input)
    product_ids = sorted({p.product_id for p in products})
    stages = sorted({r["stage"] for r in rows})
    old: list[tuple[int, str, str, str | None]] = []
    for chunk in batched(product_ids, _CHUNK):
        old.extend(
            session.execute(
                select(
                    PredictionRow.id,
                    PredictionRow.product_id,
                    PredictionRow.value,
                    PredictionRow.model_version,
                )
                .where(PredictionRow.product_id.in_(chunk))
                .where(PredictionRow.stage.in_(stages))
                .where(PredictionRow.status == "pending")
            ).tuples()
        )
    for superseded in batched([o[0] for o in old], _CHUNK):
        session.execute(
            update(PredictionRow)
            .where(PredictionRow.id.in_(superseded))
            .values(status="superseded", updated_at=now, reviewed_by=SYSTEM_ACTOR)
        )
    audits = [
        _audit(
            pid,
            product,
            SYSTEM_ACTOR,
            "supersede",
            ("pending", None),
            ("superseded", None),
            version,
            None,
            now,
        )
        for pid, product, _value, version in old
    ]
    for row in rows:
        flagged = bool(row.get("conflict") or row.get("rejected"))
        status = (
            thresholds.status(row["stage"], row["attribute"], row["score"], flagged=flagged)
            if thresholds
            else "pending"
        )
        row["status"] = status
        row["final_value"] = (row.get("canonical") or row["value"]) if status == "auto_accepted" else None
        row["updated_at"] = now if status == "auto_accepted" else None
        row["reviewed_by"] = SYSTEM_ACTOR if status == "auto_accepted" else None
    ids = session.scalars(
        insert(PredictionRow).returning(PredictionRow.id, sort_by_parameter_order=True), rows
    ).all()
    for pid, row in zip(ids, rows, strict=True):
        if row["status"] == "auto_accepted":
            audits.append(
                _audit(
                    pid,
                    row["product_id"],
                    SYSTEM_ACTOR,
                    "auto_accept",
                    ("pending", None),
                    ("auto_accepted", row["final_value"]),
                    row["model_version"],
                    row.get("evidence"),
                    now,
                )
            )
    if audits:
        session.execute(insert(AuditRow), audits)
    if len(rows) >= _ANALYZE_ROWS:
        refresh_statistics(session)


def refresh_statistics(session: Session) -> None:
    """Let SQLite's planner know the table sizes (a sampled ANALYZE, tens of ms).

    Without statistics SQLite filters the queue by the status index even when a category names a few hundred
    products, and a filtered queue page took 0.3 s instead of 0.03 s at 10,000 products. PostgreSQL's
    autovacuum keeps its own statistics.
    """
    if session.get_bind().dialect.name == "sqlite":
        session.execute(text("PRAGMA analysis_limit=1000"))
        session.execute(text("ANALYZE"))


class ReviewStore(PredictionStore):
    """Suggestions, decisions and the audit trail in the operational database at `url` (see module docs)."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        if self._engine.dialect.name == "sqlite":
            with Session(self._engine) as session, session.begin():
                has_stats = session.execute(
                    text("SELECT 1 FROM sqlite_master WHERE name = 'sqlite_stat1'")
                ).first()
                if not has_stats:
                    refresh_statistics(session)

    def suggestions(
        self,
        *,
        status: str | None = "pending",
        stage: str | None = None,
        attribute: str | None = None,
        category: str | None = None,
        product_id: str | None = None,
        min_score: float | None = None,
        max_score: float | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> tuple[list[StoredPrediction], int]:
        """One page of suggestions (lowest score first among pending ones, which most need a look) and the total.

        `category` matches a product's given or predicted category path and everything below it.
        """
        where = self._where(status, stage, attribute, category, product_id, min_score, max_score)
        order = (PredictionRow.score, PredictionRow.id) if status == "pending" else (PredictionRow.id.desc(),)
        with Session(self._engine) as session:
            total = session.scalar(select(func.count()).select_from(PredictionRow).where(*where)) or 0
            rows = session.scalars(
                select(PredictionRow).where(*where).order_by(*order).limit(limit).offset(offset)
            )
            return [_stored(r) for r in rows], total

    def get(self, suggestion_id: int) -> StoredPrediction:
        with Session(self._engine) as session:
            return _stored(self._row(session, suggestion_id))

    def decide(
        self,
        suggestion_id: int,
        action: str,
        *,
        actor: str,
        value: str | None = None,
        note: str | None = None,
    ) -> StoredPrediction:
        """Accept, reject or edit (with `value`) one suggestion; write the audit record; return the new state.

        Raises:
            NotFoundError: no suggestion with this id.
            ConflictError: it was superseded by a newer prediction.
            DataError: unknown action, or an edit without a non-empty value.
        """
        status = _decision_status(action, value)
        now = datetime.now(UTC)
        with Session(self._engine) as session, session.begin():
            row = self._row(session, suggestion_id, lock=True)
            if row.status == "superseded":
                raise ConflictError(
                    f"suggestion {suggestion_id} was superseded by a newer prediction for product "
                    f"{row.product_id!r}; review the newer one (GET /v1/suggestions?product_id={row.product_id})."
                )
            before = (row.status, row.final_value)
            final = (
                value.strip() if status == "edited" and value is not None else (row.canonical or row.value)
            )
            row.status, row.final_value = status, (None if status == "rejected" else final)
            row.reviewed_by, row.updated_at = actor, now
            session.add(
                AuditRow(
                    **_audit(
                        row.id,
                        row.product_id,
                        actor,
                        action,
                        before,
                        (row.status, row.final_value),
                        row.model_version,
                        row.evidence,
                        now,
                        note,
                    )
                )
            )
            session.flush()
            return _stored(row)

    def bulk_accept(
        self,
        min_score: float,
        *,
        actor: str,
        stage: str | None = None,
        attribute: str | None = None,
        category: str | None = None,
    ) -> int:
        """Accept every pending suggestion scoring at least `min_score` (optionally one stage/attribute/category)."""
        now = datetime.now(UTC)
        where = self._where("pending", stage, attribute, category, None, min_score, None)
        with Session(self._engine) as session, session.begin():
            # Locked (PostgreSQL), so every row selected here is still pending when it is updated and audited.
            rows = (
                session.execute(
                    select(
                        PredictionRow.id,
                        PredictionRow.product_id,
                        PredictionRow.value,
                        PredictionRow.canonical,
                        PredictionRow.model_version,
                        PredictionRow.evidence,
                    )
                    .where(*where)
                    .with_for_update()
                )
                .tuples()
                .all()
            )
            final_value = func.coalesce(func.nullif(PredictionRow.canonical, ""), PredictionRow.value)
            for chunk in batched([r[0] for r in rows], _CHUNK):
                session.execute(
                    update(PredictionRow)
                    .where(PredictionRow.id.in_(chunk), PredictionRow.status == "pending")
                    .values(status="accepted", final_value=final_value, reviewed_by=actor, updated_at=now)
                )
            audits = [
                _audit(
                    pid,
                    product,
                    actor,
                    "bulk_accept",
                    ("pending", None),
                    ("accepted", canonical or value),
                    version,
                    evidence,
                    now,
                    f"score >= {min_score}",
                )
                for pid, product, value, canonical, version, evidence in rows
            ]
            if audits:
                session.execute(insert(AuditRow), audits)
            return len(rows)

    def undo(self, *, actor: str) -> StoredPrediction:
        """Reverse `actor`'s most recent decision that is not undone yet (one suggestion; bulk accepts excluded).

        Raises:
            NotFoundError: the actor has no decision left to undo.
            ConflictError: the suggestion changed since (someone else decided it, or it was superseded).
        """
        now = datetime.now(UTC)
        with Session(self._engine) as session, session.begin():
            recent = session.scalars(
                select(AuditRow).where(AuditRow.actor == actor).order_by(AuditRow.id.desc()).limit(500)
            ).all()
            undone = {json.loads(a.after or "{}").get("undid") for a in recent if a.action == "undo"}
            target = next((a for a in recent if a.action in DECISIONS and a.id not in undone), None)
            if target is None or target.prediction_id is None:
                raise NotFoundError(f"{actor!r} has no review decision left to undo.")
            row = self._row(session, target.prediction_id, lock=True)
            after = json.loads(target.after or "{}")
            before = json.loads(target.before or "{}")
            if (row.status, row.final_value) != (after.get("status"), after.get("value")):
                raise ConflictError(
                    f"suggestion {row.id} changed after {actor!r} decided it (now {row.status!r}); it cannot be "
                    "undone. Decide it again instead."
                )
            row.status, row.final_value = before.get("status", "pending"), before.get("value")
            row.reviewed_by, row.updated_at = actor, now
            record = _audit(
                row.id,
                row.product_id,
                actor,
                "undo",
                (after.get("status"), after.get("value")),
                (row.status, row.final_value),
                row.model_version,
                row.evidence,
                now,
            )
            record["after"] = json.dumps({"status": row.status, "value": row.final_value, "undid": target.id})
            session.add(AuditRow(**record))
            session.flush()
            return _stored(row)

    def audit(
        self, *, product_id: str | None = None, suggestion_id: int | None = None, limit: int = 200
    ) -> list[dict[str, Any]]:
        """Audit records, newest first, of one product or one suggestion (or all)."""
        query = select(AuditRow).order_by(AuditRow.id.desc()).limit(limit)
        if product_id is not None:
            query = query.where(AuditRow.product_id == product_id)
        if suggestion_id is not None:
            query = query.where(AuditRow.prediction_id == suggestion_id)
        with Session(self._engine) as session:
            return [audit_to_dict(a) for a in session.scalars(query)]

    def queue_depth(self) -> int:
        """Pending suggestions."""
        with Session(self._engine) as session:
            return (
                session.scalar(
                    select(func.count()).select_from(PredictionRow).where(PredictionRow.status == "pending")
                )
                or 0
            )

    def pending_attributes(self) -> list[str]:
        """The attribute names that have pending suggestions (for filters), sorted."""
        query = (
            select(PredictionRow.attribute)
            .where(PredictionRow.status == "pending", PredictionRow.attribute.is_not(None))
            .distinct()
        )
        with Session(self._engine) as session:
            return sorted(a for a in session.scalars(query) if a)

    def status_counts(self, *, category: str | None = None) -> dict[str, dict[str, int]]:
        """{attribute: {status: count}} over live (not superseded) suggestions; for acceptance rates per attribute."""
        where = self._where(None, None, None, category, None, None, None)
        query = (
            select(PredictionRow.attribute, PredictionRow.status, func.count())
            .where(*where, PredictionRow.status != "superseded")
            .group_by(PredictionRow.attribute, PredictionRow.status)
        )
        out: dict[str, dict[str, int]] = {}
        with Session(self._engine) as session:
            for attribute, status, n in session.execute(query).tuples():
                out.setdefault(attribute or "", {})[status] = n
        return out

    def product(self, product_id: str) -> dict[str, Any]:
        """A stored product's input (id, title, description, category, image, attributes)."""
        with Session(self._engine) as session:
            row = session.get(ProductRow, product_id)
            if row is None:
                raise NotFoundError(
                    f"no stored product with id {product_id!r}; enrich it with store=true first."
                )
            return _product_dict(row)

    def products(
        self,
        *,
        category: str | None = None,
        status: str | None = None,
        min_score: float | None = None,
        max_score: float | None = None,
        query: str | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> tuple[list[dict[str, Any]], int]:
        """One page of stored products (id order) with their live suggestions summarised, and the total.

        Each item: id, title, category (given, else the predicted one), suggestions, pending, min_score.
        `status`, `min_score` and `max_score` keep products having a live suggestion that matches them;
        `query` matches a substring of the title.
        """
        live = PredictionRow.status != "superseded"
        # Correlated EXISTS: each product probes its own few suggestions by index, instead of the database
        # materialising every matching suggestion first (0.3 s at 10,000 products with a broad filter).
        mine = PredictionRow.product_id == ProductRow.id
        where: list[ColumnElement[bool]] = []
        if category:
            predicted = select(PredictionRow.id).where(
                mine, PredictionRow.stage == "categorize", live, _under(PredictionRow.value, category)
            )
            where.append(or_(_under(ProductRow.category, category), predicted.exists()))
        if status is not None or min_score is not None or max_score is not None:
            matching = self._where(status, None, None, None, None, min_score, max_score)
            where.append(select(PredictionRow.id).where(mine, live, *matching).exists())
        if query:
            where.append(ProductRow.title.ilike(f"%{query}%"))
        with Session(self._engine) as session:
            total = session.scalar(select(func.count()).select_from(ProductRow).where(*where)) or 0
            page = (
                session.execute(
                    select(ProductRow.id, ProductRow.title, ProductRow.category)
                    .where(*where)
                    .order_by(ProductRow.id)
                    .limit(limit)
                    .offset(offset)
                )
                .tuples()
                .all()
            )
            # Summaries for this page only: aggregating every product's suggestions would cost the whole table.
            summary = {
                pid: (n, pending, low, predicted)
                for pid, n, pending, low, predicted in session.execute(
                    select(
                        PredictionRow.product_id,
                        func.count(),
                        func.sum(case((PredictionRow.status == "pending", 1), else_=0)),
                        func.min(PredictionRow.score),
                        func.max(
                            case((PredictionRow.stage == "categorize", PredictionRow.value), else_=None)
                        ),
                    )
                    .where(live, PredictionRow.product_id.in_([pid for pid, _t, _c in page]))
                    .group_by(PredictionRow.product_id)
                ).tuples()
            }
        items = []
        for pid, title, given in page:
            n, pending, low, predicted = summary.get(pid, (0, 0, None, None))
            items.append(
                {
                    "id": pid,
                    "title": title,
                    "category": given or predicted,
                    "suggestions": n or 0,
                    "pending": int(pending or 0),
                    "min_score": low,
                }
            )
        return items, total

    def titles(self, product_ids: Sequence[str]) -> dict[str, str]:
        """{product id: title} of the stored products among `product_ids`."""
        out: dict[str, str] = {}
        with Session(self._engine) as session:
            for chunk in batched(sorted(set(product_ids)), _CHUNK):
                out.update(
                    session.execute(select(ProductRow.id, ProductRow.title).where(ProductRow.id.in_(chunk)))
                    .tuples()
                    .all()  # a Result has keys(): dict.update would take it for a mapping
                )
        return out

    def reviewed_products(self, stage: str) -> list[Product]:
        """Products with human decisions on `stage`, carrying those decisions as gold (for `train --from-reviews`).

        Accepted and edited values become the gold value; a rejected value of an attribute that has no accepted
        value becomes "known absent" (a negative); rejected tags are left out of the product's tags; a product
        whose only category decisions are rejections is left out. Auto-accepted and pending suggestions are
        ignored.
        """
        with Session(self._engine) as session:
            decided = (
                session.execute(
                    select(
                        PredictionRow.product_id,
                        PredictionRow.attribute,
                        PredictionRow.status,
                        PredictionRow.final_value,
                        PredictionRow.value,
                        PredictionRow.id,
                    )
                    .where(PredictionRow.stage == stage, PredictionRow.status.in_(HUMAN_STATUSES))
                    .order_by(PredictionRow.id)
                )
                .tuples()
                .all()
            )
            by_product: dict[str, list[tuple[str | None, str, str | None, str]]] = {}
            for product_id, attribute, status, final, value, _id in decided:
                by_product.setdefault(product_id, []).append((attribute, status, final, value))
            rows = {}
            for chunk in batched(sorted(by_product), _CHUNK):
                rows.update(
                    {r.id: r for r in session.scalars(select(ProductRow).where(ProductRow.id.in_(chunk)))}
                )
        products = []
        for product_id, decisions in by_product.items():
            row = rows.get(product_id)
            if row is None:
                continue
            product = _gold_product(row, stage, decisions)
            if stage == "categorize" and product.category is None:
                continue  # only rejections: no label to learn (a classifier takes no "not this class")
            products.append(product)
        return products

    def _row(self, session: Session, suggestion_id: int, *, lock: bool = False) -> PredictionRow:
        query = select(PredictionRow).where(PredictionRow.id == suggestion_id)
        row = session.scalars(query.with_for_update() if lock else query).first()
        if row is None:
            raise NotFoundError(f"no suggestion with id {suggestion_id}; list them with GET /v1/suggestions.")
        return row

    @staticmethod
    def _where(
        status: str | None,
        stage: str | None,
        attribute: str | None,
        category: str | None,
        product_id: str | None,
        min_score: float | None,
        max_score: float | None,
        *,
        column: Any = None,
    ) -> list[ColumnElement[bool]]:
        """Filters of suggestions (or, with `column`, of product ids by `category`)."""
        where: list[ColumnElement[bool]] = []
        if status is not None:
            if status not in STATUSES:
                raise DataError(f"status must be one of {', '.join(STATUSES)}, found {status!r}.")
            where.append(PredictionRow.status == status)
        if stage is not None:
            where.append(PredictionRow.stage == stage)
        if attribute is not None:
            where.append(PredictionRow.attribute == attribute)
        if product_id is not None:
            where.append(PredictionRow.product_id == product_id)
        if min_score is not None:
            where.append(PredictionRow.score >= min_score)
        if max_score is not None:
            where.append(PredictionRow.score <= max_score)
        if category:
            given = select(ProductRow.id).where(_under(ProductRow.category, category))
            predicted = select(PredictionRow.product_id).where(
                PredictionRow.stage == "categorize",
                PredictionRow.status != "superseded",
                _under(PredictionRow.value, category),
            )
            ids = PredictionRow.product_id if column is None else column
            # One IN over a UNION lets the database drive an index lookup by product from the category's ids.
            where.append(ids.in_(union(given, predicted)))
        return where


def _under(column: Any, category: str) -> ColumnElement[bool]:
    """`column` is `category` or a path below it; a range, not LIKE, so an index on the column serves it."""
    prefix = f"{category} > "
    return or_(column == category, and_(column >= prefix, column < prefix + "\U0010ffff"))


def audit_to_dict(row: AuditRow) -> dict[str, Any]:
    at = row.at if row.at.tzinfo is not None else row.at.replace(tzinfo=UTC)
    return {
        "id": row.id,
        "suggestion_id": row.prediction_id,
        "product_id": row.product_id,
        "actor": row.actor,
        "action": row.action,
        "before": json.loads(row.before) if row.before else None,
        "after": json.loads(row.after) if row.after else None,
        "model_version": row.model_version,
        "evidence": row.evidence,
        "at": at.isoformat(),
    }


def suggestion_to_dict(s: StoredPrediction) -> dict[str, Any]:
    return {
        "id": s.id,
        "product_id": s.product_id,
        "stage": s.stage,
        "attribute": s.attribute,
        "value": s.value,
        "score": round(s.score, 4),
        "status": s.status,
        "final_value": s.final_value,
        "source": s.source,
        "field": s.field,
        "start": s.start,
        "end": s.end,
        "evidence": s.evidence,
        "canonical": s.canonical,
        "rule": s.rule,
        "conflict": s.conflict,
        "model_version": s.model_version,
        "reviewed_by": s.reviewed_by,
        "created_at": s.created_at.isoformat(),
        "updated_at": s.updated_at.isoformat() if s.updated_at else None,
    }


def _decision_status(action: str, value: str | None) -> str:
    if action not in DECISIONS:
        raise DataError(f"review action must be one of {', '.join(DECISIONS)}, found {action!r}.")
    if action == "edit" and (value is None or not value.strip()):
        raise DataError('an edit needs the corrected value: send {"value": "..."} (a non-empty string).')
    return DECISIONS[action]


def _audit(
    prediction_id: int | None,
    product_id: str,
    actor: str,
    action: str,
    before: tuple[str | None, str | None],
    after: tuple[str | None, str | None],
    model_version: str | None,
    evidence: str | None,
    now: datetime,
    note: str | None = None,
) -> dict[str, Any]:
    after_obj: dict[str, Any] = {"status": after[0], "value": after[1]}
    if note:
        after_obj["note"] = note
    return {
        "prediction_id": prediction_id,
        "product_id": product_id,
        "actor": actor,
        "action": action,
        "before": json.dumps({"status": before[0], "value": before[1]}, ensure_ascii=False),
        "after": json.dumps(after_obj, ensure_ascii=False),
        "model_version": model_version,
        "evidence": evidence,
        "at": now,
    }


def _upsert_products(
    session: Session, products: Iterable[Product], now: datetime, category_is_input: bool
) -> None:
    rows = {p.product_id: _product_row(p, now, category_is_input) for p in products}
    if not rows:
        return
    ids = sorted(rows)
    # Delete-then-insert reads the same on every backend (no dialect-specific upsert) inside one transaction.
    for chunk in batched(ids, _CHUNK):
        session.execute(delete(ProductRow).where(ProductRow.id.in_(chunk)))
    session.execute(insert(ProductRow), [rows[i] for i in ids])


def _product_row(product: Product, now: datetime, category_is_input: bool) -> dict[str, Any]:
    given = {k: (None if v is None else v.value) for k, v in product.attributes.items()}
    # After categorize, `category` is the prediction (stored as a suggestion), not the product's known category.
    known = product.category_path if category_is_input else None
    return {
        "id": product.product_id,
        "title": product.title,
        "description": product.description or None,
        "category": known,
        "image": product.image,
        "attributes": json.dumps(given, ensure_ascii=False) if given else None,
        "updated_at": now,
    }


def _product_dict(row: ProductRow) -> dict[str, Any]:
    out: dict[str, Any] = {"id": row.id, "title": row.title}
    for key in ("description", "category", "image"):
        if getattr(row, key):
            out[key] = getattr(row, key)
    if row.attributes:
        out["attributes"] = json.loads(row.attributes)
    return out


def _gold_product(
    row: ProductRow, stage: str, decisions: list[tuple[str | None, str, str | None, str]]
) -> Product:
    product = Product(product_id=row.id, title=row.title, description=row.description or "", image=row.image)
    if stage == "categorize":
        accepted = [final for _a, status, final, _v in decisions if status != "rejected" and final]
        if accepted:
            product.category = CategoryPrediction(path=accepted[-1])
    elif stage == "recommend_tags":
        tags = {final: None for _a, status, final, _v in decisions if status != "rejected" and final}
        product.tags = [ScoredLabel(t, 1.0) for t in tags]
    else:
        if row.category:
            product.category = CategoryPrediction(path=row.category)
        for attribute, status, final, _value in decisions:
            if attribute is None:
                continue
            if status != "rejected" and final:
                product.attributes[attribute] = AttributeValue(attribute, final)
            elif attribute not in product.attributes:
                product.attributes[attribute] = None
    return product


def merge_reviews(products: Sequence[Product], reviewed: Sequence[Product], stage: str) -> list[Product]:
    """`products` with the reviewed products' decisions laid over them (new products appended).

    Attribute stages take each reviewed attribute (a correction replaces the label, a rejection without an
    accepted value marks it known absent) and keep the rest; categorize and tags take the reviewed category or
    tag list whole.
    """
    out = {p.product_id: p for p in products}
    for r in reviewed:
        base = out.get(r.product_id)
        if base is None:
            out[r.product_id] = r
        elif stage == "categorize":
            base.category = r.category or base.category
        elif stage == "recommend_tags":
            base.tags = r.tags
        else:
            base.attributes = {**base.attributes, **r.attributes}
    return list(out.values())


__all__ = [
    "DECISIONS",
    "STATUSES",
    "ReviewStore",
    "Thresholds",
    "audit_to_dict",
    "merge_reviews",
    "new_suggestion_rows",
    "suggestion_to_dict",
]
