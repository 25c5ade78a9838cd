"""Workbench page times (issue 8) with 10,000 products in the database.

Fills a fresh database through `ReviewStore.save_products` with N synthetic products (title, description, a
predicted category with alternatives, 4 extracted attribute spans, 3 tags: 8 suggestions each, most pending), then
renders each workbench page R times in-process (FastAPI TestClient: routing, database queries and templates, no
network) and reports median and max milliseconds per page. Uses the service test model only for its model
version; no model runs.

    python benchmarks/workbench.py [--products 10000] [--repeat 20] [--db sqlite:///path.db | postgresql://...]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import time
import uuid
from pathlib import Path

from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from tests.factories import tiny_products

from shangpin.pipeline import Pipeline
from shangpin.ranking import RANK_DIR, RankModel, load_catalog
from shangpin.ranking.simulate import Simulator
from shangpin.records import AttributeValue, CategoryPrediction, Product, ScoredLabel, TagSuggestion
from shangpin.service import ServiceSettings, create_app
from shangpin.stages.categorize import Categorizer
from shangpin.storage.review import ReviewStore, Thresholds

ROOT = Path(__file__).resolve().parents[1]
COLOURS = ["Red", "Navy Blue", "Black", "White", "Olive Green", "Pink", "Grey"]
KINDS = ["Running Shoe", "Sandal", "Loafer", "Ankle Boot", "Sneaker", "Slipper"]
BRANDS = ["Acme", "Orbit", "Kestrel", "Juniper Co", "Blue Harbor", "Northwind"]
CATEGORIES = ["Shoes > Running", "Shoes > Sandals", "Shoes > Boots", "Shoes > Loafers", "Shoes > Sneakers"]


def product(i: int, rng: random.Random) -> Product:
    brand, colour, kind = rng.choice(BRANDS), rng.choice(COLOURS), rng.choice(KINDS)
    size = f"{rng.randint(5, 12)} M US"
    title = f"{brand} Women's {kind}, {colour}, {size}"
    p = Product(
        f"p{i:05d}", title, description=f"A {colour.lower()} {kind.lower()} by {brand}. 运动鞋 轻便 透气."
    )
    cat = rng.choice(CATEGORIES)
    p.category = CategoryPrediction(
        cat,
        rng.random(),
        alternatives=tuple(ScoredLabel(c, rng.random() / 3) for c in CATEGORIES if c != cat)[:3],
    )
    for name, value in (("Brand", brand), ("Color", colour), ("Shoe type", kind), ("Size", size)):
        start = title.index(value)
        p.extracted[name] = AttributeValue(
            name, value, rng.random(), "text", "title", start, start + len(value)
        )
    p.tags = [TagSuggestion(t, rng.random()) for t in (kind.lower(), colour.lower(), brand.lower())]
    return p


def tiny_model(folder: Path) -> Path:
    """A categoriser and a ranking model over the demo catalog (for the importance chart); seconds to train."""
    model = folder / "model"
    Pipeline([Categorizer(dev_fraction=0.25)]).fit(tiny_products(40)).save(model)
    catalog = load_catalog(ROOT / "demo" / "rank_catalog.jsonl")
    RankModel().fit(catalog, Simulator(sessions=400, requests=5, seed=1).run(catalog).events).save(
        model / RANK_DIR
    )
    return model


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--products", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--db", default=None, help="Database URL (default: a fresh SQLite file).")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="shangpin-workbench-"))
    url = args.db or f"sqlite:///{folder / 'wb.db'}"
    schema = None
    if url.startswith("postgresql"):
        schema = f"shangpin_bench_{uuid.uuid4().hex[:10]}"
        with create_engine(url).begin() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
        url = make_url(url).update_query_dict({"options": f"-csearch_path={schema}"}).render_as_string(False)
    rng = random.Random(5)
    t0 = time.perf_counter()
    with ReviewStore(url) as store:
        for start in range(0, args.products, 1000):
            batch = [product(i, rng) for i in range(start, min(start + 1000, args.products))]
            store.save_products(
                batch,
                model_version="bench@1",
                include_category=True,
                include_tags=True,
                thresholds=Thresholds(default=0.95),
            )
        suggestions = store.suggestions(status=None, limit=1)[1]
        pending = store.queue_depth()
    fill = time.perf_counter() - t0
    print(f"{args.products} products, {suggestions} suggestions ({pending} pending) stored in {fill:.1f} s")
    app = create_app(ServiceSettings(model_dir=tiny_model(folder), db_url=url, auth=False))
    pages = {
        "queue": "/ui/queue",
        "queue, one attribute": "/ui/queue?attribute=Color",
        "queue, one category": "/ui/queue?category=Shoes+%3E+Boots",
        "products": "/ui/products",
        "products, page 100": "/ui/products?page=100",
        "products, filtered": "/ui/products?category=Shoes&status=pending&min_score=0.5&q=Acme",
        "product": "/ui/products/p04321",
        "insights": "/ui/insights?category=Apparel+%26+Accessories+%3E+Shoes",
        "reports": "/ui/reports",
    }
    results = {}
    with TestClient(app) as client:
        for name, path in pages.items():
            times = []
            for _ in range(args.repeat + 2):
                t = time.perf_counter()
                answer = client.get(path)
                times.append(time.perf_counter() - t)
                assert answer.status_code == 200, (path, answer.status_code, answer.text[:300])
            times = times[2:]  # warm-up
            results[name] = {
                "median_ms": round(statistics.median(times) * 1000, 1),
                "max_ms": round(max(times) * 1000, 1),
            }
            print(
                f"{name:28s} median {results[name]['median_ms']:7.1f} ms   max {results[name]['max_ms']:7.1f} ms"
            )
    if schema is not None:
        with create_engine(args.db).begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
    args.out.mkdir(parents=True, exist_ok=True)
    backend = "postgresql" if schema else "sqlite"
    out = args.out / f"workbench-{backend}.json"
    out.write_text(
        json.dumps({"products": args.products, "suggestions": suggestions, "pages": results}, indent=2)
    )
    print(f"written {out}")


if __name__ == "__main__":
    main()
