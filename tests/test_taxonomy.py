"""Taxonomy loading (Shopify, Google, Best Buy, plain paths), lookups, translation and (de)serialisation."""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path

import pytest

from shangpin.errors import ConfigError, DataError
from shangpin.taxonomy import Category, Taxonomy, normalize_path, split_path
from tests.conftest import shared_data

FIXTURES = Path(__file__).parent / "fixtures" / "taxonomy"
SHOPIFY = FIXTURES / "shopify"
GOOGLE_EN = FIXTURES / "google" / "taxonomy-with-ids.en-US.txt"
GOOGLE_ZH = FIXTURES / "google" / "taxonomy-with-ids.zh-CN.txt"
BESTBUY = FIXTURES / "bestbuy-categories.json"
PATHS = FIXTURES / "paths.txt"

BOXING = "Apparel & Accessories > Clothing > Activewear > Boxing Shorts"
BRAKES = "Vehicles & Parts > Vehicle Parts & Accessories > Motor Vehicle Parts > Motor Vehicle Braking"


@pytest.fixture(scope="module")
def shopify_en() -> Taxonomy:
    return Taxonomy.load(SHOPIFY)


@pytest.fixture(scope="module")
def shopify_zh() -> Taxonomy:
    return Taxonomy.load(SHOPIFY, locale="zh-CN")


@pytest.fixture(scope="module")
def google_en() -> Taxonomy:
    return Taxonomy.load(GOOGLE_EN)


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


# -- formats --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "kind", "size", "name"),
    [
        (SHOPIFY, "shopify", 18, "Shopify 2025-08-unstable (en)"),
        (SHOPIFY / "dist" / "zh-CN" / "categories.txt", "shopify", 18, "Shopify 2025-08-unstable (zh-CN)"),
        (GOOGLE_EN, "google", 16, "Google 2021-09-21 (en-US)"),
        (GOOGLE_ZH, "google", 15, "Google 2015-02-19 (zh-CN)"),
        (BESTBUY, "bestbuy", 7, "Best Buy"),
        (PATHS, "paths", 8, "paths.txt"),
    ],
)
def test_detects_format(path: Path, kind: str, size: int, name: str) -> None:
    taxonomy = Taxonomy.load(path)
    assert (taxonomy.kind, len(taxonomy), taxonomy.name) == (kind, size, name)
    assert taxonomy.source == str(path)


def test_fmt_overrides_detection(tmp_path: Path) -> None:
    file = write(tmp_path / "odd.txt", "12 - Dozen\n13 - Dozen > Eggs\n")
    assert Taxonomy.load(file).get("13").path == "Dozen > Eggs"  # detected as Google "<id> - path" lines
    as_paths = Taxonomy.load(file, fmt="paths")
    assert as_paths.kind == "paths" and as_paths.get("13 - Dozen > Eggs").level == 2
    with pytest.raises(ConfigError, match="valid: auto, shopify"):
        Taxonomy.load(file, fmt="csv")  # type: ignore[arg-type]


def test_shopify_attribute_file_is_refused(tmp_path: Path) -> None:
    file = write(tmp_path / "attributes.txt", "gid://shopify/TaxonomyAttribute/1 : Color\n")
    with pytest.raises(DataError, match="looks like a Shopify attribute"):
        Taxonomy.load(file)


def test_missing_file_and_bad_directory(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such file"):
        Taxonomy.load(tmp_path / "nope.txt")
    with pytest.raises(DataError, match="not a Shopify taxonomy directory"):
        Taxonomy.load(tmp_path)
    with pytest.raises(DataError, match="no categories for locale 'fr'; available: en, zh-CN"):
        Taxonomy.load(SHOPIFY, locale="fr")
    with pytest.raises(DataError, match="no categories found"):
        Taxonomy.load(write(tmp_path / "empty.txt", "# nothing\n\n"))


# -- ids, paths, tree -----------------------------------------------------------------------------------------


def test_ids_and_paths(shopify_en: Taxonomy, google_en: Taxonomy) -> None:
    cat = shopify_en.get(BOXING)
    assert (cat.id, cat.name, cat.parent, cat.level) == ("aa-1-1-4", "Boxing Shorts", "aa-1-1", 4)
    assert cat.names == tuple(BOXING.split(" > "))
    assert shopify_en.get("aa-1-1-4") is cat
    assert shopify_en.get("gid://shopify/TaxonomyCategory/aa-1-1-4") is cat
    assert shopify_en.get("Apparel & Accessories>Clothing >  Activewear>Boxing Shorts") is cat
    assert (
        google_en.get(5322)
        is google_en.get("5322")
        is google_en.get("Apparel & Accessories > Clothing > Activewear")
    )
    assert BOXING in shopify_en and "aa-1-1-4" in shopify_en and 2331 in google_en
    assert "apparel & accessories" not in shopify_en  # case-sensitive
    assert None not in shopify_en
    assert shopify_en.find("Apparel & Accessories > Shoes") is None
    assert [c.id for c in shopify_en][:3] == ["aa", "aa-1", "aa-1-1"]  # file order


def test_tree(shopify_en: Taxonomy) -> None:
    assert [c.name for c in shopify_en.ancestors(BOXING)] == [
        "Apparel & Accessories",
        "Clothing",
        "Activewear",
    ]
    assert [c.id for c in shopify_en.ancestors("aa-1-1-4", include_self=True)] == [
        "aa",
        "aa-1",
        "aa-1-1",
        "aa-1-1-4",
    ]
    assert shopify_en.ancestors("aa") == []
    assert shopify_en.parent("aa-1-1-4") == shopify_en.get("aa-1-1")
    assert shopify_en.parent("vp") is None
    assert [c.id for c in shopify_en.children("vp-1-4-1")] == [
        "vp-1-4-1-3",
        "vp-1-4-1-7",
        "vp-1-4-1-8",
        "vp-1-4-1-11",
    ]
    assert [c.id for c in shopify_en.roots()] == ["aa", "vp"]


def test_levels_and_leaves(shopify_en: Taxonomy) -> None:
    assert shopify_en.depth == 5
    assert shopify_en.level(BRAKES) == 4
    assert shopify_en.paths_at_level(1) == ["Apparel & Accessories", "Vehicles & Parts"]
    assert shopify_en.paths_at_level(9) == []
    assert shopify_en.truncate(BOXING, 2) == "Apparel & Accessories > Clothing"
    assert shopify_en.truncate("aa-1", 3) == "Apparel & Accessories > Clothing"  # not deeper: unchanged
    with pytest.raises(ValueError, match="level must be >= 1"):
        shopify_en.truncate(BOXING, 0)
    leaves = shopify_en.leaves()
    assert len(leaves) == 11
    assert all(c.is_leaf and not c.children for c in leaves)
    assert shopify_en.is_leaf(BOXING) and not shopify_en.is_leaf("aa-1-1")
    assert shopify_en.is_leaf("aa-2")  # a leaf in this excerpt only


def test_helpers() -> None:
    assert split_path(" A>B >  C ") == ("A", "B", "C")
    assert normalize_path("A>B >C") == "A > B > C"


# -- Shopify attributes and locales ---------------------------------------------------------------------------


def test_attributes_are_listed_per_category_not_inherited(shopify_en: Taxonomy) -> None:
    parent = shopify_en.attributes_for("Apparel & Accessories > Clothing > Activewear")
    child = shopify_en.attributes_for(BOXING)
    assert "activity" in parent and "activity" not in child  # Shopify drops it for boxing shorts
    assert child == ("activewear_clothing_features", "color", "fabric", "pattern", "size", "target_gender")
    assert shopify_en.attributes_for("vp") == ()
    assert shopify_en.attribute_name("target_gender") == "Target gender"
    assert shopify_en.attribute_name("no_such_attribute") == "no_such_attribute"


def test_categories_file_alone_has_no_attributes() -> None:
    taxonomy = Taxonomy.load(SHOPIFY / "dist" / "en" / "categories.txt")
    assert taxonomy.attributes_for(BOXING) == ()
    assert taxonomy.attribute_names == {}


def test_translate_shopify_en_to_zh(shopify_en: Taxonomy, shopify_zh: Taxonomy) -> None:
    zh = shopify_en.translate(BOXING, shopify_zh)
    assert (zh.id, zh.path) == ("aa-1-1-4", "服饰与配饰 > 服装 > 运动服装 > 拳击短裤")
    assert zh.attributes == shopify_en.attributes_for(BOXING)
    assert shopify_zh.translate(zh.path, shopify_en).path == BOXING
    assert shopify_zh.attribute_name("target_gender") == "目标性别"
    assert all(shopify_en.translate(c.id, shopify_zh).level == c.level for c in shopify_en)


def test_zh_cn_repeated_path_needs_the_id(shopify_zh: Taxonomy) -> None:
    # Brake Pads and Brake Shoes are both "刹车片" in the zh-CN file.
    pads, shoes = shopify_zh.get("vp-1-4-1-7"), shopify_zh.get("vp-1-4-1-11")
    assert pads.path == shoes.path
    assert dict(shopify_zh.duplicate_paths) == {pads.path: ("vp-1-4-1-7", "vp-1-4-1-11")}
    assert pads.path in shopify_zh
    with pytest.raises(DataError, match=r"names 2 categories .*\(ids vp-1-4-1-7, vp-1-4-1-11\); use the id"):
        shopify_zh.get(pads.path)


def test_translate_google_and_its_limits(google_en: Taxonomy, shopify_en: Taxonomy) -> None:
    google_zh = Taxonomy.load(GOOGLE_ZH)
    assert (
        google_en.translate("Apparel & Accessories > Clothing > Skirts", google_zh).path
        == "服饰与配饰 > 服装 > 裙子"
    )
    with pytest.raises(DataError, match=r"\(id 2331\) .* is not in taxonomy 'Google 2015-02-19 \(zh-CN\)'"):
        google_en.translate(2331, google_zh)  # added to Google after 2015
    with pytest.raises(DataError, match="google and shopify ids do not correspond"):
        google_en.translate(166, shopify_en)


# -- errors ---------------------------------------------------------------------------------------------------


def test_unknown_category_suggests_close_paths(shopify_en: Taxonomy) -> None:
    with pytest.raises(DataError) as info:
        shopify_en.get("apparel & accessories > clothing > activwear")
    message = str(info.value)
    assert "unknown category 'apparel & accessories > clothing > activwear'" in message
    assert "taxonomy 'Shopify 2025-08-unstable (en)' (18 categories from" in message
    assert "Did you mean 'Apparel & Accessories > Clothing > Activewear'" in message
    assert "load the taxonomy the data was labelled with" in message
    # a bare leaf name is matched against the last name of each path
    assert shopify_en.suggest("brake pad")[0].endswith("> Brake Pads")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "gid://shopify/TaxonomyCategory/a : A\ngid://shopify/TaxonomyCategory/a-1 A > B\n",
            "'gid://shopify/",
        ),
        ("1 - A\nA > C\n", "'<id> - A > B > C' (google format), found 'A > C'"),
        ("A\nA >  > B\n", "non-empty names separated by ' > ', found 'A >  > B'"),
    ],
)
def test_malformed_line_names_file_and_line(tmp_path: Path, text: str, expected: str) -> None:
    file = write(tmp_path / "bad.txt", "# header\n" + text)
    with pytest.raises(DataError, match=r"bad\.txt:3: expected") as info:
        Taxonomy.load(file)
    assert expected in str(info.value)


def test_duplicates(tmp_path: Path) -> None:
    with pytest.raises(
        DataError, match=r"dup\.txt:3: duplicate category path 'A > B' \(first at .*dup\.txt:1\)"
    ):
        Taxonomy.load(write(tmp_path / "dup.txt", "A > B\nA > C\nA>B\n"))
    with pytest.raises(DataError, match=r"ids\.txt:3: duplicate category id '1' \(first at .*ids\.txt:1\)"):
        Taxonomy.load(write(tmp_path / "ids.txt", "1 - A\n2 - A > B\n1 - C\n"))
    with pytest.raises(
        DataError, match=r"orphan\.txt:2: the parent 'A > X' of 'A > X > Y' is not in the taxonomy"
    ):
        Taxonomy.load(write(tmp_path / "orphan.txt", "1 - A\n2 - A > X > Y\n"))


def test_directory_with_mismatched_yml(tmp_path: Path) -> None:
    root = shutil.copytree(SHOPIFY, tmp_path / "shopify")
    with open(root / "dist" / "en" / "categories.txt", "a", encoding="utf-8") as fh:
        fh.write("gid://shopify/TaxonomyCategory/aa-3 : Apparel & Accessories > Costumes\n")
    with pytest.raises(DataError, match=r"disagree: 1 categories have no yml entry \(e.g. \['aa-3'\]\)"):
        Taxonomy.load(root)


# -- other sources --------------------------------------------------------------------------------------------


def test_from_paths_adds_ancestors() -> None:
    taxonomy = Taxonomy.from_paths(
        ["Home > Kitchen > Cookware", "Garden", "Home>Kitchen>Cookware", "Home > Bedding"]
    )
    assert [c.path for c in taxonomy] == [
        "Home",
        "Home > Kitchen",
        "Home > Kitchen > Cookware",
        "Garden",
        "Home > Bedding",
    ]
    assert taxonomy.get("Home > Kitchen").id == "Home > Kitchen"  # plain paths are their own ids
    assert [c.name for c in taxonomy.children("Home")] == ["Kitchen", "Bedding"]
    assert [c.path for c in taxonomy.leaves()] == ["Home > Kitchen > Cookware", "Garden", "Home > Bedding"]
    with pytest.raises(DataError, match=r"path #2: expected 'A > B > C' with non-empty names, found 'A > '"):
        Taxonomy.from_paths(["A", "A > "])
    assert len(Taxonomy.from_paths([])) == 0


def test_plain_path_file() -> None:
    taxonomy = Taxonomy.load(PATHS)
    assert "Home > Kitchen > Cutlery" in taxonomy  # whitespace normalised on input
    assert taxonomy.get("Garden > Tools").level == 2  # implied ancestor
    assert taxonomy.paths_at_level(1) == ["Home", "Garden"]


def test_bestbuy(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="shangpin.taxonomy"):
        taxonomy = Taxonomy.load(BESTBUY)
    assert "skipped categories with an empty name in their path: 1" in caplog.text
    # The file lists "Digital TV Tuners & Converters" before its parent, and never lists
    # "TV & Internet Service Providers" or "Upgrade DIRECTV" on their own: parents come first anyway.
    assert [c.id for c in taxonomy] == [
        "abcat0100000",
        "abcat0107000",
        "abcat0104000",
        "abcat0105000",
        "pcmcat128700050036",
        "abcat0105002",
        "pcmcat144600050035",
    ]
    dvrs = taxonomy.get(
        "TV & Home Theater > TV & Internet Service Providers > Upgrade DIRECTV > DIRECTV DVRs"
    )
    assert [c.id for c in taxonomy.ancestors(dvrs.id)] == [
        "abcat0100000",
        "abcat0105000",
        "pcmcat128700050036",
    ]


# -- serialisation --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", [SHOPIFY, GOOGLE_EN, BESTBUY, PATHS])
def test_to_dict_round_trip(path: Path) -> None:
    taxonomy = Taxonomy.load(path)
    data = json.loads(json.dumps(taxonomy.to_dict()))
    again = Taxonomy.from_dict(data)
    assert list(again) == list(taxonomy)
    assert (again.name, again.kind, again.locale, again.version, again.source) == (
        taxonomy.name,
        taxonomy.kind,
        taxonomy.locale,
        taxonomy.version,
        taxonomy.source,
    )
    assert dict(again.attribute_names) == dict(taxonomy.attribute_names)


def test_to_dict_is_compact(shopify_en: Taxonomy) -> None:
    rows = shopify_en.to_dict()["categories"]
    assert rows[0] == ["aa", "Apparel & Accessories", ["color", "pattern", "target_gender"]]


def test_round_trip_keeps_parents_of_repeated_paths(tmp_path: Path) -> None:
    # Two categories share the path "A > B", each with a child: the parent is the nearest one above.
    gid = "gid://shopify/TaxonomyCategory/"
    lines = ["a : A", "a-1 : A > B", "a-1-1 : A > B > C", "a-2 : A > B", "a-2-1 : A > B > D"]
    taxonomy = Taxonomy.load(write(tmp_path / "c.txt", "".join(f"{gid}{line}\n" for line in lines)))
    assert [taxonomy.get(x).parent for x in ("a-1-1", "a-2-1")] == ["a-1", "a-2"]
    rows = taxonomy.to_dict()["categories"]
    assert rows[2] == ["a-1-1", "A > B > C", [], "a-1"]
    again = Taxonomy.from_dict(taxonomy.to_dict())
    assert list(again) == list(taxonomy)


def test_save_and_load(tmp_path: Path, shopify_zh: Taxonomy) -> None:
    file = tmp_path / "model" / "taxonomy.json"
    shopify_zh.save(file)
    again = Taxonomy.load(file)
    assert list(again) == list(shopify_zh)
    assert again.source == str(file)
    assert again.attribute_name("color") == "颜色"


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"format": "other"}, "expected a taxonomy written by Taxonomy.to_dict"),
        ({"format": "shangpin.taxonomy", "format_version": 99}, "format v99, this code reads v1"),
        (
            {"format": "shangpin.taxonomy", "format_version": 1, "categories": [["a", "A"]]},
            "category 1: expected",
        ),
        ({"format": "shangpin.taxonomy", "format_version": 1, "kind": "amazon"}, "unknown kind 'amazon'"),
    ],
)
def test_from_dict_rejects_bad_input(data: dict[str, object], expected: str) -> None:
    with pytest.raises(DataError, match=expected):
        Taxonomy.from_dict(data)


def test_category_is_frozen(shopify_en: Taxonomy) -> None:
    cat = shopify_en.get("aa")
    assert isinstance(cat, Category)
    with pytest.raises(AttributeError):
        cat.name = "x"  # type: ignore[misc]


# -- the full files in ../shared/data (skipped when absent) ---------------------------------------------------


def test_full_shopify_directory() -> None:
    root = shared_data("taxonomy/shopify")
    start = time.perf_counter()
    en = Taxonomy.load(root)
    # 0.77 s (best of 5) on the development machine with PyYAML 6.0.3's CSafeLoader; see the module docstring.
    log_time = time.perf_counter() - start
    assert (len(en), len(en.leaves()), en.depth, len(en.roots())) == (10_595, 8_516, 8, 26)
    assert en.version == "2025-08-unstable" and not en.duplicate_paths
    linked = {handle for cat in en for handle in cat.attributes}
    assert len(linked) == 2_258 and all(handle in en.attribute_names for handle in linked)
    assert sum(1 for cat in en if not cat.attributes) == 234
    zh = Taxonomy.load(root, locale="zh-CN")
    assert all(en.translate(cat.id, zh).level == cat.level for cat in en)
    assert len(zh.duplicate_paths) == 2
    assert log_time < 10  # generous: only catches a pathological slowdown


def test_full_google_files() -> None:
    en = Taxonomy.load(shared_data("taxonomy/google/taxonomy-with-ids.en-US.txt"))
    zh = Taxonomy.load(shared_data("taxonomy/google/taxonomy-with-ids.zh-CN.2015-02-19.txt"))
    assert (len(en), len(en.leaves()), en.depth) == (5_595, 4_719, 7)
    assert [len(en.paths_at_level(n)) for n in range(1, 8)] == [21, 192, 1349, 2203, 1385, 397, 48]
    assert len(zh) == 5_427 and all(cat.id in en for cat in zh)


def test_full_bestbuy_file() -> None:
    taxonomy = Taxonomy.load(shared_data("taxonomy/bestbuy/categories.json"))
    # 4,584 listed - 1 without a name + 139 ancestors that appear only inside paths
    assert len(taxonomy) == 4_722
    assert len(Taxonomy.from_dict(taxonomy.to_dict())) == 4_722


def test_shopify_attribute_values(shopify_en: Taxonomy, tmp_path: Path) -> None:
    assert shopify_en.attribute_handle("COLOR") == "color"
    assert shopify_en.attribute_values("color") == ("Black", "Navy", "Rose gold")
    assert shopify_en.attribute_values("pattern") == ()
    shopify_en.save(tmp_path / "t.json")
    assert Taxonomy.load(tmp_path / "t.json").attribute_values("color") == ("Black", "Navy", "Rose gold")
