"""Shared fixtures: tiny synthetic products (read-only, session scope), per-test folders and databases."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

from shangpin.records import Product
from tests.factories import tiny_products as make_tiny

os.environ.setdefault("SHANGPIN_PROGRESS", "0")
os.environ.setdefault("SHANGPIN_THREADS", "2")

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
PG_URL = os.environ.get("SHANGPIN_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


@pytest.fixture(scope="session")
def tiny_products() -> list[Product]:
    """40 synthetic products with known answers; do not modify (copy first)."""
    return make_tiny(40)


@pytest.fixture()
def model_dir(tmp_path: Path) -> Path:
    return tmp_path / "model"


def shared_data(relative: str) -> Path:
    """A path under ../shared/data, or skip the test when the shared data is not beside the repository."""
    path = SHARED / relative
    if not path.exists():
        pytest.skip(f"needs ../shared/data/{relative} (not present: this clone has no ../shared beside it)")
    return path


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty database: a SQLite file, or a PostgreSQL schema of its own, dropped afterwards."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'test.db'}"
        return
    admin = create_engine(PG_URL, connect_args={"connect_timeout": 3})
    schema = f"shangpin_test_{uuid.uuid4().hex[:12]}"
    try:
        with admin.begin() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    except OperationalError as exc:
        admin.dispose()
        shown = make_url(PG_URL).render_as_string(hide_password=True)
        pytest.skip(f"PostgreSQL not reachable at {shown} (set SHANGPIN_TEST_PG_URL): {exc.orig}")
    # A schema per test keeps parallel runs against the same server apart; it holds alembic_version too.
    url = make_url(PG_URL).update_query_dict({"options": f"-csearch_path={schema}"})
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture(scope="session")
def service_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Categoriser, extractor, tags and a ranking model, all tiny (the model the service tests serve)."""
    from shangpin.pipeline import Pipeline
    from shangpin.ranking import RANK_DIR, RankModel, load_catalog
    from shangpin.ranking.simulate import Simulator
    from shangpin.records import ScoredLabel
    from shangpin.stages.categorize import Categorizer
    from shangpin.stages.extract_attributes import AttributeExtractor
    from shangpin.stages.recommend_tags import TagRecommender

    folder = tmp_path_factory.mktemp("service") / "model"
    products = make_tiny(40)
    for p in products:
        leaf = p.category_path.split(" > ")[-1].lower() if p.category_path else "misc"
        p.tags = [ScoredLabel(leaf, 1.0), ScoredLabel(p.title.split()[0].lower(), 1.0)]
    stages = [
        Categorizer(dev_fraction=0.25),
        AttributeExtractor(num_layers=2, epochs=8, learning_rate=3e-4, batch_size=8),
        TagRecommender(keyphrases=0, min_count=2),
    ]
    Pipeline(stages).fit(products).save(folder)
    catalog = load_catalog(Path(__file__).resolve().parents[1] / "demo" / "rank_catalog.jsonl")
    RankModel().fit(catalog, Simulator(sessions=400, requests=5, seed=1).run(catalog).events).save(
        folder / RANK_DIR
    )
    return folder
