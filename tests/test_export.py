"""`shangpin export` (issue 7, compression): int8 / fp32 ONNX copies of a model directory that load unchanged."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from shangpin.cli import app
from shangpin.encoders import quantized_op_count
from shangpin.errors import ConfigError, NotFittedError
from shangpin.export import ExportReport, default_export_dir, export_model
from shangpin.pipeline import Pipeline
from shangpin.records import Product
from shangpin.train import train
from tests.factories import tiny_products, write_products

EXTRACT = [
    "num_layers=2",
    "epochs=4",
    "batch_size=8",
    "learning_rate=3e-4",
    "quantize=false",  # an fp32 span tagger, so that the int8 export has one to quantise
    "freeze_embeddings=true",  # 3x faster to train; the tests need a tagger that finds spans, not a good one
]


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model with an fp32 extraction graph, a TF-IDF categoriser and a tags stage with keyphrases (torch)."""
    folder = tmp_path_factory.mktemp("export")
    data = folder / "train.jsonl"
    write_products(data, tiny_products(40))
    model = folder / "model"
    train("extract", data, model, overrides=EXTRACT)
    train("categorize", data, model, overrides=["encoder=none", "dev_fraction=0.25"])
    train("tags", data, model, overrides=["min_count=1", "keyphrases=2"])
    return model


@pytest.fixture(scope="module")
def int8(source: Path) -> tuple[Path, ExportReport]:
    report = export_model(source)
    return default_export_dir(source), report


@pytest.fixture(scope="module")
def fp32(source: Path) -> tuple[Path, ExportReport]:
    out = source.parent / "model-none"
    return out, export_model(source, out, quantize="none")


def _graphs(report: ExportReport) -> dict[str, dict[str, object]]:
    return {g["file"]: g for g in report.to_dict()["graphs"]}


def _products() -> list[Product]:
    return [
        Product(product_id=p.product_id, title=p.title, description=p.description) for p in tiny_products(40)
    ]


def _run(model: Path) -> list[Product]:
    return list(Pipeline.load(model).pipe(_products(), batch_size=16))


def test_int8_export_quantizes_the_fp32_graphs(source: Path, int8: tuple[Path, ExportReport]) -> None:
    out, report = int8
    assert out == source.with_name("model-int8") and out.is_dir()
    graphs = _graphs(report)
    assert set(graphs) == {"extract_attributes/model.onnx", "recommend_tags/sentence.onnx"}  # TF-IDF: none
    tagger = graphs["extract_attributes/model.onnx"]
    assert (tagger["before"], tagger["after"], tagger["action"]) == ("fp32", "int8", "quantized (static)")
    assert int(tagger["bytes_after"]) < int(tagger["bytes_before"]) / 3  # int8 weights: about a quarter
    assert quantized_op_count(source / "extract_attributes" / "model.onnx") == 0
    assert quantized_op_count(out / "extract_attributes" / "model.onnx") == tagger["quantized_ops"] > 0
    keyphrase = graphs["recommend_tags/sentence.onnx"]
    assert (keyphrase["before"], keyphrase["after"]) == ("torch", "int8")
    assert quantized_op_count(out / "recommend_tags" / "sentence.onnx") > 0
    assert not (source / "recommend_tags" / "sentence.onnx").exists()  # the source is left alone
    assert report.bytes_after < report.bytes_before


def test_exported_model_predicts_with_the_same_schema(source: Path, int8: tuple[Path, ExportReport]) -> None:
    out, _ = int8
    before, after = _run(source), _run(out)
    assert Pipeline.load(out).names == Pipeline.load(source).names
    assert len(after) == len(before)
    same_values = 0
    for b, a in zip(before, after, strict=True):
        assert a.category is not None and a.category.path
        assert len(a.tags) == len(b.tags) and all(t.new for t in a.new_tags)
        for name, v in a.extracted.items():
            assert v.field is not None and v.start is not None and v.end is not None
            assert a.text(v.field)[v.start : v.end] == v.value and 0.0 <= v.score <= 1.0, name
        same_values += {k: v.value for k, v in a.extracted.items()} == {
            k: v.value for k, v in b.extracted.items()
        }
    assert same_values >= len(before) // 2  # a 4-epoch toy tagger: int8 may move a few borderline spans


def test_cli_predict_reads_the_exported_directory(int8: tuple[Path, ExportReport], tmp_path: Path) -> None:
    out, _ = int8
    data = tmp_path / "in.jsonl"
    write_products(data, _products()[:5])
    result = CliRunner().invoke(
        app, ["predict", "--model", str(out), "--data", str(data), "--out", str(tmp_path / "o.jsonl")]
    )
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in (tmp_path / "o.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == [p.product_id for p in _products()[:5]]
    assert all({"category", "attributes", "tags", "new_tags"} <= set(r) for r in rows)


def test_meta_records_the_export(source: Path, int8: tuple[Path, ExportReport]) -> None:
    out, report = int8
    pipeline = json.loads((out / "pipeline.json").read_text())
    record = pipeline["export"]
    assert (record["format"], record["quantization"]) == ("onnx", "int8")
    assert record["source_model"] == str(source.resolve())
    assert {g["file"] for g in record["graphs"]} == set(_graphs(report))
    assert all(g["bytes_before"] > 0 and g["bytes_after"] > 0 for g in record["graphs"])
    stage = json.loads((out / "extract_attributes" / "meta.json").read_text())
    assert stage["export"]["quantization"] == "int8" and stage["params"]["quantize"] is True
    assert [g["file"] for g in stage["export"]["graphs"]] == ["extract_attributes/model.onnx"]
    assert "export" not in json.loads((out / "categorize" / "meta.json").read_text())  # nothing changed there
    assert "export" not in json.loads((source / "pipeline.json").read_text())


def test_none_exports_fp32_and_keyphrases_match_torch(source: Path, fp32: tuple[Path, ExportReport]) -> None:
    out, report = fp32
    graphs = _graphs(report)
    assert graphs["extract_attributes/model.onnx"]["action"] == "copied"
    assert (
        graphs["recommend_tags/sentence.onnx"]["before"],
        graphs["recommend_tags/sentence.onnx"]["after"],
    ) == (
        "torch",
        "fp32",
    )
    assert quantized_op_count(out / "recommend_tags" / "sentence.onnx") == 0
    before, after = _run(source), _run(out)  # torch fp32 vs ONNX fp32: the same keyphrases and scores
    for b, a in zip(before, after, strict=True):
        assert [t.label for t in a.new_tags] == [t.label for t in b.new_tags]
        assert [t.score for t in a.new_tags] == pytest.approx([t.score for t in b.new_tags], abs=1e-3)


def _extract_only(src: Path, dst: Path) -> Path:
    """A model directory holding only the extraction stage of `src` (cheap to export: no MiniLM re-export)."""
    shutil.copytree(src / "extract_attributes", dst / "extract_attributes")
    (dst / "pipeline.json").write_text(json.dumps({"stages": ["extract_attributes"]}))
    return dst


def test_none_keeps_an_int8_graph_without_fp32_source(
    int8: tuple[Path, ExportReport], tmp_path: Path
) -> None:
    model = _extract_only(int8[0], tmp_path / "m")
    report = export_model(model, tmp_path / "out", quantize="none")
    (graph,) = report.graphs
    assert (graph.before, graph.after, graph.action) == ("int8", "int8", "kept")
    assert "quantize=false" in graph.note
    assert Pipeline.load(tmp_path / "out").names == ["extract_attributes"]


def test_fp32_extraction_needs_calibration_products(source: Path, tmp_path: Path) -> None:
    model = _extract_only(source, tmp_path / "m")
    meta_file = model / "extract_attributes" / "meta.json"
    meta = json.loads(meta_file.read_text())
    data = Path(meta["train"]["data_file"])
    meta["train"]["data_file"] = str(tmp_path / "gone.jsonl")
    meta_file.write_text(json.dumps(meta))
    with pytest.raises(ConfigError, match="--calibration FILE"):
        export_model(model, tmp_path / "out")
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.*"))  # nothing half-written
    report = export_model(model, tmp_path / "out", calibration=data)
    assert report.graphs[0].after == "int8" and str(data) in report.graphs[0].note


def test_bad_arguments(source: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown export format 'tflite': expected one of onnx"):
        export_model(source, tmp_path / "o", format="tflite")
    with pytest.raises(ConfigError, match="expected one of int8, none"):
        export_model(source, tmp_path / "o", quantize="int4")
    with pytest.raises(NotFittedError, match="expected a model directory with pipeline.json"):
        export_model(tmp_path / "nothing", tmp_path / "o")
    with pytest.raises(ConfigError, match="inside it"):
        export_model(source, source / "int8")


def test_existing_out_needs_force(int8: tuple[Path, ExportReport], tmp_path: Path) -> None:
    model = _extract_only(int8[0], tmp_path / "m")
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("x")
    with pytest.raises(ConfigError, match="exists; pass --force"):
        export_model(model, out)
    export_model(model, out, force=True)
    assert not (out / "old.txt").exists() and (out / "pipeline.json").is_file()


def test_image_encoder_stays_fp32(source: Path, tmp_path: Path) -> None:
    # Any fp32 graph stands in for EfficientNet: the rule is by stage and file, the graph is not run.
    model = tmp_path / "m"
    (model / "predict_attributes").mkdir(parents=True)
    shutil.copyfile(source / "extract_attributes" / "model.onnx", model / "predict_attributes" / "image.onnx")
    (model / "predict_attributes" / "meta.json").write_text(json.dumps({"kind": "predict_attributes"}))
    (model / "pipeline.json").write_text(json.dumps({"stages": ["predict_attributes"]}))
    (graph,) = export_model(model, tmp_path / "out").graphs
    assert (graph.before, graph.after, graph.action) == (
        "fp32",
        "fp32",
        "kept",
    ) and "12x slower" in graph.note


def test_cli_export_and_exit_codes(int8: tuple[Path, ExportReport], tmp_path: Path) -> None:
    model = _extract_only(int8[0], tmp_path / "m")
    result = CliRunner().invoke(app, ["export", "--model", str(model), "--quantize", "int8"])
    assert result.exit_code == 0, result.output
    assert "extract_attributes/model.onnx: span tagger (MiniLM), int8 -> int8" in result.stdout
    assert (tmp_path / "m-int8" / "pipeline.json").is_file()

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "shangpin", "export", *args], capture_output=True, text=True
        )

    again = cli("--model", str(model))
    assert again.returncode == 2 and "exists; pass --force" in again.stderr
    missing = cli("--model", str(tmp_path / "nothing"))
    assert missing.returncode == 1 and "expected a model directory with pipeline.json" in missing.stderr
