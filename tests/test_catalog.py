"""Product file I/O: the JSONL contract, CSV with a field map, and clear errors for bad input."""

from __future__ import annotations

import gzip
import json
import logging
from pathlib import Path

import pytest

from shangpin.errors import DataError
from shangpin.records import AttributeValue, Product
from shangpin.storage.catalog import (
    MAX_TITLE_CHARS,
    ReadReport,
    product_to_input,
    product_to_output,
    read_products,
)


def write(path: Path, lines: list[str | bytes]) -> Path:
    with open(path, "wb") as fh:
        for line in lines:
            fh.write((line if isinstance(line, bytes) else line.encode()) + b"\n")
    return path


def test_reads_contract_fields(tmp_path: Path) -> None:
    row = {
        "id": "p1",
        "title": "Acme Red Shoe",
        "description": "Nice",
        "category": "Apparel >Shoes",
        "attributes": {"Color": "Red", "Size": None, "Brand": ["Acme", "ACME"]},
        "tags": ["red"],
        "image": "a.jpg",
    }
    (p,) = read_products(write(tmp_path / "a.jsonl", [json.dumps(row)]))
    # A relative image path is relative to the data file's folder.
    assert p.product_id == "p1" and p.description == "Nice" and p.image == str(tmp_path / "a.jpg")
    assert p.category_path == "Apparel > Shoes"
    assert p.attributes["Color"] == AttributeValue(name="Color", value="Red")
    assert p.attributes["Size"] is None
    assert p.attributes["Brand"] is not None and p.attributes["Brand"].alternatives == ("ACME",)
    assert [t.label for t in p.tags] == ["red"]
    assert product_to_input(p)["attributes"]["Brand"] == ["Acme", "ACME"]


def test_reads_extractgpt_format(tmp_path: Path) -> None:
    row = {
        "input": "Crocs Flat, Navy",
        "category": "Shoes",
        "target_scores": {"Brand": {"Crocs": 1}, "Size": {"n/a": 1}},
    }
    (p,) = read_products(write(tmp_path / "a.jsonl", [json.dumps(row)]))
    assert p.title == "Crocs Flat, Navy" and p.product_id == "1"
    assert p.attributes["Brand"] is not None and p.attributes["Brand"].value == "Crocs"
    assert p.attributes["Size"] is None


def test_streams_gzip(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as fh:
        for i in range(3):
            fh.write(json.dumps({"id": str(i), "title": f"t{i}"}) + "\n")
    assert [p.product_id for p in read_products(path)] == ["0", "1", "2"]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"title": "no id"}', "a.jsonl:2: missing 'id'"),
        ('{"id": "x"}', "a.jsonl:2: missing 'title'"),
        ("{not json", "a.jsonl:2: invalid JSON"),
        (b'{"id": "x", "title": "caf\xe9"}', "a.jsonl:2: invalid UTF-8"),
        ("[1, 2]", "a.jsonl:2: not a JSON object"),
        ('{"id": "x", "title": "t", "attributes": [1]}', "a.jsonl:2: field 'attributes'"),
    ],
)
def test_bad_line_names_file_and_line(tmp_path: Path, line: str | bytes, message: str) -> None:
    path = write(tmp_path / "a.jsonl", ['{"id": "ok", "title": "fine"}', line])
    with pytest.raises(DataError, match=message):
        list(read_products(path))


def test_skip_invalid_counts_reasons_and_keeps_the_rest(tmp_path: Path) -> None:
    lines = ['{"id": "1", "title": "a"}', "{bad", '{"title": "x"}', b"\xff\xfe", '{"id": "2", "title": "b"}']
    report = ReadReport()
    got = list(read_products(write(tmp_path / "a.jsonl", lines), skip_invalid=True, report=report))
    assert [p.product_id for p in got] == ["1", "2"]
    assert report.read == 2 and report.n_skipped == 3
    assert report.skipped == {"invalid JSON": 1, "missing 'id'": 1, "invalid UTF-8": 1}
    assert "skipped 3 invalid lines" in report.summary()


def test_long_title_truncated_with_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = write(tmp_path / "a.jsonl", [json.dumps({"id": "1", "title": "x" * 10_000})])
    report = ReadReport()
    with caplog.at_level(logging.WARNING):
        (p,) = read_products(path, report=report)
    assert len(p.title) == MAX_TITLE_CHARS and report.truncated == 1
    assert "truncated" in caplog.text and "a.jsonl:1" in caplog.text


def test_empty_file_gives_nothing(tmp_path: Path) -> None:
    (tmp_path / "e.jsonl").write_text("")
    assert list(read_products(tmp_path / "e.jsonl")) == []


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such file"):
        list(read_products(tmp_path / "nope.jsonl"))


def test_csv_with_field_map(tmp_path: Path) -> None:
    path = tmp_path / "a.csv"
    path.write_text(
        "sku,name,category,attributes.Color,tags\n1,Acme Red Shoe,Shoes,Red,red|shoe\n2,Plain Mug,,,\n",
        encoding="utf-8",
    )
    got = list(read_products(path, field_map={"sku": "id", "name": "title"}))
    assert [p.title for p in got] == ["Acme Red Shoe", "Plain Mug"]
    assert got[0].attributes["Color"] is not None and got[0].attributes["Color"].value == "Red"
    assert [t.label for t in got[0].tags] == ["red", "shoe"]
    assert got[1].category is None


def test_csv_missing_column_suggests_field_map(tmp_path: Path) -> None:
    path = tmp_path / "a.csv"
    path.write_text("sku,name\n1,Shoe\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"a.csv:2: missing 'id'.*field_map"):
        list(read_products(path))


def test_output_contract_merges_text_and_predicted() -> None:
    p = Product(product_id="1", title="Acme Red")
    p.extracted["Color"] = AttributeValue("Color", "Red", 0.91234, "text", "title", 5, 8)
    p.predicted["Gender"] = AttributeValue("Gender", "Women", 0.7, "predicted")
    out = product_to_output(p, {"extracted", "predicted"})
    assert out == {
        "id": "1",
        "attributes": {
            "Gender": {"value": "Women", "score": 0.7, "source": "predicted"},
            "Color": {
                "value": "Red",
                "score": 0.9123,
                "source": "text",
                "field": "title",
                "start": 5,
                "end": 8,
            },
        },
    }


def test_image_only_products_and_image_urls(tmp_path: Path) -> None:
    rows = [
        json.dumps({"id": "a", "image": "photos/a.jpg"}),
        json.dumps({"id": "b", "title": "", "image": "https://x/b.jpg"}),
    ]
    a, b = read_products(write(tmp_path / "p.jsonl", rows))
    assert a.title == "" and a.image == str(tmp_path / "photos" / "a.jpg")
    assert b.image == "https://x/b.jpg"
    with pytest.raises(DataError, match="missing 'title'.*title may be left out when image is given"):
        list(read_products(write(tmp_path / "q.jsonl", [json.dumps({"id": "c"})])))


def test_reads_fashion_styles_csv_with_images(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "7.jpg").write_bytes(b"jpeg")
    (tmp_path / "styles.csv").write_text(
        "id,gender,masterCategory,subCategory,articleType,baseColour,season,year,usage,productDisplayName\n"
        "7,Men,Apparel,Topwear,Shirts,Navy Blue,Fall,2011,Casual,Turtle Check Men Navy Blue Shirt\n"
        "8,Women,Footwear,Shoes,Heels,Black,,2012,NA,Catwalk Women Black Heels\n"
    )
    a, b = read_products(tmp_path / "styles.csv")
    assert a.title == "Turtle Check Men Navy Blue Shirt" and a.category_path == "Apparel > Topwear > Shirts"
    assert a.attributes["baseColour"].value == "Navy Blue" and a.attributes["year"].value == "2011"  # type: ignore[union-attr]
    assert a.image == str(tmp_path / "images" / "7.jpg") and b.image is None
    assert "season" not in b.attributes and "usage" not in b.attributes  # empty and "NA": not recorded
