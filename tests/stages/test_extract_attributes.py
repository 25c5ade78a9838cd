"""Extraction specifics: span finding, word-level labels, windows over long descriptions, BIO decoding."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from shangpin.encoders import default_encoder_path
from shangpin.errors import ConfigError, DataError
from shangpin.records import AttributeValue, CategoryPrediction, Product
from shangpin.stages.extract_attributes import AttributeExtractor
from shangpin.stages.extract_attributes.decoding import EdgeRules, LabelSpace, decode
from shangpin.stages.extract_attributes.encoding import Encoder, find_value, gold_spans, token_labels
from tests.factories import tiny_bert, tiny_products


def test_find_value_respects_word_boundaries_and_taken_spans() -> None:
    assert find_value("Red Redwood red", "Red", []) == [(0, 3)]
    assert find_value("Redwood, RED", "red", []) == [(9, 12)]  # case-insensitive only when exact is absent
    assert find_value("Navy Blue, Navy", "Navy", [(0, 9)]) == [(11, 15)]
    assert find_value("8 M US", "", []) == []
    # Chinese titles have no spaces: each ideograph is a word, so values are found inside a run of them.
    assert find_value("三只松鼠花草茶茶泡袋", "花草茶", []) == [(4, 7)]
    assert find_value("150g美妍茶", "150", []) == []


def test_chinese_titles_get_character_words_and_labels() -> None:
    enc = Encoder(default_encoder_path() / "tokenizer.json")
    p = Product(
        "1",
        "飞利浦理发器配件",
        attributes={"品牌": AttributeValue("品牌", "飞利浦"), "品类": AttributeValue("品类", "理发器")},
    )
    (seq,) = enc.encode([p], [""])
    assert [p.title[s:e] for _, s, e in seq.spans] == list(p.title)
    ids = {"O": 0, "B-品牌": 1, "I-品牌": 2, "B-品类": 3, "I-品类": 4}
    labels = token_labels(seq, gold_spans(p, ("title",)), ids)
    assert [labels[i] for i in seq.words] == [1, 2, 2, 3, 4, 4, 0, 0]


def test_gold_spans_prefer_longer_values() -> None:
    p = Product(
        "1",
        "Navy Blue Navy Shoe",
        attributes={
            "Color": AttributeValue("Color", "Navy Blue"),
            "Pattern": AttributeValue("Pattern", "Navy"),
        },
    )
    spans = gold_spans(p, ("title",))["title"]
    assert sorted(spans) == [(0, 9, "Color"), (10, 14, "Pattern")]


def test_labels_on_first_token_of_each_word() -> None:
    enc = Encoder(default_encoder_path() / "tokenizer.json")
    p = Product(
        "1",
        "Pursonic S1 Toothbrush",
        category=CategoryPrediction("Toothbrush"),
        attributes={"Brand": AttributeValue("Brand", "Pursonic S1")},
    )
    (seq,) = enc.encode([p], ["Toothbrush"])
    assert [p.title[s:e] for _, s, e in seq.spans] == ["Pursonic", "S1", "Toothbrush"]
    labels = token_labels(seq, gold_spans(p, ("title",)), {"O": 0, "B-Brand": 1, "I-Brand": 2})
    assert [labels[i] for i in seq.words] == [1, 2, 0]
    assert sum(lab != -100 for lab in labels) == 3  # sub-word pieces and the category carry no label
    # A pseudo-label's doubtful value ("Toothbrush" at 15-25) is left out of the loss instead of labelled O.
    unsure = token_labels(
        seq, gold_spans(p, ("title",)), {"O": 0, "B-Brand": 1, "I-Brand": 2}, [("title", 15, 25)]
    )
    assert [unsure[i] for i in seq.words] == [1, 2, -100]


def test_without_category_prefix_the_text_follows_cls() -> None:
    path = default_encoder_path() / "tokenizer.json"
    p = Product("1", "Pursonic S1 Toothbrush")
    (with_cat,) = Encoder(path).encode([p], ["Oral Care > Toothbrush"])
    (without,) = Encoder(path, category_prefix=False).encode([p], ["Oral Care > Toothbrush"])
    assert without.ids[0] == with_cat.ids[0] and without.words[0] == 1
    assert len(with_cat.ids) - len(without.ids) == with_cat.words[0] - 1  # the category and its [SEP]
    assert without.spans == with_cat.spans


def test_edge_rules_learned_from_training_values() -> None:
    examples = [
        ("Crocs, Navy, 8 M US", "Crocs"),
        ("Low Acid, Smooth", "Low Acid"),
        ("Tide, 50+ loads", "Tide"),
        ("SPF 50+ Lotion", "SPF 50+"),
        ("Kids 3+ Brush", "3+"),
        ("Size 8 (Infant), Red", "8 (Infant)"),
    ]
    rules = EdgeRules.learn(examples)
    assert "+" in rules.ends and "," not in rules.ends  # "," follows values far more often than it ends one

    def tidy(text: str, value: str) -> str:
        s = text.index(value)
        a, b = rules.tidy(text, s, s + len(value))
        return text[a:b]

    assert tidy("Rainbow Light - Sunny Gummies", "Rainbow Light -") == "Rainbow Light"
    assert tidy("Clean Coffee, Low Acid, Smooth", "Low Acid,") == "Low Acid"
    assert tidy("SPF 50+ Spray", "SPF 50+") == "SPF 50+"
    # brackets: closed when the text closes them soon after, cut otherwise
    assert tidy("Sneaker,Blue,43 EU (US Men's 10 M)", "43 EU (US Men's 10 M") == "43 EU (US Men's 10 M)"
    assert tidy("Pink,Large (18-24 Months), x", "Large (18-24") == "Large (18-24 Months)"
    assert tidy("Gel (with no end in sight and a very long tail of words after it", "Gel (with") == "Gel"
    # no training value here begins with "(" or ends with ")" often enough: the bracket pair goes
    assert tidy("Mary Jane (Infant),Pink", "Infant)") == "Infant"
    assert EdgeRules(ends=frozenset(")"), starts=frozenset("(")).tidy("J (Infant),P", 3, 10) == (2, 10)
    a, b = rules.tidy("a , b", 2, 3)
    assert a == b  # nothing left
    assert EdgeRules().tidy("x-y", 0, 3) == (0, 3)


def test_values_do_not_run_across_a_space_beside_chinese_characters() -> None:
    chinese = [(f"{v}茶具 x", v) for v in ("铁观音", "礼盒装", "麻辣烫", "小吃车")] * 6
    rules = EdgeRules.learn(chinese)
    assert rules.split_han_gaps and not EdgeRules.learn([("Navy Blue Shoe", "Navy Blue")] * 30).split_han_gaps
    assert not EdgeRules.learn([*chinese, *[("富士 施乐", "富士 施乐")] * 2]).split_han_gaps  # 2 of 26: kept
    text = "伽赫 麻辣烫 hello kitty"
    words = [("title", i, i + 1) for i in (0, 1, 3, 4, 5)] + [("title", 7, 12), ("title", 13, 18)]
    stops = rules.barriers(lambda f: text, words)
    assert stops is not None and stops.tolist() == [False, False, True, False, False, True, False]
    assert rules.barriers(lambda f: "hello kitty", [("title", 0, 5), ("title", 6, 11)]) is None
    # The decoder's best span would run over the gap; with the barrier it stops at the space.
    everything = LabelSpace.of(np.ones(3, dtype=bool))  # O, B-0, I-0
    logits = _logits([[0.05, 0.9, 0.05], [0.05, 0.05, 0.9], [0.3, 0.05, 0.65]] + [[0.9, 0.05, 0.05]] * 4)
    (free,) = decode(logits, words, everything)
    (barred,) = decode(logits, words, everything, barriers=stops)
    assert (free.start, free.end, barred.start, barred.end) == (0, 4, 0, 2)


def test_value_edges_inside_a_chinese_word_cost_log_odds() -> None:
    # Values of these titles begin and end where jieba cuts (飞利浦/理发器/配件, 铁观音/礼盒装, 散装/特级/酱肉).
    examples = [
        ("飞利浦理发器配件", "理发器"),
        ("铁观音礼盒装", "铁观音"),
        ("孔师傅散装特级酱肉", "酱肉"),
    ] * 8
    rules = EdgeRules.learn(examples)
    assert rules.segment_cost > 1.0
    assert EdgeRules.learn([("Navy Blue Shoe", "Navy Blue")] * 30).segment_cost == 0.0
    text = "孔师傅散装特级酱肉"
    words = [("title", i, i + 1) for i in range(len(text))]
    costs = rules.edge_costs(lambda f: text, words)
    assert costs is not None
    # An edge before 傅 would split 师傅, one before 酱 falls between 特级 and 酱肉.
    assert costs[2] == rules.segment_cost and costs[7] == 0.0 and costs[0] == 0.0
    # The tagger alone would take 级酱肉; the cost of cutting 特级 moves the start to 酱.
    everything = LabelSpace.of(np.ones(3, dtype=bool))
    rows = [[0.9, 0.05, 0.05]] * 6 + [[0.3, 0.6, 0.1], [0.3, 0.35, 0.35], [0.05, 0.05, 0.9]]
    (free,) = decode(_logits(rows), words, everything)
    (costed,) = decode(_logits(rows), words, everything, edge_costs=costs)
    assert (text[free.start : free.end], text[costed.start : costed.end]) == ("级酱肉", "酱肉")


def test_long_description_read_in_overlapping_windows() -> None:
    enc = Encoder(default_encoder_path() / "tokenizer.json", max_length=64)
    desc = " ".join(f"word{i}" for i in range(200)) + " Made by Acme."
    (p,) = [Product("1", "Acme Shoe", description=desc)]
    seqs = enc.encode([p], ["Shoes"])
    assert len(seqs) > 3 and all(len(s.ids) <= 64 for s in seqs)
    covered = {(f, s) for q in seqs for f, s, _ in q.spans}
    assert ("description", desc.index("Acme")) in covered and ("title", 0) in covered


def _logits(rows: list[list[float]]) -> np.ndarray:
    return np.log(np.array(rows))


def test_decode_weighs_whole_spans() -> None:
    everything = LabelSpace.of(np.ones(5, dtype=bool))  # O, B-0, I-0, B-1, I-1
    spans = [("title", 0, 4), ("title", 5, 8), ("title", 9, 12)]
    # Arg-max labels would read "B-0 O I-0" and cut the value after one word; the middle word is unsure
    # (O 0.45, I-0 0.40), and the three-word span is still far likelier than the one-word one.
    logits = _logits(
        [[0.05, 0.9, 0.03, 0.01, 0.01], [0.45, 0.05, 0.40, 0.05, 0.05], [0.05, 0.02, 0.9, 0.02, 0.01]]
    )
    (span,) = decode(logits, spans, everything)
    assert (span.attribute, span.start, span.end) == (0, 0, 12) and 0.5 < span.score <= 1.0
    # An attribute whose best span is less likely than no span at all is left out.
    assert decode(_logits([[0.9, 0.04, 0.02, 0.02, 0.02]] * 3), spans, everything) == []


def test_extend_bonus_lets_a_value_continue_over_a_nearly_even_word() -> None:
    everything = LabelSpace.of(np.ones(5, dtype=bool))
    spans = [("title", 0, 4), ("title", 5, 8)]
    # Word 1 continues the value with log-odds log(0.44 / 0.54) = -0.2 against "not this attribute".
    logits = _logits([[0.05, 0.9, 0.03, 0.01, 0.01], [0.5, 0.02, 0.44, 0.02, 0.02]])
    (short,) = decode(logits, spans, everything)
    assert (short.start, short.end) == (0, 4)
    (longer,) = decode(logits, spans, everything, extend_bonus=0.25)
    assert (longer.start, longer.end) == (0, 8) and longer.score > short.score


def test_models_saved_before_the_extend_bonus_decode_without_it(
    int8_stage: AttributeExtractor, tmp_path: Path
) -> None:
    int8_stage.save(tmp_path / "m")
    assert AttributeExtractor.load(tmp_path / "m").extend_bonus == 0.25
    meta_file = tmp_path / "m" / "meta.json"
    meta = json.loads(meta_file.read_text())
    del meta["params"]["extend_bonus"]
    meta_file.write_text(json.dumps(meta))
    assert AttributeExtractor.load(tmp_path / "m").extend_bonus == 0.0


def test_decode_keeps_attributes_apart_and_within_the_category() -> None:
    spans = [("title", 0, 4), ("title", 5, 8)]
    # Both attributes want word 0; attribute 0 is surer, so attribute 1 falls back to word 1.
    logits = _logits([[0.02, 0.6, 0.02, 0.35, 0.01], [0.3, 0.05, 0.05, 0.55, 0.05]])
    found = {
        s.attribute: (s.start, s.end) for s in decode(logits, spans, LabelSpace.of(np.ones(5, dtype=bool)))
    }
    assert found == {0: (0, 4), 1: (5, 8)}
    only_1 = LabelSpace.of(np.array([True, False, False, True, True]))
    (span,) = decode(logits, spans, only_1)
    assert span.attribute == 1 and (span.start, span.end) == (0, 4)
    # A span never crosses from title into description, and each field may hold the attribute (the stage keeps
    # the title's place when both hold the same value).
    two_fields = [("title", 0, 4), ("description", 0, 3)]
    logits = _logits([[0.05, 0.9, 0.03, 0.01, 0.01], [0.05, 0.03, 0.9, 0.01, 0.01]])
    assert [s.field for s in decode(logits, two_fields, LabelSpace.of(np.ones(5, dtype=bool)))] == ["title"]
    logits = _logits([[0.05, 0.9, 0.03, 0.01, 0.01], [0.05, 0.9, 0.03, 0.01, 0.01]])
    found = decode(logits, two_fields, LabelSpace.of(np.ones(5, dtype=bool)))
    assert [(s.field, s.attribute) for s in found] == [("title", 0), ("description", 0)]


def test_fit_needs_labelled_products() -> None:
    with pytest.raises(DataError, match="expected products with known attribute values"):
        AttributeExtractor(**AttributeExtractor.test_params).fit([Product("1", "x")])


@pytest.fixture(scope="module")
def int8_stage() -> AttributeExtractor:
    # A dev split of 4 products (the default 5 % would leave 2): enough values to calibrate on.
    params = {**AttributeExtractor.test_params, "quantize": True, "dev_fraction": 0.1}
    return AttributeExtractor(**params).fit(tiny_products(40))


def test_int8_values_do_not_depend_on_batch_size(int8_stage: AttributeExtractor) -> None:
    """Activation ranges are fixed at export (static int8): a product's values and scores are the same whatever
    shares its batch (per-batch ranges changed 18 % of OA-Mine titles' values)."""
    products = tiny_products(40)
    one = list(int8_stage.pipe(copy.deepcopy(products), batch_size=1))
    many = list(int8_stage.pipe(copy.deepcopy(products), batch_size=64))
    for a, b in zip(one, many, strict=True):
        assert {k: (v.value, v.start, v.end) for k, v in a.extracted.items()} == {
            k: (v.value, v.start, v.end) for k, v in b.extracted.items()
        }
        assert all(abs(a.extracted[k].score - b.extracted[k].score) < 1e-4 for k in a.extracted)


def test_inference_overlaps_decoding_and_keeps_order(int8_stage: AttributeExtractor) -> None:
    products = tiny_products(40) * 4  # more than two chunks of 64 sequences: the model runs a chunk ahead
    together = int8_stage.predict(products)
    alone = [int8_stage.predict([p])[0] for p in products]
    assert any(together)
    for a, b in zip(together, alone, strict=True):
        assert {k: (v.value, v.start, v.end) for k, v in a.items()} == {
            k: (v.value, v.start, v.end) for k, v in b.items()
        }
        assert all(abs(a[k].score - b[k].score) < 1e-3 for k in a)


def test_unknown_category_and_empty_title(int8_stage: AttributeExtractor) -> None:
    preds = int8_stage.predict(
        [
            Product("1", "Acme Women's Sandal, Red", category=CategoryPrediction("Garden")),
            Product("2", ""),
            Product("3", "   "),
        ]
    )
    assert preds[1] == {} and preds[2] == {}
    for av in preds[0].values():
        assert "Acme Women's Sandal, Red"[av.start : av.end] == av.value and 0 <= av.score <= 1


def test_dev_metrics_and_calibration_recorded(int8_stage: AttributeExtractor) -> None:
    info = int8_stage.train_info_
    assert info["n_dev"] == 4 and info["n_train"] == 36
    assert info["epochs_run"] == int8_stage.epochs and info["tokens_per_epoch"] > 36
    assert set(info["dev_metrics"]) >= {"micro_f1", "macro_f1", "micro_precision", "micro_recall"}
    xs, ys = int8_stage.calibration_
    assert list(ys) == sorted(ys) and 0 <= ys[0] and ys[-1] <= 1  # isotonic: monotone, in [0, 1]


def test_freeze_embeddings_keeps_the_word_embeddings_out_of_training() -> None:
    params = {**AttributeExtractor.test_params, "epochs": 1}
    free = AttributeExtractor(**params).fit(tiny_products(12)).train_info_
    frozen = AttributeExtractor(**params, freeze_embeddings=True).fit(tiny_products(12)).train_info_
    # Only the rows of the token ids in the training data (and [MASK]) train, not all 30,522 of MiniLM's.
    stage = AttributeExtractor(**params)
    stage.fit(tiny_products(12))
    seqs = stage.encoder_.encode(tiny_products(12), [p.category_path or "" for p in tiny_products(12)])
    n_ids = len({i for s in seqs for i in s.ids} | {stage.encoder_.mask_id})
    assert free["trainable_params"] - frozen["trainable_params"] == n_ids * 384


def _tiny_bert_training(
    epochs: int = 2, max_id: int = 30, on_batch: Any = None, **options: Any
) -> tuple[Any, dict[str, Any]]:
    """A one-layer BERT trained on 8 random sequences of token ids 5..max_id-1 (vocabulary 50) in batches of 4;
    `on_batch(model)` is called before each batch."""
    from shangpin.stages.extract_attributes.training import train_token_classifier

    rng = np.random.default_rng(0)
    ids = rng.integers(5, max_id, (8, 6))
    labels = rng.integers(0, 3, (8, 6))
    model = tiny_bert()

    def batches_of(idx: list[int]) -> tuple[np.ndarray | None, ...]:
        if on_batch is not None:
            on_batch(model)
        return ids[idx], np.ones_like(ids[idx]), np.zeros_like(ids[idx]), labels[idx], None

    stats = train_token_classifier(
        model,
        batches_of,
        [6] * 8,
        epochs=epochs,
        batch_size=4,
        learning_rate=1e-2,
        weight_decay=0.0,
        warmup_ratio=0.0,
        seed=0,
        stage="t",
        freeze_embeddings=False,
        **options,
    )
    return model, stats


def test_training_only_the_rows_of_seen_tokens_learns_what_training_every_row_does() -> None:
    import torch

    full, full_stats = _tiny_bert_training()
    rows, rows_stats = _tiny_bert_training(trained_rows=list(range(5, 30)))
    assert isinstance(rows.get_input_embeddings(), torch.nn.Embedding)  # merged back for export
    for name, value in full.state_dict().items():
        assert torch.allclose(rows.state_dict()[name], value, atol=1e-5), name
    embeddings = rows.get_input_embeddings().weight
    torch.manual_seed(0)
    untouched = type(full)(full.config).get_input_embeddings().weight
    assert torch.equal(embeddings[30:], untouched[30:]) and not torch.allclose(
        embeddings[5:30], untouched[5:30]
    )
    assert full_stats["trainable_params"] - rows_stats["trainable_params"] == 25 * 16


def test_bf16_autocast_trains_close_to_float32() -> None:
    import torch

    fp32, _ = _tiny_bert_training()
    bf16, stats = _tiny_bert_training(bf16=True)
    weight = "classifier.weight"
    assert torch.isfinite(torch.tensor(stats["final_loss"]))
    assert bf16.state_dict()[weight].dtype == torch.float32  # weights stay float32
    assert not torch.equal(bf16.state_dict()[weight], fp32.state_dict()[weight])
    assert torch.allclose(bf16.state_dict()[weight], fp32.state_dict()[weight], atol=0.05)


def test_mixed_precision_setting_is_checked() -> None:
    with pytest.raises(ConfigError, match="mixed_precision must be 'auto', 'bf16' or 'fp32', not 'fp16'"):
        AttributeExtractor(mixed_precision="fp16").fit(tiny_products(4))


def test_layer_decay_depth_counts_layers_down_from_the_head() -> None:
    from shangpin.stages.extract_attributes.training import _depth_from_top

    assert _depth_from_top("classifier.weight", 4) == 0
    assert _depth_from_top("bert.encoder.layer.3.output.dense.weight", 4) == 1
    assert _depth_from_top("bert.encoder.layer.0.attention.self.query.bias", 4) == 4
    lora = "base_model.model.bert.encoder.layer.1.attention.self.query.lora_A.default.weight"
    assert _depth_from_top(lora, 4) == 3
    assert _depth_from_top("bert.embeddings.LayerNorm.weight", 4) == 5


def test_value_mask_hides_only_value_words_and_changes_each_epoch(monkeypatch: pytest.MonkeyPatch) -> None:
    from shangpin.stages.extract_attributes import training

    seen: list[tuple[np.ndarray, np.ndarray]] = []

    class Stop(Exception):
        pass

    def spy(model: object, batches_of: Any, lengths: list[int], **kwargs: object) -> dict[str, float]:
        everything = list(range(len(lengths)))
        for _ in range(2):  # two epochs' worth of the same batch
            ids, _mask, _types, labels, _allowed, *_weights = batches_of(everything)
            seen.append((ids, labels))
        raise Stop

    monkeypatch.setattr(training, "train_token_classifier", spy)
    stage = AttributeExtractor(**AttributeExtractor.test_params, value_mask=0.5)
    with pytest.raises(Stop):
        stage.fit(tiny_products(12))
    mask_id = stage.encoder_.mask_id
    (ids1, labels), (ids2, _) = seen
    masked = ids1 == mask_id
    assert masked.any() and not (ids1 == ids2).all()
    # every masked token belongs to a word inside a value: its word's first token carries a B- or I- label
    rows, cols = np.nonzero(masked)
    for r, c in zip(rows, cols, strict=True):
        first = max(k for k in range(c + 1) if labels[r, k] != -100)
        assert labels[r, first] > 0
    assert not (ids1[labels == 0] == mask_id).any()


def test_models_saved_before_the_prefix_option_keep_reading_the_category(
    int8_stage: AttributeExtractor, tmp_path: Path
) -> None:
    int8_stage.save(tmp_path / "m")
    assert AttributeExtractor.load(tmp_path / "m").encoder_.category_prefix is False
    state_file = tmp_path / "m" / AttributeExtractor.STATE_FILE
    state = json.loads(state_file.read_text())
    del state["category_prefix"], state["unreliable"]
    state_file.write_text(json.dumps(state))
    old = AttributeExtractor.load(tmp_path / "m")
    assert old.encoder_.category_prefix is True
    assert old.unreliable_ == {}  # saved before the reliability filter: every training value, as before


def _tiny_mpnet(folder: Path) -> Path:
    """A tiny randomly initialised MPNet checkpoint (no token-type embeddings, RoBERTa-style special tokens)
    with MiniLM's word-piece vocabulary, the special tokens renamed <s>, </s>, <pad>, <mask>."""
    from transformers import MPNetConfig, MPNetModel

    text = (default_encoder_path() / "tokenizer.json").read_text(encoding="utf-8")
    for bert, roberta in (("[CLS]", "<s>"), ("[SEP]", "</s>"), ("[PAD]", "<pad>"), ("[MASK]", "<mask>")):
        text = text.replace(json.dumps(bert), json.dumps(roberta))
    folder.mkdir()
    (folder / "tokenizer.json").write_text(text, encoding="utf-8")
    vocab = len(json.loads(text)["model"]["vocab"])
    config = MPNetConfig(
        vocab_size=vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        pad_token_id=0,
    )  # fmt: skip
    MPNetModel(config).save_pretrained(folder)
    return folder


def test_encoder_without_token_types_trains_and_predicts(tmp_path: Path) -> None:
    encoder = _tiny_mpnet(tmp_path / "mpnet")
    params = {**AttributeExtractor.test_params, "epochs": 2, "encoder": str(encoder)}
    stage = AttributeExtractor(**params).fit(tiny_products(12))
    assert stage.encoder_.cls_id == 101 and stage.encoder_.pad_id == 0  # found under their RoBERTa names
    products = tiny_products(12)
    for p, pred in zip(products, stage.predict(products), strict=True):
        for av in pred.values():
            assert getattr(p, av.field)[av.start : av.end] == av.value
    with pytest.raises(ConfigError, match="case_features needs an encoder with token-type"):
        AttributeExtractor(**params, case_features=True).fit(tiny_products(12))


def _cereal(pid: str, title: str, **attrs: str) -> Product:
    return Product(
        pid,
        title,
        category=CategoryPrediction("Cereal"),
        attributes={k.replace("_", " "): AttributeValue(k.replace("_", " "), v) for k, v in attrs.items()},
    )


def test_dictionary_leaves_out_values_seldom_gold_where_they_occur() -> None:
    products = [
        _cereal("1", "Cheerios Cereal", Brand="Cheerios", Cereal_type="Cereal"),
        _cereal("2", "Post Fruity Pebbles Cereal, 12 oz", Brand="Post"),
        _cereal("3", "Kix Cereal Honey", Brand="Kix"),
        _cereal("4", "Trix Cereal", Brand="Trix", Cereal_type="Puffs"),
        _cereal("5", "Arrowhead Mills Organic Cereal", Brand="Arrowhead Mills"),
        _cereal("6", "Udi's Granola, 11 oz", Brand="Udi's", Cereal_type="Granola"),
    ]
    stage = AttributeExtractor(dictionary_min_reliability=0.3)
    stage._build_vocabulary(products)
    # "Cereal" occurs in 5 titles and is the Cereal type of 1: (1 + 0.5) / (5 + 1) = 0.25 < 0.3.
    assert stage.unreliable_ == {"Cereal": {"Cereal type": ["cereal"]}}
    patterns = dict(stage._dictionary_patterns("Cereal"))
    assert patterns["Cereal type"].search("Nature's Path Granola Cereal").group(0) == "Granola"  # type: ignore[union-attr]
    assert patterns["Cereal type"].search("Crunchy Puffs Cereal").group(0) == "Puffs"  # type: ignore[union-attr]
    assert patterns["Cereal type"].search("Honey Cereal") is None
    assert patterns["Brand"].search("Post Cereal") is not None

    every = AttributeExtractor(dictionary_min_reliability=0.0)
    every._build_vocabulary(products)
    assert every.unreliable_ == {}
    assert dict(every._dictionary_patterns("Cereal"))["Cereal type"].search("Honey Cereal") is not None


def test_threshold_rises_only_for_a_gain_beyond_a_few_values() -> None:
    from shangpin.stages.extract_attributes import choose_threshold

    # 600 gold values: the margin is 3 / 600 = 0.5 points.
    noisy = [(0.0, 73.84), (0.2, 73.86), (0.3, 73.97), (0.35, 73.65)]
    assert choose_threshold(noisy, 600) == 0.0
    clear = [(0.0, 70.0), (0.2, 70.2), (0.3, 72.0), (0.5, 72.3)]
    assert choose_threshold(clear, 600) == 0.3
    # A big dev split trusts small gains.
    assert choose_threshold(noisy, 100_000) == 0.3
    assert choose_threshold([], 10) == 0.0


def test_pseudo_labels_train_a_second_round_on_unlabelled_titles() -> None:
    labelled = tiny_products(40)
    unlabelled = [
        Product(f"u{p.product_id}", p.title, category=p.category) for p in tiny_products(12, seed=5)
    ]
    params = {**AttributeExtractor.test_params, "epochs": 4, "pseudo_label_min_score": 0.0}
    stage = AttributeExtractor(**params).fit(labelled + unlabelled)
    info = stage.train_info_
    assert 0 < info["n_pseudo_labelled"] <= len(unlabelled)
    assert info["n_pseudo_values"] >= info["n_pseudo_labelled"]
    assert stage.predict(unlabelled[:2])  # the second round's model is the one in use


def test_category_loss_gives_each_row_only_its_category_labels(monkeypatch: pytest.MonkeyPatch) -> None:
    from shangpin.stages.extract_attributes import training

    seen: list[tuple[np.ndarray, np.ndarray | None]] = []

    class Stop(Exception):
        pass

    def spy(model: object, batches_of: Any, lengths: list[int], **kwargs: object) -> dict[str, float]:
        _ids, _mask, _types, labels, allowed, *_weights = batches_of(list(range(len(lengths))))
        seen.append((labels, allowed))
        raise Stop

    monkeypatch.setattr(training, "train_token_classifier", spy)
    products = tiny_products(12)
    for on in (False, True):
        stage = AttributeExtractor(**AttributeExtractor.test_params, category_loss=on, dev_fraction=0.0)
        with pytest.raises(Stop):
            stage.fit(products)
    (_, off), (labels, allowed) = seen
    assert off is None
    assert allowed is not None and allowed.shape == (len(labels), len(stage.labels_))
    cats = {p.category_path for p in products}
    assert len(cats) == 2
    rows = {c: stage._label_mask(c or "") for c in cats}
    for r, row in enumerate(allowed):
        assert any((row == m).all() for m in rows.values())
        assert row[labels[r][labels[r] >= 0]].all()  # every gold label is one the row's softmax may use
    # the two categories share no attribute but O, so each row leaves labels out
    assert (~allowed).any(axis=1).all()


def test_average_last_ends_on_the_mean_of_epoch_end_weights() -> None:
    import torch

    def trained(average_last: int) -> tuple[dict[str, torch.Tensor], list[dict[str, torch.Tensor]]]:
        """Final weights, and the weights at the start of each batch (8 examples, batches of 4: 2 per epoch)."""
        starts: list[dict[str, torch.Tensor]] = []

        def record(model: Any) -> None:
            starts.append({k: v.clone() for k, v in model.state_dict().items()})

        model, _ = _tiny_bert_training(epochs=3, max_id=50, on_batch=record, average_last=average_last)
        return {k: v.clone() for k, v in model.state_dict().items()}, starts

    last, starts = trained(0)
    assert len(starts) == 6
    epoch_ends = [starts[2], starts[4], last]
    assert all(torch.equal(last[k], v) for k, v in trained(1)[0].items())  # one epoch: its own weights
    for n, averaged in ((2, trained(2)[0]), (3, trained(3)[0])):
        for name in (
            "classifier.weight",
            "bert.encoder.layer.0.output.dense.weight",
            "bert.embeddings.word_embeddings.weight",
        ):
            mean = torch.stack([e[name] for e in epoch_ends[-n:]]).mean(0)
            assert torch.allclose(averaged[name], mean, atol=1e-6)
            assert not torch.allclose(averaged[name], last[name])


def test_long_texts_train_fewer_epochs_within_the_token_cap(caplog: pytest.LogCaptureFixture) -> None:
    stage = AttributeExtractor(epochs=20, max_train_tokens=800_000)
    assert stage.epochs_for(30_000) == 20  # OA-Mine's titles: every epoch
    assert caplog.records == []
    assert stage.epochs_for(150_000) == 5  # with descriptions: 800,000 // 150,000
    assert "training 5 epochs instead of 20" in caplog.text and "max_train_tokens=0" in caplog.text
    assert stage.epochs_for(2_000_000) == 3  # never fewer than MIN_EPOCHS
    assert AttributeExtractor(epochs=2, max_train_tokens=1000).epochs_for(10_000) == 2
    assert AttributeExtractor(epochs=20, max_train_tokens=0).epochs_for(10**9) == 20


def test_balance_fields_gives_title_and_description_words_half_the_loss_each(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from dataclasses import replace

    from shangpin.stages.extract_attributes import training

    seen: list[tuple[Any, ...]] = []

    class Stop(Exception):
        pass

    def spy(model: object, batches_of: Any, lengths: list[int], **kwargs: object) -> dict[str, float]:
        seen.append(batches_of(list(range(len(lengths)))))
        raise Stop

    monkeypatch.setattr(training, "train_token_classifier", spy)
    titles = [replace(p, description="") for p in tiny_products(12)]
    described = [replace(p, description="a long description of the product " * 3) for p in titles]
    for products in (titles, described):
        with pytest.raises(Stop):
            AttributeExtractor(**AttributeExtractor.test_params, dev_fraction=0.0).fit(products)
    plain, balanced = seen
    assert len(plain) == 5  # titles only: the plain mean, as without balancing
    _ids, _mask, _types, labels, _allowed, weights = balanced
    assert weights.sum() == pytest.approx(1.0)
    assert (weights[labels == -100] == 0).all()
    field_weights = {float(w) for w in weights[labels != -100]}
    assert len(field_weights) == 2  # one weight per field: the many description words each weigh less
    with pytest.raises(Stop):
        AttributeExtractor(**AttributeExtractor.test_params, dev_fraction=0.0, balance_fields=False).fit(
            described
        )
    assert len(seen[-1]) == 5


def test_the_same_seed_trains_the_same_model() -> None:
    params = {**AttributeExtractor.test_params, "epochs": 2, "mixed_precision": "fp32"}
    runs = [
        AttributeExtractor(**params, seed=s).fit(tiny_products(12)).train_info_["final_loss"]
        for s in (3, 3, 4)
    ]
    # The new head's initial weights too (threads may still reorder float sums: equal to 1e-6, not bit for bit).
    assert runs[0] == pytest.approx(runs[1], abs=1e-5)
    assert abs(runs[0] - runs[2]) > 1e-3


def test_encoder_adds_unknown_chinese_characters() -> None:
    enc = Encoder(default_encoder_path() / "tokenizer.json")
    unk, size = enc.unk_id, enc.vocab_size
    title = "三只松鼠花草茶茶泡袋"
    before = enc.tokenizer.encode(title, add_special_tokens=False).ids
    assert before.count(unk) >= 4  # 只, 鼠, 草 and 茶 are not in MiniLM's English vocabulary
    added = enc.add_characters([title, title, "花茶 Tea", "袋"], min_count=2)
    assert "鼠" in added and "袋" in added and "三" not in added  # 三 was in the vocabulary already
    after = enc.tokenizer.encode(title, add_special_tokens=False)
    assert unk not in after.ids and enc.vocab_size == size + len(added)
    assert [o for o in after.offsets] == [(i, i + 1) for i in range(len(title))]  # a word per character
    assert Encoder(default_encoder_path() / "tokenizer.json").add_characters(["Navy Blue"], 1) == []


CHINESE_BRANDS = ["三只松鼠", "百草味", "良品铺子", "飞利浦"]
CHINESE_PRODUCTS = ["花草茶", "枸杞茶", "理发器", "茶泡袋", "坚果礼盒"]


def test_chinese_titles_train_and_predict_end_to_end(tmp_path: Path) -> None:
    import random

    rng = random.Random(0)
    products = []
    for i in range(30):
        brand, kind = rng.choice(CHINESE_BRANDS), rng.choice(CHINESE_PRODUCTS)
        title = f"{brand}{kind}{rng.choice(['包邮', '正品', '新款'])} {rng.randint(100, 999)}g"
        attrs = {"品牌": AttributeValue("品牌", brand), "品类": AttributeValue("品类", kind)}
        products.append(Product(f"zh{i}", title, attributes=attrs))
    stage = AttributeExtractor(**{**AttributeExtractor.test_params, "dev_fraction": 0.1})
    stage.fit(products)
    assert stage.train_info_["n_added_characters"] >= 10
    stage.save(tmp_path / "zh")
    loaded = AttributeExtractor.load(tmp_path / "zh")
    assert loaded.encoder_.vocab_size == stage.encoder_.vocab_size  # the grown vocabulary is saved with it
    preds = loaded.predict(products)
    found = sum(
        pred.get(name) is not None and pred[name].value == av.value
        for p, pred in zip(products, preds, strict=True)
        for name, av in p.attributes.items()
        if av is not None
    )
    assert found >= 30  # of 60 values in titles it trained on; offsets are exact spans of the title
    for p, pred in zip(products, preds, strict=True):
        assert all(p.title[v.start : v.end] == v.value for v in pred.values())


def test_model_batches_hold_a_token_budget() -> None:
    from shangpin.stages.extract_attributes import _chunks
    from shangpin.stages.extract_attributes.encoding import Sequence_

    seqs = [Sequence_(product=i, ids=[0] * n) for i, n in enumerate([20] * 100 + [128] * 40)]
    chunks = _chunks(seqs)
    assert [len(c) for c in chunks[:2]] == [64, 36]  # short titles: 64 rows
    assert all(len(c) * max(len(s.ids) for s in c) <= 64 * 48 for c in chunks)
    assert [s.product for c in chunks for s in c] == list(range(140))  # order kept, nothing lost
