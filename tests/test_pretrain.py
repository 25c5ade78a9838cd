"""Issue 5: domain-adaptive MLM pre-training (`shangpin pretrain`) and LoRA fine-tuning of the stages."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from shangpin.cli import app
from shangpin.errors import ConfigError, DataError
from shangpin.pretrain import INFO_FILE, PretrainSettings, pretrain
from shangpin.stages.categorize import Categorizer
from shangpin.stages.extract_attributes import AttributeExtractor
from tests.factories import tiny_products, write_products

runner = CliRunner()
FAST = [
    "--set",
    "max_texts=48",
    "--set",
    "batch_size=16",
    "--set",
    "max_length=32",
    "--set",
    "head_warmup_steps=2",
]


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A checkpoint pretrained for 3 steps on the demo titles and descriptions (read-only)."""
    out = tmp_path_factory.mktemp("pretrain") / "ckpt"
    demo = Path(__file__).resolve().parents[1] / "demo" / "train.jsonl"
    result = runner.invoke(app, ["pretrain", "--data", str(demo), "--out", str(out), *FAST])
    assert result.exit_code == 0, result.output
    assert "held-out MLM loss" in result.output
    return out


def test_pretrain_writes_a_complete_checkpoint(pretrained: Path) -> None:
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    assert {"config.json", "model.safetensors", "tokenizer.json", INFO_FILE} <= {
        f.name for f in pretrained.iterdir()
    }
    model, loading = AutoModelForMaskedLM.from_pretrained(str(pretrained), output_loading_info=True)
    assert not loading["missing_keys"]  # the MLM head trained here is saved with the encoder
    assert AutoTokenizer.from_pretrained(str(pretrained))("Red shoes")["input_ids"][0] == 101
    info = json.loads((pretrained / INFO_FILE).read_text())
    assert info["n_texts"] == 48 and info["n_train_texts"] + info["heldout"]["texts"] == 48
    assert info["data"][0]["sha256"] and info["data"][0]["bytes"] > 0 and info["data"][0]["products"] > 48
    assert info["mlm_head"].startswith("newly initialised")  # all-MiniLM-L6-v2 ships without one
    assert info["steps"] == 3 and info["head_warmup_steps"] == 2 and info["whole_word_masking"] is True
    held = info["heldout"]
    assert held["before"]["masked_tokens"] == held["after"]["masked_tokens"] > 0  # the same masked tokens
    assert held["after"]["loss"] < held["before"]["loss"]  # the head alone learns a lot in a few steps


def test_extraction_trains_from_the_pretrained_folder(pretrained: Path, tmp_path: Path) -> None:
    data = write_products(tmp_path / "train.jsonl", tiny_products(40))
    args = ["--set", f"encoder={pretrained}", "--set", "num_layers=2", "--set", "epochs=4"]
    result = runner.invoke(
        app, ["train", "--task", "extract", "--data", str(data), "--model", str(tmp_path / "m"), *args]
    )
    assert result.exit_code == 0, result.output
    meta = json.loads((tmp_path / "m" / "extract_attributes" / "meta.json").read_text())
    assert meta["params"]["encoder"] == str(pretrained)
    product = tiny_products(1, seed=5)[0]
    cat = ["--category", product.category_path or ""]
    result = runner.invoke(app, ["extract", "--model", str(tmp_path / "m"), *cat, product.title])
    assert result.exit_code == 0, result.output
    for value in json.loads(result.stdout)["attributes"].values():
        assert product.title[value["start"] : value["end"]] == value["value"]


def test_lora_extraction_trains_a_small_adapter_and_the_merged_model_predicts(tmp_path: Path) -> None:
    params = {**AttributeExtractor.test_params, "lora_rank": 8, "learning_rate": 1e-3}
    stage = AttributeExtractor(**params).fit(tiny_products(40))
    info = stage.train_info_
    assert info["lora_trainable_params"] == info["trainable_params"] < info["lora_total_params"] / 20
    assert info["lora_adapter_bytes"] < info["full_model_bytes"] / 20
    assert info["dev_metrics"]["micro_f1"] >= 80
    stage.save(tmp_path / "x")
    loaded = AttributeExtractor.load(tmp_path / "x")
    products = tiny_products(40)
    preds = loaded.predict(products)
    assert preds == stage.predict(products)
    hits = sum(
        av.value == p.attributes[name].value
        for p, pred in zip(products, preds, strict=True)
        for name, av in pred.items()
        if p.attributes.get(name) is not None
    )
    assert hits >= 0.8 * sum(len(p.attributes) for p in products)


def test_lora_targets_must_name_encoder_layers() -> None:
    params = {**AttributeExtractor.test_params, "lora_rank": 4, "lora_targets": "q_proj", "epochs": 1}
    with pytest.raises(ConfigError, match="lora_targets 'q_proj'.*query, key, value, dense"):
        AttributeExtractor(**params).fit(tiny_products(10))


def test_categorize_finetunes_a_pretrained_folder_with_lora(pretrained: Path) -> None:
    stage = Categorizer(
        encoder=str(pretrained), finetune_epochs=1, finetune_lora_rank=4, dev_fraction=0.25
    ).fit(tiny_products(40))
    info = stage.train_info_
    assert info["encoder"] == "minilm"
    assert 0 < info["finetune"]["lora_trainable_params"] < info["finetune"]["lora_total_params"] / 20
    products = tiny_products(8, seed=3)
    paths = {p.category_path for p in tiny_products(40)}
    assert all(pred.path in paths for pred in stage.predict(products))


def test_categorize_names_a_bad_encoder() -> None:
    with pytest.raises(ConfigError, match="checkpoint folder with a config.json; found 'no/such/dir'"):
        Categorizer(encoder="no/such/dir").fit(tiny_products(40))


def test_pretrain_needs_titles(tmp_path: Path) -> None:
    data = tmp_path / "one.jsonl"
    data.write_text(json.dumps({"id": "1", "title": "Red shoes"}) + "\n")
    with pytest.raises(DataError, match="expected at least 2 distinct product titles.*found 1"):
        pretrain([data], tmp_path / "out")
    result = runner.invoke(
        app, ["pretrain", "--data", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "o")]
    )
    assert result.exit_code != 0


def test_pretrain_refuses_a_folder_it_did_not_write(tmp_path: Path) -> None:
    data = write_products(tmp_path / "p.jsonl", tiny_products(10))
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="already holds files.*choose another folder"):
        pretrain([data], tmp_path / "out")
    assert (tmp_path / "out" / "notes.txt").read_text() == "mine"


def test_pretrain_settings_are_checked() -> None:
    assert (
        PretrainSettings.from_overrides(["learning_rate=1", "whole_word_masking=false"]).learning_rate == 1.0
    )
    with pytest.raises(ConfigError, match="unknown setting 'epoch'; valid: .*epochs"):
        PretrainSettings.from_overrides(["epoch=2"])
    with pytest.raises(ConfigError, match="'max_length' expects a int .*found 'long'"):
        PretrainSettings.from_overrides(["max_length=long"])
    with pytest.raises(ConfigError, match="mlm_probability must be in"):
        PretrainSettings.from_overrides(["mlm_probability=1.5"])
