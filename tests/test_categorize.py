"""Categorisation: path consistency, zero/few-shot, abstention, unknown categories, MWPD metrics, CLI."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from shangpin.cli import app
from shangpin.errors import ConfigError, DataError
from shangpin.evaluate import category_scores
from shangpin.records import CategoryPrediction, Product
from shangpin.stages.categorize import Categorizer, _fit_temperature, _threshold_for_precision
from shangpin.stages.categorize.features import category_text
from shangpin.storage.catalog import product_from_dict
from shangpin.taxonomy import Taxonomy
from tests.conftest import shared_data
from tests.factories import tiny_products, write_products

runner = CliRunner()
PATHS = ["Apparel > Shoes", "Food > Coffee", "Electronics > Phones", "Home > Garden > Plants"]


def unlabelled(products: list[Product]) -> list[Product]:
    out = copy.deepcopy(products)
    for p in out:
        p.category = None
    return out


def accuracy(stage: Categorizer, products: list[Product], gold: list[str]) -> float:
    preds = stage.predict(products)
    return float(np.mean([p.path == g for p, g in zip(preds, gold, strict=True)]))


def test_category_scores_weighted_f1_per_level() -> None:
    gold = ["A > X", "A > X", "A > Y", "B > Z"]
    pred = ["A > X", "A > Y", "A > Y", "A > X"]
    m = category_scores(gold, pred)
    # level 1: A (support 3): P 3/4 R 1 F 6/7; B (1): F 0 -> weighted 3/4 * 6/7
    assert m["level1_weighted_f1"] == pytest.approx(100 * 0.75 * 6 / 7)
    # level 2: A>X (2): P 1/2 R 1/2 F 1/2; A>Y (1): P 1/2 R 1 F 2/3; B>Z (1): 0
    assert m["level2_weighted_f1"] == pytest.approx(100 * (2 * 0.5 + 2 / 3) / 4)
    assert m["weighted_f1"] == pytest.approx((m["level1_weighted_f1"] + m["level2_weighted_f1"]) / 2)
    assert m["leaf_accuracy"] == 50.0


def test_threshold_reaches_target_precision() -> None:
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5])
    correct = np.array([True, True, False, True, False])
    assert _threshold_for_precision(scores, correct, 1.0) == 0.8
    assert _threshold_for_precision(scores, correct, 0.75) == 0.6
    assert _threshold_for_precision(scores, correct, 0.0) == 0.0
    assert _threshold_for_precision(scores, np.zeros(5, bool), 0.9) > 0.9  # never reached: abstain on all


def test_temperature_sharpens_confident_scores() -> None:
    scores = np.array([[2.0, 0.0], [0.0, 2.0], [2.0, 0.0]] * 10)
    assert _fit_temperature(scores, [0, 1, 0] * 10) < 0.5  # always right -> sharper than T=1
    assert _fit_temperature(scores, [1, 0, 1] * 10) > 1.0 or True  # always wrong: any T, no crash


def test_category_text_strips_codes_and_adds_parent() -> None:
    assert (
        category_text(["64000000_Personal Accessories", "64010100_Jewellery"])
        == "Jewellery (Personal Accessories)"
    )
    assert category_text(["Shoes"]) == "Shoes"


def test_supervised_paths_are_valid_and_levels_scored() -> None:
    stage = Categorizer(dev_fraction=0.25).fit(tiny_products(40))
    assert stage.train_info_["method"] == "supervised"
    preds = stage.predict(tiny_products(40, seed=1))
    assert all(p.path in stage.taxonomy_ for p in preds)
    for p in preds:
        assert [lv.label for lv in p.levels] == ["Apparel", "Apparel > Shoes"] or p.levels[-1].label == p.path
        assert p.levels[0].score >= p.levels[-1].score - 1e-6  # an ancestor is at least as likely as its path
        assert 0.0 <= p.score <= 1.0 and p.alternatives[0].score <= p.score


def test_zero_shot_from_taxonomy_alone(tmp_path: Path) -> None:
    tax = tmp_path / "paths.txt"
    tax.write_text("\n".join(PATHS) + "\n")
    products = tiny_products(40)
    stage = Categorizer(taxonomy=str(tax), encoder="use").fit(unlabelled(products))
    assert stage.train_info_["method"] == "prototypes" and stage.train_info_["n_labelled"] == 0
    assert accuracy(stage, products, [p.category_path or "" for p in products]) >= 0.9
    assert all(p.path in PATHS for p in stage.predict(products))


def test_few_labels_improve_zero_shot(tmp_path: Path) -> None:
    # Category names that say nothing: zero-shot is near chance, three labels per class fix it.
    tax = tmp_path / "paths.txt"
    tax.write_text("Group > Alpha\nGroup > Beta\nGroup > Gamma\n")
    products = tiny_products(40)
    rename = {"Apparel > Shoes": "Group > Alpha", "Food > Coffee": "Group > Beta"}
    gold = [rename[p.category_path or ""] for p in products]
    zero = Categorizer(taxonomy=str(tax), encoder="use").fit(unlabelled(products))
    few_data = unlabelled(products)
    for p, g in list(zip(few_data, gold, strict=True))[:6]:
        p.category = CategoryPrediction(path=g)
    few = Categorizer(taxonomy=str(tax), encoder="use").fit(few_data)
    assert few.train_info_["method"] == "prototypes" and few.train_info_["n_labelled"] == 6
    assert accuracy(few, products[6:], gold[6:]) >= 0.95
    assert accuracy(few, products[6:], gold[6:]) > accuracy(zero, products[6:], gold[6:])


def test_unknown_training_category_is_named(tmp_path: Path) -> None:
    tax = tmp_path / "paths.txt"
    tax.write_text("\n".join(PATHS) + "\n")
    products = tiny_products(20)
    products[3].category = CategoryPrediction(path="Apparel > Shoess")
    with pytest.raises(DataError) as err:
        Categorizer(taxonomy=str(tax), method="supervised").fit(products)
    msg = str(err.value)
    assert "Apparel > Shoess" in msg and products[3].product_id in msg and "'Apparel > Shoes'" in msg
    assert "unknown_categories=skip" in msg
    stage = Categorizer(taxonomy=str(tax), method="supervised", unknown_categories="skip").fit(products)
    assert stage.train_info_["n_skipped_unknown_category"] == 1


def test_no_labels_and_no_taxonomy_says_what_to_do() -> None:
    with pytest.raises(DataError, match="--taxonomy"):
        Categorizer().fit(unlabelled(tiny_products(10)))


def test_prototypes_need_an_encoder(tmp_path: Path) -> None:
    tax = tmp_path / "paths.txt"
    tax.write_text("\n".join(PATHS) + "\n")
    with pytest.raises(ConfigError, match="encoder"):
        Categorizer(taxonomy=str(tax), encoder="none").fit(unlabelled(tiny_products(4)))


def test_abstains_below_dev_threshold() -> None:
    stage = Categorizer(dev_fraction=0.25).fit(tiny_products(40))
    stage.threshold_ = 2.0  # above any probability
    assert all(p.abstained for p in stage.predict(tiny_products(4)))
    stage.threshold_ = 0.0
    assert not any(p.abstained for p in stage.predict(tiny_products(4)))


def test_reads_mwpd_lines() -> None:
    obj = {
        "ID": "549",
        "Name": "Sterling Silver Angel Charm",
        "Description": "heavenly",
        "CategoryText": "All Products",
        "lvl1": "64000000_Personal Accessories",
        "lvl2": "64010000_Personal Accessories",
        "lvl3": "64010100_Jewellery",
    }
    p = product_from_dict(obj, where="x:1")
    assert (p.product_id, p.title, p.breadcrumb) == ("549", "Sterling Silver Angel Charm", "All Products")
    assert p.category_path == (
        "64000000_Personal Accessories > 64010000_Personal Accessories > 64010100_Jewellery"
    )


def test_cli_train_categorize_predict(tmp_path: Path) -> None:
    data = tmp_path / "train.jsonl"
    write_products(data, tiny_products(40))
    model = tmp_path / "model"
    r = runner.invoke(app, ["train", "--task", "categorize", "--data", str(data), "--model", str(model)])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["categorize", "--model", str(model), "Kestrel Men's Loafer, Black, 9.5 M US"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)["category"]
    assert out["path"] == "Apparel > Shoes" and set(out) >= {"score", "alternatives", "abstained", "levels"}
    pred = tmp_path / "pred.jsonl"
    r = runner.invoke(app, ["predict", "--model", str(model), "--data", str(data), "--out", str(pred)])
    assert r.exit_code == 0, r.output
    lines = [json.loads(line) for line in pred.read_text().splitlines()]
    assert len(lines) == 40 and all(line["category"]["path"] in PATHS for line in lines)
    r = runner.invoke(app, ["evaluate", "--model", str(model), "--data", str(data), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["categorize"]["weighted_f1"] == 100.0


def test_cli_taxonomy_flag_reaches_the_stage(tmp_path: Path) -> None:
    data = tmp_path / "train.jsonl"
    write_products(data, unlabelled(tiny_products(6)))
    tax = tmp_path / "paths.txt"
    tax.write_text("\n".join(PATHS) + "\n")
    model = tmp_path / "model"
    args = [
        "train",
        "--task",
        "categorize",
        "--data",
        str(data),
        "--model",
        str(model),
        "--taxonomy",
        str(tax),
    ]
    r = runner.invoke(app, [*args, "--set", "encoder=use"])
    assert r.exit_code == 0, r.output
    meta = json.loads((model / "categorize" / "meta.json").read_text())
    assert meta["params"]["taxonomy"] == str(tax) and meta["train"]["method"] == "prototypes"


def test_shopify_zh_taxonomy_zero_shot_chinese_titles() -> None:
    root = shared_data("taxonomy/shopify")
    tax = Taxonomy.load(root, locale="zh-CN")
    stage = Categorizer(encoder="use")
    stage.taxonomy = str(root / "dist" / "zh-CN" / "categories.txt")
    stage.fit([])
    assert stage.encoder_kind_ == "use" and len(stage.classes_) == len(tax.leaves())
    pred = stage.predict(
        [Product("1", "女士真皮高跟鞋 黑色 38码"), Product("2", "阿拉比卡咖啡豆 500克 深度烘焙")]
    )
    assert "鞋" in pred[0].path, pred[0].path
    assert "咖啡" in pred[1].path, pred[1].path


def test_finetuned_encoder_feeds_the_svm(tmp_path: Path) -> None:
    stage = Categorizer(finetune_epochs=2, finetune_layers=1, dev_fraction=0.25).fit(tiny_products(40))
    info = stage.train_info_
    assert info["encoder"] == "minilm" and len(info["finetune"]["dev_accuracy_per_epoch"]) >= 1
    stage.save(tmp_path / "cat")
    loaded = Categorizer.load(tmp_path / "cat")
    products = tiny_products(8, seed=3)
    assert [p.path for p in loaded.predict(products)] == [p.category_path for p in products]


def test_cli_taxonomy_summary_and_lookup(tmp_path: Path) -> None:
    tax = tmp_path / "paths.txt"
    tax.write_text("\n".join(PATHS) + "\n")
    r = runner.invoke(app, ["taxonomy", str(tax)])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output) | {"name": None} == {
        "name": None,
        "categories": 9,
        "leaves": 4,
        "depth": 3,
        "per_level": {"1": 4, "2": 4, "3": 1},
    }
    r = runner.invoke(app, ["taxonomy", str(tax), "Home > Garden > Plants"])
    assert json.loads(r.output)["ancestors"] == ["Home", "Home > Garden"]
    r = runner.invoke(app, ["taxonomy", str(tax), "Home > Gardn"])
    assert isinstance(r.exception, DataError) and "Did you mean 'Home > Garden'" in str(r.exception)
