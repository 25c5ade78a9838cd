"""Attribute prediction: normalisation, business rules, merge with extraction, multi-valued and image-only use."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest

from shangpin.errors import ConfigError, DataError
from shangpin.normalize import Normalizer
from shangpin.records import AttributeValue, CategoryPrediction, Product
from shangpin.rules import RuleSet
from shangpin.stages.predict_attributes import AttributePredictor
from shangpin.storage.catalog import product_to_output

COLOURS = ["Navy Blue", "Black", "Red", "White"]
SEASONS = ["Summer", "Winter"]


def shirts(n: int = 80, seed: int = 0) -> list[Product]:
    """Shirts whose colour is in the title and whose season follows the year (never written in the title)."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        colour, year = rng.choice(COLOURS), rng.choice(["2011", "2012"])
        season = "Summer" if year == "2011" else "Winter"
        out.append(
            Product(
                product_id=f"s{i}",
                title=f"Brand{rng.randint(1, 5)} Men {colour} Shirt",
                category=CategoryPrediction("Apparel > Topwear > Shirts"),
                attributes={
                    "colour": AttributeValue("colour", colour),
                    "season": AttributeValue("season", season),
                    "year": AttributeValue("year", year),
                },
            )
        )
    return out


def unlabelled(products: list[Product], keep: tuple[str, ...] = ("year",)) -> list[Product]:
    for p in products:
        p.attributes = {k: v for k, v in p.attributes.items() if k in keep}
    return products


@pytest.fixture(scope="module")
def fitted() -> AttributePredictor:
    return AttributePredictor(attributes=["colour", "season"], min_products=10, image="off").fit(shirts())


# ---------------------------------------------------------------------- normalisation
def test_normalizer_learns_most_frequent_spelling_and_reads_synonyms(tmp_path: Path) -> None:
    f = tmp_path / "syn.toml"
    f.write_text(
        '[synonyms."*"]\n"navy" = "Navy Blue"\n[synonyms.size]\n"xl" = "Extra Large"\n[units]\ng = "attached"\n'
    )
    norm = Normalizer.from_file(f).learn([("colour", "Navy Blue")] * 3 + [("colour", "NAVY BLUE")])
    assert norm.canonical("colour", "navy-blue") == "Navy Blue"
    assert norm.canonical("colour", "Navy") == "Navy Blue"
    assert norm.canonical("size", "XL") == "Extra Large"
    assert norm.canonical("colour", "XL") == "XL"  # synonyms of another attribute do not apply
    assert norm.canonical("storage", "128 gb") == "128GB"
    assert norm.canonical("weight", "6.5 g") == "6.5g"  # the file made grams attached
    assert Normalizer().canonical("weight", "6.5g") == "6.5 g"
    assert Normalizer().canonical("colour", "Teal") == "Teal"  # open vocabulary: kept


def test_normalizer_file_errors_name_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[units]\nGB = 'glued'\n")
    with pytest.raises(ConfigError, match="bad.toml.*attached"):
        Normalizer.from_file(bad)
    broken = tmp_path / "broken.yml"
    broken.write_text("synonyms: [unclosed\n")
    with pytest.raises(ConfigError, match="broken.yml: not valid YAML"):
        Normalizer.from_file(broken)


# ---------------------------------------------------------------------- rules
def test_rules_file_parsing_and_errors(tmp_path: Path) -> None:
    f = tmp_path / "rules.yaml"
    f.write_text(
        "rule:\n"
        "  - {category: 'Apparel', attribute: season, allowed: [Summer, Winter], action: lower, penalty: 0.25}\n"
        "  - {attribute: storage, pattern: '\\d+GB'}\n"
    )
    rules = RuleSet.from_file(f)
    assert [r.attribute for r in rules.for_product("season", "Apparel > Topwear")] == ["season"]
    assert rules.for_product("season", "Food") == []
    assert rules.for_product("storage", None)[0].violation("128 GB") is not None
    bad = tmp_path / "bad.toml"
    bad.write_text('[[rule]]\nattribute = "season"\nalowed = ["Summer"]\n')
    with pytest.raises(ConfigError, match=r"bad.toml: rule 1: unknown fields \['alowed'\]"):
        RuleSet.from_file(bad)


def test_rule_replaces_a_disallowed_prediction_with_the_best_allowed(tmp_path: Path) -> None:
    rules = tmp_path / "rules.toml"
    rules.write_text('[[rule]]\ncategory = "Apparel"\nattribute = "season"\nallowed = ["Winter"]\n')
    stage = AttributePredictor(attributes=["season"], min_products=10, image="off", rules_file=str(rules))
    stage.fit(shirts())
    p = unlabelled(shirts(1, seed=3))[0]
    p.attributes["year"] = AttributeValue("year", "2011")  # the model says Summer
    av = stage.predict([p])[0]["season"]
    assert av.value == "Winter" and av.rule is not None and "not an allowed season" in av.rule
    assert av.score < 0.5  # the score is the model's for the value kept


def test_rule_lowers_text_value_and_required_default(tmp_path: Path, fitted: AttributePredictor) -> None:
    rules = tmp_path / "rules.toml"
    rules.write_text(
        '[[rule]]\nattribute = "colour"\nallowed = ["Black"]\naction = "lower"\npenalty = 0.5\n'
        '[[rule]]\ncategory = "Apparel"\nattribute = "fit"\nrequired = true\ndefault = "Regular"\n'
    )
    stage = AttributePredictor(
        attributes=["colour"], min_products=10, image="off", rules_file=str(rules)
    ).fit(shirts())
    p = next(q for q in unlabelled(shirts(10, seed=4)) if "Black" not in q.title)
    out = stage.predict([p])[0]
    assert out["colour"].score <= 0.5 and "not an allowed colour" in (out["colour"].rule or "")
    assert out["fit"].value == "Regular" and out["fit"].source == "rule"
    row = product_to_output(p, ["predicted"])
    assert row["id"] == p.product_id


# ---------------------------------------------------------------------- models
def test_learns_colour_from_title_and_season_from_year(fitted: AttributePredictor) -> None:
    test = unlabelled(shirts(40, seed=9))
    gold = shirts(40, seed=9)
    preds = fitted.predict(test)
    colour = np.mean(
        [p["colour"].value == g.attributes["colour"].value for p, g in zip(preds, gold, strict=True)]
    )  # type: ignore[union-attr]
    season = np.mean(
        [p["season"].value == g.attributes["season"].value for p, g in zip(preds, gold, strict=True)]
    )  # type: ignore[union-attr]
    assert colour >= 0.95 and season >= 0.95
    assert all(0.0 <= av.score <= 1.0 and av.source == "predicted" for p in preds for av in p.values())


def test_given_value_of_a_predicted_attribute_is_never_read(fitted: AttributePredictor) -> None:
    p = unlabelled(shirts(1, seed=11))[0]
    q = unlabelled(shirts(1, seed=11))[0]
    q.attributes["season"] = AttributeValue("season", "Monsoon")
    assert fitted.predict([p])[0]["season"] == fitted.predict([q])[0]["season"]


def test_text_value_wins_and_conflict_is_flagged(fitted: AttributePredictor) -> None:
    p = unlabelled(shirts(1, seed=12))[0]
    colour = next(c for c in COLOURS if c in p.title)
    start = p.title.index(colour)
    p.extracted = {
        "colour": AttributeValue("colour", colour, 0.7, "text", "title", start, start + len(colour))
    }
    agree = fitted.predict([p])[0]["colour"]
    assert agree.source == "text" and not agree.conflict and agree.start == start
    other = next(c for c in COLOURS if c != colour)
    p.extracted = {"colour": AttributeValue("colour", other, 0.4, "text", "title", 0, len(other))}
    clash = fitted.predict([p])[0]["colour"]
    assert (
        clash.value == other and clash.source == "text" and clash.conflict and clash.alternatives == (colour,)
    )
    row = product_to_output(p, ["predicted"])
    p.predicted = fitted.predict([p])[0]
    row = product_to_output(p, ["extracted", "predicted"])
    assert row["attributes"]["colour"]["conflict"] is True
    assert row["attributes"]["colour"]["predicted_value"] == colour


def test_extracted_values_are_normalised_with_the_original_kept(tmp_path: Path) -> None:
    syn = tmp_path / "syn.toml"
    syn.write_text('[synonyms.colour]\n"navy" = "Navy Blue"\n')
    stage = AttributePredictor(
        attributes=["colour"], min_products=10, image="off", synonyms_file=str(syn)
    ).fit(shirts())
    p = Product("x", "Acme navy shirt", category=CategoryPrediction("Apparel > Topwear > Shirts"))
    p.extracted = {"colour": AttributeValue("colour", "navy", 0.9, "text", "title", 5, 9)}
    p.extracted["storage"] = AttributeValue("storage", "128 GB", 0.9, "text", "title", 0, 6)
    out = stage.predict([p])[0]
    assert out["colour"].value == "navy" and out["colour"].canonical == "Navy Blue"
    assert out["storage"].canonical == "128GB"
    p.predicted = out
    row = product_to_output(p, ["extracted", "predicted"])
    assert (
        row["attributes"]["colour"]["canonical"] == "Navy Blue"
        and row["attributes"]["colour"]["value"] == "navy"
    )


def test_multi_valued_attribute_returns_every_likely_value() -> None:
    rng = random.Random(1)
    materials = ["Cotton", "Polyester", "Wool", "Silk"]
    products = []
    for i in range(120):
        chosen = sorted(rng.sample(materials, rng.choice([1, 2])))
        products.append(
            Product(
                f"m{i}",
                f"Shirt in {' and '.join(chosen).lower()} blend",
                attributes={
                    "material": AttributeValue("material", chosen[0], alternatives=tuple(chosen[1:]))
                },
            )
        )
    stage = AttributePredictor(min_products=10, image="off").fit(products)
    assert stage.targets_["material"]["multi"]
    out = stage.predict([Product("q", "Shirt in wool and silk blend")])[0]["material"]
    assert set(out.values) == {"Wool", "Silk"}


def test_open_attribute_is_skipped_and_unpredictable_request_explains() -> None:
    products = shirts()
    for i, p in enumerate(products):
        p.attributes["sku"] = AttributeValue("sku", f"SKU-{i}")
    stage = AttributePredictor(min_products=10, image="off").fit(products)
    assert "sku" not in stage.targets_ and "colour" in stage.targets_
    with pytest.raises(DataError, match=r"sku: 0 values seen >= 2 times \(an open value set\?\)"):
        AttributePredictor(attributes=["sku"], min_products=10, image="off").fit(products)


def test_save_load_keeps_rules_and_vocabulary(tmp_path: Path) -> None:
    rules = tmp_path / "rules.toml"
    rules.write_text('[[rule]]\nattribute = "season"\nallowed = ["Winter"]\n')
    stage = AttributePredictor(
        attributes=["season"], min_products=10, image="off", rules_file=str(rules)
    ).fit(shirts())
    stage.save(tmp_path / "m")
    rules.unlink()  # the model keeps its own copy
    loaded = AttributePredictor.load(tmp_path / "m")
    p = unlabelled(shirts(3, seed=2))
    assert loaded.predict(p) == stage.predict(p)
    assert json.loads((tmp_path / "m" / "rules.json").read_text())[0]["allowed"] == ["Winter"]


def test_image_only_products_are_predicted_from_the_photo(tmp_path: Path) -> None:
    from PIL import Image

    products = []
    for i in range(40):
        colour = ["red", "blue"][i % 2]
        rgb = (200 + i % 5, 20, 30) if colour == "red" else (20, 30, 200 + i % 5)
        path = tmp_path / f"{i}.jpg"
        Image.new("RGB", (64, 64), rgb).save(path)
        products.append(
            Product(f"p{i}", "", image=str(path), attributes={"colour": AttributeValue("colour", colour)})
        )
    stage = AttributePredictor(min_products=10, min_images=10).fit(products)
    out = stage.predict(
        [Product("q", "", image=str(tmp_path / "0.jpg")), Product("r", "", image=str(tmp_path / "1.jpg"))]
    )
    assert out[0]["colour"].value == "red" and out[1]["colour"].value == "blue"


def test_taxonomy_values_join_the_vocabulary(tmp_path: Path) -> None:
    from shangpin.taxonomy import FORMAT, FORMAT_VERSION

    tax = tmp_path / "taxonomy.json"
    tax.write_text(
        json.dumps(
            {
                "format": FORMAT,
                "format_version": FORMAT_VERSION,
                "kind": "shopify",
                "name": "mini",
                "attribute_names": {"color": "Colour"},
                "attribute_values": {"color": ["Navy Blue", "Rose Gold"]},
                "categories": [["aa", "Apparel", ["color"]]],
            }
        )
    )
    stage = AttributePredictor(attributes=["colour"], min_products=10, image="off", taxonomy_path=str(tax))
    stage.fit(shirts())
    assert stage.train_info_["taxonomy_vocabulary"] == {"colour": 2}
    assert stage.normalizer_.canonical("colour", "rose-gold") == "Rose Gold"  # a value no product had


def test_rules_check_the_canonical_value_of_text(tmp_path: Path) -> None:
    syn = tmp_path / "syn.toml"
    syn.write_text('[synonyms.colour]\n"navy" = "Navy Blue"\n')
    rules = tmp_path / "rules.toml"
    rules.write_text('[[rule]]\nattribute = "colour"\nallowed = ["Navy Blue", "Black"]\n')
    stage = AttributePredictor(
        attributes=["colour"], min_products=10, image="off", synonyms_file=str(syn), rules_file=str(rules)
    ).fit(shirts())
    p = Product("x", "Acme navy shirt", category=CategoryPrediction("Apparel > Topwear > Shirts"))
    p.extracted = {"colour": AttributeValue("colour", "navy", 0.9, "text", "title", 5, 9)}
    ok = stage.predict([p])[0]["colour"]
    assert ok.value == "navy" and ok.canonical == "Navy Blue" and not ok.rejected and ok.rule is None
    p.extracted = {"colour": AttributeValue("colour", "teal", 0.9, "text", "title", 5, 9)}
    bad = stage.predict([p])[0]["colour"]
    assert bad.rejected and bad.value == "teal" and "not an allowed colour" in (bad.rule or "")
