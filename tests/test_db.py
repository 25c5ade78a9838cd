"""Tests for the operational database (storage/db.py) on SQLite and, when reachable, PostgreSQL."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, text

from shangpin.errors import ConfigError
from shangpin.records import AttributeValue, CategoryPrediction, Product
from shangpin.storage.db import (
    DB_URL_ENV,
    Base,
    PredictionStore,
    StoredPrediction,
    default_db_url,
    init_db,
    normalize_db_url,
)

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

DESCRIPTION = (
    "A sturdy everyday backpack for commuting and weekend trips, sewn from recycled polyester. "
    "Colour: forest green. Fits a 15 inch laptop."
)


@pytest.fixture
def store(db_url: str) -> Iterator[PredictionStore]:
    with PredictionStore(db_url) as store:
        yield store


def _backpack() -> Product:
    title = "Trailhead 28L Backpack, Forest Green"
    colour_start = DESCRIPTION.index("forest green")
    return Product(
        product_id="p-1",
        title=title,
        description=DESCRIPTION,
        category=CategoryPrediction("Luggage & Bags > Backpacks", score=0.91),
        extracted={
            "capacity": AttributeValue("capacity", "28L", 0.97, "text", "title", 10, 13),
            "color": AttributeValue(
                "color", "forest green", 0.88, "text", "description", colour_start, colour_start + 12
            ),
        },
        predicted={"material": AttributeValue("material", "polyester", 0.64, "predicted")},
    )


def test_round_trip_keeps_offsets_evidence_and_model_version(store: PredictionStore) -> None:
    product = _backpack()
    before = datetime.now(UTC) - timedelta(seconds=5)

    written = store.save_products([product, Product("p-2", "Plain mug")], model_version="run1@2025")

    assert written == 3
    rows = store.predictions_for("p-1")
    assert [(r.stage, r.attribute) for r in rows] == [
        ("extract_attributes", "capacity"),
        ("extract_attributes", "color"),
        ("predict_attributes", "material"),
    ]
    capacity, color, material = rows
    assert isinstance(capacity, StoredPrediction)
    assert (capacity.value, capacity.source, capacity.field, capacity.start, capacity.end) == (
        "28L",
        "text",
        "title",
        10,
        13,
    )
    assert capacity.score == pytest.approx(0.97)
    assert capacity.evidence == product.title  # the title is shorter than the context window
    assert color.evidence is not None and "forest green" in color.evidence
    start = DESCRIPTION.index("forest green")
    assert color.evidence == DESCRIPTION[start - 40 : start + 12 + 40]
    assert (material.source, material.field, material.start, material.end, material.evidence) == (
        "predicted",
        None,
        None,
        None,
        None,
    )
    assert {r.model_version for r in rows} == {"run1@2025"}
    assert all(r.created_at.tzinfo is not None and before <= r.created_at <= datetime.now(UTC) for r in rows)
    assert store.predictions_for("p-2") == []
    assert store.predictions_for("unknown") == []


def test_normalisation_rule_and_flags_are_stored(store: PredictionStore) -> None:
    product = Product(
        "p-3",
        "Acme Men's navy shirt",
        predicted={
            "colour": AttributeValue(
                "colour", "navy", 0.8, "text", "title", 11, 15, canonical="Navy Blue", conflict=True
            ),
            "season": AttributeValue("season", "Winter", 0.4, "predicted", rule="'Summer' is not allowed"),
            "fit": AttributeValue("fit", "Slim", 0.9, "predicted", rule="not allowed", rejected=True),
        },
    )
    store.save_products([product], model_version="v")
    colour, season, fit = store.predictions_for("p-3")
    assert (colour.canonical, colour.conflict, colour.rule, colour.rejected) == (
        "Navy Blue",
        True,
        None,
        False,
    )
    assert (season.canonical, season.rule, season.conflict) == (None, "'Summer' is not allowed", False)
    assert fit.rejected and fit.rule == "not allowed"


def test_category_is_stored_only_when_asked(store: PredictionStore) -> None:
    abstained = Product("p-3", "Thing", category=CategoryPrediction("Misc", score=0.1, abstained=True))

    assert store.save_products([_backpack()], model_version="v1") == 3
    assert store.save_products([_backpack(), abstained], model_version="v2", include_category=True) == 4

    category = [r for r in store.predictions_for("p-1") if r.stage == "categorize"]
    assert [(r.attribute, r.value, r.model_version) for r in category] == [
        ("category", "Luggage & Bags > Backpacks", "v2")
    ]
    assert store.predictions_for("p-3") == []


def test_count_and_empty_batches(store: PredictionStore) -> None:
    assert store.count() == 0
    assert store.save_products([], model_version="v1") == 0
    store.save_products([_backpack()], model_version="v1")
    store.save_products([_backpack()], model_version="v2")
    assert store.count() == 6


def test_migrations_are_idempotent_and_match_the_models(db_url: str) -> None:
    with PredictionStore(db_url) as first:
        first.save_products([_backpack()], model_version="v1")
    with PredictionStore(db_url) as second:  # upgrade head at head: no change, data kept
        assert second.count() == 3
    engine = init_db(db_url)
    try:
        with engine.connect() as conn:
            assert conn.execute(text("SELECT version_num FROM alembic_version")).scalars().all() == ["0004"]
            indexes = {ix["name"] for ix in inspect(conn).get_indexes("predictions")}
            assert {"ix_predictions_product_id", "ix_predictions_product_id_stage"} <= indexes
            # The migration creates exactly what the models declare (else a new revision is missing).
            assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
    finally:
        engine.dispose()


def test_in_memory_sqlite_works() -> None:
    with PredictionStore("sqlite://") as store:
        assert store.save_products([_backpack()], model_version="v1") == 3
        assert store.count() == 3


def test_unreachable_server_raises_config_error_quickly() -> None:
    url = "postgresql://postgres:s3cret@127.0.0.1:1/test?connect_timeout=2"
    t0 = time.perf_counter()
    with pytest.raises(ConfigError) as info:
        PredictionStore(url)
    assert time.perf_counter() - t0 < 5
    message = str(info.value)
    assert "127.0.0.1:1" in message and "s3cret" not in message and "***" in message
    assert "could not connect" in message and "SHANGPIN_DB_URL" in message


def test_missing_sqlite_folder_raises_config_error(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'no' / 'such' / 'dir' / 'x.db'}"
    with pytest.raises(ConfigError, match="could not connect to the database"):
        PredictionStore(url)


@pytest.mark.parametrize("url", ["not a url", "nosuchdb://host/x"])
def test_bad_url_raises_config_error(url: str) -> None:
    with pytest.raises(ConfigError, match="expected a URL like"):
        PredictionStore(url)


def test_postgresql_urls_use_psycopg3() -> None:
    assert normalize_db_url("postgresql://u:pw@h:5432/d") == "postgresql+psycopg://u:pw@h:5432/d"
    assert normalize_db_url("postgres://u@h/d") == "postgresql+psycopg://u@h/d"
    assert normalize_db_url("postgresql+psycopg://u@h/d") == "postgresql+psycopg://u@h/d"
    assert normalize_db_url("sqlite:///x.db") == "sqlite:///x.db"


def test_default_db_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(DB_URL_ENV, raising=False)
    assert default_db_url() == "sqlite:///shangpin.db"
    monkeypatch.setenv(DB_URL_ENV, "postgresql://db/shangpin")
    assert default_db_url() == "postgresql://db/shangpin"


def test_a_0001_database_is_upgraded_keeping_its_rows(tmp_path: Path) -> None:
    from alembic import command
    from alembic.config import Config
    from sqlalchemy import create_engine

    from shangpin.storage.db import MIGRATIONS_DIR

    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = create_engine(url)
    with engine.begin() as conn:
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS_DIR))
        config.attributes["connection"] = conn
        command.upgrade(config, "0001")
        conn.execute(
            text(
                "INSERT INTO predictions (product_id, stage, attribute, value, score, source, model_version) "
                "VALUES ('old', 'extract_attributes', 'colour', 'red', 0.5, 'text', 'v0')"
            )
        )
    engine.dispose()
    with PredictionStore(url) as store:
        (row,) = store.predictions_for("old")
        assert (row.value, row.canonical, row.rule, row.conflict, row.rejected) == (
            "red",
            None,
            None,
            False,
            False,
        )
