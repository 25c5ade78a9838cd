"""Tag recommendation: metrics, vocabulary, thresholds, derived tags, keyphrases, the output contract and the CLI."""

from __future__ import annotations

import copy
import json
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from shangpin.errors import ConfigError, DataError
from shangpin.evaluate import tag_macro_f1, tag_scores
from shangpin.records import AttributeValue, CategoryPrediction, Product, ScoredLabel, TagSuggestion
from shangpin.stages.recommend_tags import TagRecommender
from shangpin.stages.recommend_tags.keyphrases import KeyphraseExtractor, candidates, known_words
from shangpin.storage.catalog import product_to_output

COLOURS = ["Navy Blue", "Black", "Red", "White"]
TYPES = ["Shirt", "Jeans", "Sneakers"]


def catalogue(n: int = 120, seed: int = 0) -> list[Product]:
    """Products whose tags are type, colour and (for sneakers) a rare 'Sports' tag, all readable from the title."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        kind, colour = rng.choice(TYPES), rng.choice(COLOURS)
        tags = [kind, colour] + (["Sports"] if kind == "Sneakers" else [])
        out.append(
            Product(
                f"p{i}",
                f"Brand{rng.randint(1, 4)} Men {colour} {kind}",
                tags=[ScoredLabel(t, 1.0) for t in tags],
            )
        )
    return out


def test_tag_scores_follow_the_definitions() -> None:
    gold = [["a", "b", "c"], ["x"]]
    pred = [["a", "z", "b", "c"], []]
    m = tag_scores(gold, pred)
    # product 1: top5 = 4 returned, 3 right: P 3/4, R 1; product 2: nothing returned: F1 0
    assert m["f1_at_5"] == pytest.approx(100 * (2 * 0.75 / 1.75) / 2)
    assert m["p_at_1"] == pytest.approx(50.0)
    assert m["p_at_5"] == pytest.approx(100 * (3 / 5) / 2)  # missing ranks count as wrong
    dcg = 1 + 1 / 2 + 1 / 2.321928094887362  # ranks 1, 3, 4
    idcg = 1 + 1 / 1.584962500721156 + 1 / 2
    assert m["ndcg_at_10"] == pytest.approx(100 * (dcg / idcg) / 2)
    macro, rows = tag_macro_f1(gold, pred)
    assert {r["tag"] for r in rows} == {"a", "b", "c", "x"}
    assert macro == pytest.approx(75.0)  # a, b, c perfect; x never returned


def test_tag_scores_length_mismatch() -> None:
    with pytest.raises(ValueError, match="as many"):
        tag_scores([["a"]], [])


@pytest.fixture(scope="module")
def fitted() -> TagRecommender:
    return TagRecommender(keyphrases=0, min_count=2).fit(catalogue())


def test_ranks_the_right_tags_first_and_scores_in_unit_interval(fitted: TagRecommender) -> None:
    test = catalogue(40, seed=1)
    pred = fitted.predict(test)
    for product, (tags, new) in zip(test, pred, strict=True):
        gold = {t.label for t in product.tags}
        assert {t.label for t in tags[: len(gold)]} == gold, (product.title, tags)
        assert all(0.0 <= t.score <= 1.0 for t in tags)
        assert [t.score for t in tags] == sorted((t.score for t in tags), reverse=True)
        assert len(tags) <= fitted.limit and new == []
    report = fitted.evaluate(test, list(fitted.pipe(copy.deepcopy(test))))
    assert report.metrics["ndcg_at_10"] == pytest.approx(100.0)
    assert report.metrics["macro_f1_selected"] > 90


def test_thresholds_flag_or_cut(fitted: TagRecommender) -> None:
    test = catalogue(10, seed=2)
    flagged = fitted.predict(test)
    assert any(not t.selected for tags, _ in flagged for t in tags)  # the tail is below its threshold
    cut = copy.copy(fitted).set_params(thresholds="cut").predict(test)
    for (f_tags, _), (c_tags, _) in zip(flagged, cut, strict=True):
        assert [t.label for t in c_tags] == [t.label for t in f_tags if t.selected]
    assert len(fitted.thresholds_) == len(fitted.tag_keys_)


def test_spellings_merge_and_min_count_prunes() -> None:
    products = catalogue(60)
    for i, p in enumerate(products):
        p.tags = [
            ScoredLabel("navy-blue" if t.label == "Navy Blue" and i % 3 == 0 else t.label, 1.0)
            for t in p.tags
        ]
    products[0].tags.append(ScoredLabel("one-off", 1.0))
    stage = TagRecommender(keyphrases=0, min_count=2).fit(products)
    assert "Navy Blue" in stage.tag_names_ and "navy-blue" not in stage.tag_names_
    assert "one-off" not in stage.tag_names_
    assert stage.train_info_["tags_dropped_min_count"] == 1


def test_derived_tags_from_category_and_attributes_do_not_leak() -> None:
    products = []
    for p in catalogue(80):
        colour = next(t.label for t in p.tags if t.label in COLOURS)
        kind = next(t.label for t in p.tags if t.label in TYPES)
        products.append(
            Product(
                p.product_id,
                p.title,
                category=CategoryPrediction(f"Apparel > {kind}"),
                attributes={
                    "colour": AttributeValue("colour", colour),
                    "year": AttributeValue("year", "2012"),
                },
            )
        )
    stage = TagRecommender(keyphrases=0).fit(products)
    assert stage.source_ == "derived"
    assert "Apparel" in stage.tag_names_ and "Navy Blue" in stage.tag_names_
    assert "2012" not in stage.tag_names_  # numbers alone make no tags
    # The category and colour the tags come from are hidden from the model: a wrong given category changes nothing.
    probe = copy.deepcopy(products[:5])
    for p in probe:
        p.category = CategoryPrediction("Apparel > Wrong")
    assert [t.label for t in stage.predict(probe)[0][0]] == [
        t.label for t in stage.predict(products[:5])[0][0]
    ]


def test_errors_name_the_problem() -> None:
    with pytest.raises(DataError, match="tags"):
        TagRecommender().fit([Product("a", "x")])
    with pytest.raises(DataError, match="min_count"):
        TagRecommender(min_count=5).fit(catalogue(3))
    with pytest.raises(ConfigError, match="thresholds"):
        TagRecommender(thresholds="maybe").fit(catalogue(10))


def test_output_contract_has_tags_best_first_and_new_tags_apart() -> None:
    p = Product("a", "x")
    p.tags = [TagSuggestion("Shirt", 0.9), TagSuggestion("Red", 0.2, selected=False)]
    p.new_tags = [TagSuggestion("Turtle Check", 0.6, new=True)]
    out = product_to_output(p, {"tags", "new_tags"})
    assert out["tags"] == [
        {"tag": "Shirt", "score": 0.9, "selected": True},
        {"tag": "Red", "score": 0.2, "selected": False},
    ]
    assert out["new_tags"] == [{"tag": "Turtle Check", "score": 0.6, "selected": True, "new": True}]


def test_keyphrase_candidates_skip_what_the_vocabulary_says() -> None:
    known = known_words(["Men", "Navy Blue", "Shirts"])
    found = [c[0] for c in candidates("Turtle Check Men Navy Blue Shirt", known)]
    assert found == ["Turtle", "Check", "Turtle Check"]
    assert candidates("Men Navy Blue Shirts", known) == []
    assert candidates("", known) == []


def test_keyphrases_rank_with_the_encoder() -> None:
    extractor = KeyphraseExtractor(known=known_words(["Men", "Black", "Track Pants"]))
    out = extractor.extract(
        [Product("a", "Manchester United Men Solid Black Track Pants"), Product("b", "")], 2, 0.0
    )
    assert out[1] == []
    phrases = [p for p, _ in out[0]]
    assert phrases and "Manchester United" in phrases
    assert all(0.0 <= s <= 1.0 for _, s in out[0])


def test_train_and_predict_commands(tmp_path: Path) -> None:
    data = tmp_path / "train.jsonl"
    data.write_text(
        "".join(
            json.dumps({"id": p.product_id, "title": p.title, "tags": [t.label for t in p.tags]}) + "\n"
            for p in catalogue(60)
        ),
        encoding="utf-8",
    )
    model = tmp_path / "model"
    run = [sys.executable, "-m", "shangpin"]
    train = subprocess.run(
        [
            *run,
            "train",
            "--task",
            "tags",
            "--data",
            str(data),
            "--model",
            str(model),
            "--set",
            "keyphrases=0",
        ],
        capture_output=True,
        text=True,
    )
    assert train.returncode == 0, train.stderr
    assert "recommend_tags" in train.stdout
    out = tmp_path / "out.jsonl"
    pred = subprocess.run(
        [*run, "predict", "--model", str(model), "--data", str(data), "--out", str(out)],
        capture_output=True,
        text=True,
    )
    assert pred.returncode == 0, pred.stderr
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert len(rows) == 60
    assert rows[0]["tags"][0]["tag"] in {t.label for t in catalogue(60)[0].tags}
    assert all("new_tags" not in r or all(t["new"] for t in r["new_tags"]) for r in rows)


@pytest.mark.parametrize("weight", [0.0, 1.0])
def test_each_model_alone_ranks_the_right_tags(weight: float) -> None:
    """Either model alone must be right on easy data (a label bug in one is otherwise hidden by the other); over
    127 products per tag."""
    stage = TagRecommender(keyphrases=0, linear_weight=weight, dev_fraction=0.0).fit(catalogue(400))
    test = catalogue(20, seed=3)
    for product, (tags, _) in zip(test, stage.predict(test), strict=True):
        gold = {t.label for t in product.tags}
        assert {t.label for t in tags[: len(gold)]} == gold, (weight, product.title, tags)


def test_tag_command_prints_json(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from shangpin.cli import app
    from shangpin.pipeline import Pipeline

    model = tmp_path / "model"
    Pipeline([TagRecommender(keyphrases=0).fit(catalogue(60))]).save(model)
    result = CliRunner().invoke(app, ["tag", "--model", str(model), "Brand1 Men Red Jeans"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert {t["tag"] for t in out["tags"][:2]} == {"Jeans", "Red"}


def test_one_product_command_without_its_stage_is_a_clear_error(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from shangpin.cli import app
    from shangpin.pipeline import Pipeline

    model = tmp_path / "model"
    Pipeline([TagRecommender(keyphrases=0).fit(catalogue(60))]).save(model)
    result = CliRunner().invoke(app, ["extract", "--model", str(model), "Brand1 Men Red Jeans"])
    assert isinstance(result.exception, ConfigError)
    assert "no 'extract_attributes' stage (it has: recommend_tags)" in str(result.exception)
    assert "--task extract" in str(result.exception)


def test_issue_7_tree_model_trains_with_products_left_without_tags() -> None:
    # Products whose every tag is under min_count become unlabelled rows; the XMC line then starts with a space.
    # Stripping it made omikuji read the first feature as a label and fail on MWPD 2020 ("Failed to load data").
    from scipy import sparse

    from shangpin.stages.recommend_tags.models import TreeTagModel

    X = sparse.csr_matrix(np.array([[0.5, 0.0, 0.2], [0.0, 0.7, 0.0], [0.3, 0.3, 0.0]], dtype=np.float32))
    Y = np.array([[1, 0], [0, 0], [0, 1]], dtype=np.uint8)
    model = TreeTagModel(n_threads=1).fit(X, Y)
    assert model.scores(X).shape == (3, 2)
