"""Search and similar products (issue 5): index build, hybrid ranking, evidence, Chinese, errors and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from shangpin.cli import app
from shangpin.errors import ConfigError, DataError, NotFittedError
from shangpin.pipeline import Pipeline
from shangpin.search import SearchIndex, build_index, hit_to_dict
from shangpin.search.store import NpyWriter
from shangpin.search.text import stem, terms
from shangpin.storage.catalog import product_to_input
from tests.factories import tiny_products

runner = CliRunner()

CATALOG = [
    {"id": "p1", "title": "Turtle Check Men Navy Blue Shirt", "category": "Apparel > Topwear > Shirts",
     "tags": ["casual", "cotton"], "attributes": {"gender": "Men", "colour": "Navy Blue"}},
    {"id": "p2", "title": "Peter England Men Navy Blue Formal Shirt", "category": "Apparel > Topwear > Shirts",
     "tags": ["formal", "cotton"], "attributes": {"gender": "Men", "colour": "Navy Blue"}},
    {"id": "p3", "title": "Nike Women Black Running Shoes", "category": "Footwear > Shoes > Sports Shoes",
     "tags": ["running"], "attributes": {"gender": "Women", "colour": "Black"}},
    {"id": "p4", "title": "Titan Women Gold Analog Watch", "category": "Accessories > Watches > Watches"},
    {"id": "p5", "title": "Fossil Men Black Chronograph Watch", "category": "Accessories > Watches > Watches"},
    {"id": "z1", "title": "耐克女子黑色跑步鞋 透气运动鞋", "category": "鞋 > 运动鞋", "tags": ["跑步"]},
    {"id": "z2", "title": "男士海军蓝纯棉衬衫 商务休闲", "category": "服装 > 衬衫", "tags": ["纯棉"]},
    {"id": "z3", "title": "安踏女子黑色慢跑鞋", "category": "鞋 > 运动鞋", "tags": ["跑步"]},
]  # fmt: skip


def _write(path: Path, rows: list[dict[str, object]]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def indexed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("search")
    build_index(folder / "model", _write(folder / "catalog.jsonl", CATALOG))
    return folder / "model"


def test_terms_stem_plurals_and_segment_chinese() -> None:
    assert terms("Men's Navy-Blue SHIRTS & Dresses") == ["men", "navy", "blue", "shirt", "dress"]
    assert stem("accessories") == "accessory" and stem("dress") == "dress" and stem("jeans") == "jean"
    zh = terms("耐克黑色跑步鞋")
    assert "黑色" in zh and "跑步" in zh and "耐克" in zh
    assert terms("150g美妍茶") == ["150g", "美妍", "茶"]  # digits and Chinese are separate runs


def test_npy_writer_round_trip(tmp_path: Path) -> None:
    writer = NpyWriter(tmp_path / "v.npy", 3, "float16")
    writer.add(np.ones((2, 3)))
    writer.add(np.arange(3.0))
    writer.close()
    loaded = np.load(tmp_path / "v.npy", mmap_mode="r")
    assert loaded.shape == (3, 3) and loaded.dtype == np.float16 and loaded[2, 2] == 2


def test_index_writes_meta_and_memory_mapped_columns(indexed: Path) -> None:
    meta = json.loads((indexed / "index" / "meta.json").read_text())
    assert meta["size"] == len(CATALOG) and meta["encoder"] == "use" and len(meta["data_sha256"]) == 64
    assert meta["built_at"] and meta["stages"] == []
    index = SearchIndex.load(indexed)
    assert isinstance(index.vectors, np.memmap) and index.vectors.dtype == np.float32
    assert index.ids[index.row_of("z2")] == "z2" and index.titles[index.row_of("p4")] == CATALOG[3]["title"]


def test_search_reports_matched_terms_category_and_attributes(indexed: Path) -> None:
    hits = SearchIndex.load(indexed).search("men navy shirts", k=3)
    assert {hits[0].product_id, hits[1].product_id} == {"p1", "p2"}
    top = hits[0]
    assert set(top.matched_terms) >= {"men", "navy", "shirt"}
    assert top.matched_category == "Apparel > Topwear > Shirts"
    assert top.matched_attributes == {"gender": "Men", "colour": "Navy Blue"}
    out = hit_to_dict(top)
    assert out["id"] == top.product_id and out["title"] and 0 < out["score"] <= 1 and out["matched"]["terms"]


def test_search_tags_are_searchable_terms(indexed: Path) -> None:
    hits = SearchIndex.load(indexed).search("formal", k=2, mode="bm25")
    assert [h.product_id for h in hits] == ["p2"] and hits[0].matched_tags == ("formal",)


def test_chinese_query_finds_chinese_products(indexed: Path) -> None:
    hits = SearchIndex.load(indexed).search("黑色跑步鞋", k=3)
    assert {h.product_id for h in hits[:2]} == {"z1", "z3"}
    assert "黑色" in hits[0].matched_terms


def test_chinese_query_reaches_english_titles_through_the_multilingual_vectors(indexed: Path) -> None:
    hits = SearchIndex.load(indexed).search("手表", k=3, mode="embedding")  # "watch"
    assert {"p4", "p5"} & {h.product_id for h in hits}


def test_bm25_mode_returns_only_products_sharing_a_term(indexed: Path) -> None:
    index = SearchIndex.load(indexed)
    assert [h.product_id for h in index.search("chronograph", k=5, mode="bm25")] == ["p5"]
    assert index.search("zzzz", k=5, mode="bm25") == []
    fallback = index.search("zzzz", k=5)  # no term matches: hybrid ranks by the vectors alone
    assert len(fallback) == 5 and fallback[0].score == fallback[0].cosine


def test_similar_excludes_itself_and_reports_shared_evidence(indexed: Path) -> None:
    hits = SearchIndex.load(indexed).similar("p1", k=3)
    assert hits[0].product_id == "p2" and "p1" not in {h.product_id for h in hits}
    assert hits[0].matched_tags == ("cotton",) and hits[0].matched_category == "Apparel > Topwear > Shirts"
    assert hits[0].matched_attributes == {"gender": "Men", "colour": "Navy Blue"}
    zh = SearchIndex.load(indexed).similar("z1", k=1)
    assert zh[0].product_id == "z3" and zh[0].matched_tags == ("跑步",)


def test_similar_modes_and_rrf(indexed: Path) -> None:
    index = SearchIndex.load(indexed)
    for mode in ("bm25", "embedding", "hybrid"):
        assert index.similar("p4", k=1, mode=mode)[0].product_id == "p5"
    assert index.similar("p4", k=1, fusion="rrf")[0].product_id == "p5"
    with pytest.raises(ConfigError, match="unknown search mode 'x'"):
        index.similar("p4", mode="x")


def test_unknown_id_names_it_and_suggests_index(indexed: Path) -> None:
    with pytest.raises(DataError, match=r"unknown product id 'p9'.*shangpin index"):
        SearchIndex.load(indexed).similar("p9")


def test_missing_index_says_to_run_index(tmp_path: Path) -> None:
    with pytest.raises(NotFittedError, match="shangpin index --model"):
        SearchIndex.load(tmp_path / "nothing")


def test_empty_catalog(tmp_path: Path) -> None:
    meta = build_index(tmp_path / "m", _write(tmp_path / "e.jsonl", []))
    assert meta["size"] == 0
    assert SearchIndex.load(tmp_path / "m").search("shirt") == []
    build_index(tmp_path / "m", _write(tmp_path / "two.jsonl", CATALOG[:2]))  # a rebuild replaces the index
    assert SearchIndex.load(tmp_path / "m").size == 2 and not list(tmp_path.glob("m/.index*"))


def test_index_runs_the_model_stages_and_keeps_given_categories(tmp_path: Path) -> None:
    from shangpin.stages.categorize import Categorizer

    model = tmp_path / "model"
    Pipeline([Categorizer(dev_fraction=0.25).fit(tiny_products(40))]).save(model)
    rows = [product_to_input(p) for p in tiny_products(6, seed=3)]
    for row in rows[1:]:
        del row["category"], row["tags"]
    rows[0]["category"] = "Given > Category"
    meta = build_index(model, _write(tmp_path / "c.jsonl", rows))
    assert meta["stages"] == ["categorize"]
    index = SearchIndex.load(model)
    facets = [json.loads(index.facets[i]) for i in range(index.size)]
    assert facets[0]["category"] == "Given > Category"
    assert [f["category"] for f in facets[1:]] == [
        "Apparel > Shoes" if r["id"].startswith("shoe") else "Food > Coffee" for r in rows[1:]
    ]
    hits = index.search("coffee", k=1, mode="bm25")  # the predicted category's words are searchable
    assert hits and hits[0].product_id.startswith("coffee")


def test_cli_index_search_similar_and_errors(tmp_path: Path) -> None:
    data = _write(tmp_path / "catalog.jsonl", CATALOG)
    model = tmp_path / "model"
    result = runner.invoke(app, ["index", "--model", str(model), "--data", str(data)])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["size"] == len(CATALOG)
    result = runner.invoke(app, ["search", "--model", str(model), "海军蓝衬衫", "--k", "2"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    matched = out["results"][0]["matched"]["terms"]
    assert out["results"][0]["id"] == "z2" and "衬衫" in matched
    result = runner.invoke(app, ["similar", "--model", str(model), "p3", "--k", "2"])
    assert result.exit_code == 0, result.output
    assert len(json.loads(result.stdout)["results"]) == 2


def test_cli_errors_exit_with_messages(tmp_path: Path) -> None:
    import subprocess
    import sys

    data = _write(tmp_path / "catalog.jsonl", CATALOG[:2])
    model = tmp_path / "model"
    assert runner.invoke(app, ["index", "--model", str(model), "--data", str(data)]).exit_code == 0
    run = [sys.executable, "-m", "shangpin"]
    out = subprocess.run([*run, "similar", "--model", str(model), "nope"], capture_output=True, text=True)
    assert (
        out.returncode == 1 and "unknown product id 'nope'" in out.stderr and "shangpin index" in out.stderr
    )
    out = subprocess.run(
        [*run, "search", "--model", str(tmp_path / "none"), "shirt"], capture_output=True, text=True
    )
    assert out.returncode == 1 and "shangpin index --model" in out.stderr


def test_default_weight_follows_the_facets(indexed: Path, tmp_path: Path) -> None:
    assert SearchIndex.load(indexed).default_weight() == 0.8  # every product has a category
    bare = [{"id": r["id"], "title": r["title"]} for r in CATALOG]
    build_index(tmp_path / "m", _write(tmp_path / "bare.jsonl", bare))
    index = SearchIndex.load(tmp_path / "m")
    assert index.meta["facet_share"] == 0.0
    assert index.default_weight() == 0.5
