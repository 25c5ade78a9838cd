"""Tag recommendation: a ranked list of tags from a learned vocabulary, plus keyphrases the vocabulary lacks.

The vocabulary comes from the training products' `tags`, or, when none has any, from their category path nodes
and (non-numeric) attribute values. Tags that differ only in case, spacing or separators are one tag; the most
frequent spelling is the one returned.

Two models read the same TF-IDF rows of the product text (title words and character 2-5 grams, description,
breadcrumb, and the given category and attributes when they are not themselves tag sources): one-vs-rest logistic
regression and omikuji's Bonsai label trees (Annif's XMC backend; it keeps training cheap at tens of thousands of
tags, where the linear models are skipped, see `max_linear_tags`). Their
probabilities are averaged with a weight chosen on a dev split (by F1@5 + NDCG@10). Each tag then gets a
threshold tuned on the same split to maximise its F1 (Annif's `optimize`, per tag; tags too rare on dev use the
best global threshold). `predict` returns the `limit` best tags, best first; `selected` says whether a tag reached
its threshold. With thresholds="cut" the others are dropped, which favours set metrics (macro-F1) over ranking
ones (NDCG@10): on the fashion dev split cutting cost 2.6 NDCG points for 14 macro-F1 points, so the default
keeps the ranking and flags the decision.

Keyphrases (`keyphrases` > 0): word n-grams of the title the vocabulary does not cover, scored by how close their
MiniLM embedding is to the title's, returned separately as `new_tags` (see `keyphrases.py`).
"""

from __future__ import annotations

import logging
import random
import re
import shutil
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np

from shangpin.errors import DataError
from shangpin.normalize import value_key
from shangpin.records import Event, Product, TagSuggestion
from shangpin.sentence import MiniLMSentenceEncoder
from shangpin.stages.base import Stage, StageReport, dev_split

log = logging.getLogger(__name__)

Prediction = tuple[list[TagSuggestion], list[TagSuggestion]]
"""(vocabulary tags best first, new keyphrase tags best first)."""

_NUMERIC = re.compile(r"^[\d.,\s/-]+$")
WEIGHT_GRID = tuple(round(0.1 * i, 1) for i in range(11))
THRESHOLD_GRID = tuple(round(0.05 * i, 2) for i in range(1, 20))
MIN_DEV_POSITIVES = 3
"""A tag needs this many dev products to get a threshold of its own (else the best global one)."""


class TagRecommender(Stage[Prediction]):
    """Ranked tags with per-tag thresholds; keyphrase tags for what the vocabulary does not cover.

    Args:
        tag_source: "auto" (the products' `tags` when any training product has tags, else "derived"), "tags",
            or "derived" (category path nodes and attribute values).
        tag_attributes: with derived tags, the attributes whose values become tags (default: all; values that are
            only numbers, such as years or sizes, are skipped).
        category_tags: with derived tags, also make each category path node a tag.
        min_count: training products a tag needs to join the vocabulary.
        limit: most tags returned per product.
        thresholds: "flag" (return the `limit` best, `selected` = reached the tag's threshold), "cut" (return
            only selected tags) or "none" (no thresholds: every returned tag is selected).
        C: inverse regularisation of the logistic regressions.
        char_ngrams: add title character 2-5 grams to the features.
        max_linear_tags: above this vocabulary size only the tree model is trained (one solver run per tag
            would take too long).
        linear_weight: weight of the logistic regression in the score mean; negative = choose on the dev split.
        use_description: read the description (first `description_chars` characters).
        keyphrases: most new (out-of-vocabulary) keyphrase tags per product; 0 = off.
        keyphrase_min_score: keyphrases scoring below this cosine are dropped.
        encoder: checkpoint folder for keyphrase embeddings ("" = the shipped MiniLM; e.g. one written by
            `shangpin pretrain`).
        dev_fraction: share of tagged products held out to choose the weight and the thresholds.
        refit_full: refit the models on all tagged products afterwards (weight and thresholds stay).
        seed: seeds the dev split.
    """

    name: ClassVar[str] = "recommend_tags"
    task: ClassVar[str] = "tags"
    version: ClassVar[int] = 1
    requires: ClassVar[tuple[str, ...]] = ()
    assigns: ClassVar[tuple[str, ...]] = ("tags", "new_tags")
    headline_metric: ClassVar[str] = "ndcg_at_10"  # F1@5 cannot reach 100 with fewer than 5 gold tags
    test_params: ClassVar[dict[str, Any]] = {"min_count": 1, "keyphrases": 0}
    MODELS_FILE: ClassVar[str] = "models.joblib"
    TREE_DIR: ClassVar[str] = "omikuji"

    def __init__(
        self,
        *,
        tag_source: str = "auto",
        tag_attributes: list[str] | None = None,
        category_tags: bool = True,
        min_count: int = 2,
        limit: int = 10,
        thresholds: str = "flag",
        C: float = 10.0,
        char_ngrams: bool = True,
        max_linear_tags: int = 2000,
        linear_weight: float = -1.0,
        use_description: bool = True,
        description_chars: int = 1000,
        keyphrases: int = 3,
        keyphrase_min_score: float = 0.3,
        encoder: str = "",
        dev_fraction: float = 0.1,
        refit_full: bool = True,
        seed: int = 13,
    ) -> None:
        self.tag_source = tag_source
        self.tag_attributes = tag_attributes
        self.category_tags = category_tags
        self.min_count = min_count
        self.limit = limit
        self.thresholds = thresholds
        self.C = C
        self.char_ngrams = char_ngrams
        self.max_linear_tags = max_linear_tags
        self.linear_weight = linear_weight
        self.use_description = use_description
        self.description_chars = description_chars
        self.keyphrases = keyphrases
        self.keyphrase_min_score = keyphrase_min_score
        self.encoder = encoder
        self.dev_fraction = dev_fraction
        self.refit_full = refit_full
        self.seed = seed

    # ------------------------------------------------------------------ vocabulary

    def _check_params(self) -> None:
        self._require(
            [
                (
                    self.tag_source in ("auto", "tags", "derived"),
                    f"tag_source: expected auto, tags or derived, found {self.tag_source!r}",
                ),
                (
                    self.thresholds in ("flag", "cut", "none"),
                    f"thresholds: expected flag, cut or none, found {self.thresholds!r}",
                ),
                (self.limit >= 1, f"limit: expected >= 1, found {self.limit}"),
                (self.min_count >= 1, f"min_count: expected >= 1, found {self.min_count}"),
                (
                    0.0 <= self.dev_fraction < 1.0,
                    f"dev_fraction: expected 0 <= x < 1, found {self.dev_fraction}",
                ),
                (
                    self.linear_weight <= 1.0,
                    f"linear_weight: expected <= 1 (negative = choose on dev), found {self.linear_weight}",
                ),
                (self.keyphrases >= 0, f"keyphrases: expected >= 0, found {self.keyphrases}"),
            ]
        )

    def gold_tags(self, product: Product) -> list[str]:
        """The product's tags as this model counts them: given tags, or derived ones (see `tag_source`)."""
        raw = self._raw_tags(product)
        out: list[str] = []
        for tag in raw:
            key = value_key(tag)
            if key and key not in out:
                out.append(key)
        return out

    def _feature_view(self, product: Product) -> Product:
        """What the models may read: tag sources are hidden (a derived tag must not be its own feature)."""
        view = replace(product, tags=[], extracted={}, predicted={})
        if not self.use_description:
            view.description = ""
        if self.source_ == "derived":
            if self.category_tags:
                view.category = None
            view.attributes = {
                k: v
                for k, v in product.attributes.items()
                if self.tag_attributes is not None and k not in self.tag_attributes
            }
        return view

    # ------------------------------------------------------------------ training

    def fit(self, products: Sequence[Product], events: Sequence[Event] = ()) -> Self:
        from shangpin.evaluate import tag_scores

        self._check_params()
        t0 = time.perf_counter()
        if self.tag_source == "auto":
            self.source_ = "tags" if any(p.tags for p in products) else "derived"
        else:
            self.source_ = self.tag_source
        labelled = [(p, self.gold_tags(p)) for p in products]
        labelled = [(p, t) for p, t in labelled if t]
        if not labelled:
            raise DataError(
                f"expected training products with tags (or, with tag_source=derived, a category or attributes), "
                f"found none among {len(products)} products; add a 'tags' list to each product"
            )
        counts = Counter(t for _, tags in labelled for t in tags)
        spelling: dict[str, Counter[str]] = defaultdict(Counter)
        for p, _ in labelled:
            for raw in self._raw_tags(p):
                spelling[value_key(raw)][raw.strip()] += 1
        keys = sorted(k for k, n in counts.items() if n >= self.min_count)
        if not keys:
            raise DataError(
                f"no tag occurs in at least min_count={self.min_count} training products "
                f"({len(counts)} distinct tags); lower min_count or add data"
            )
        self.tag_keys_ = keys
        self.tag_names_ = [spelling[k].most_common(1)[0][0] if spelling[k] else k for k in keys]
        self.inputs_ = sorted(
            {a for p, _ in labelled for a, v in self._feature_view(p).attributes.items() if v is not None}
        )
        rng = random.Random(self.seed)
        dev, train = dev_split(labelled, self.dev_fraction, rng)
        self.weight_ = self.linear_weight if self.linear_weight >= 0 else 0.3
        self.thresholds_ = np.full(len(keys), 0.5, dtype=np.float32)
        info: dict[str, Any] = {
            "n_products": len(products),
            "n_tagged": len(labelled),
            "n_tags": len(keys),
            "tag_source": self.source_,
            "tags_dropped_min_count": len(counts) - len(keys),
        }
        if dev:
            self._fit_models([p for p, _ in train], [t for _, t in train])
            lin, tree = self._model_scores([p for p, _ in dev])
            gold = [t for _, t in dev]
            if self.linear_weight < 0 and lin is not None:

                def objective(w: float) -> float:
                    m = tag_scores(gold, self._ranked_keys(w * lin + (1 - w) * tree))
                    return m["f1_at_5"] + m["ndcg_at_10"]

                best = max(WEIGHT_GRID, key=objective)
                self.weight_ = float(best)
            scores = self._mix(lin, tree)
            self.thresholds_ = self._tune_thresholds(scores, gold)
            dev_pred = [[k for k, _ in row] for row in self._select(scores)]
            info["dev_metrics"] = self._metrics(
                gold, [[k for k, _ in r] for r in self._rank(scores)], dev_pred
            )
            info["n_dev"] = len(dev)
        if self.refit_full or not dev:
            self._fit_models([p for p, _ in labelled], [t for _, t in labelled])
        info.update(
            {
                "linear_weight": self.weight_ if self.linear_ is not None else 0.0,
                "linear_model": self.linear_ is not None,
                "train_seconds": round(time.perf_counter() - t0, 1),
                "summary": f"{len(keys)} tags from {self.source_} of {len(labelled)} products",
            }
        )
        self._keyphraser: Any = None
        self._keyphrase_onnx: Path | None = None  # set by _load_state when 'shangpin export' wrote one
        self.train_info_ = info
        return self

    def _raw_tags(self, product: Product) -> list[str]:
        if self.source_ == "tags":
            return [t.label for t in product.tags]
        raw = []
        if self.category_tags and product.category_path:
            raw += [p.strip() for p in product.category_path.split(">") if p.strip()]
        for name, av in product.attributes.items():
            if av is not None and (self.tag_attributes is None or name in self.tag_attributes):
                raw += [v for v in (av.value, *av.alternatives) if v.strip() and not _NUMERIC.match(v)]
        return raw

    def _fit_models(self, products: Sequence[Product], tags: Sequence[list[str]]) -> None:
        from sklearn.feature_extraction.text import TfidfVectorizer

        from shangpin.encoders import num_threads
        from shangpin.stages.predict_attributes.features import TextFeatures
        from shangpin.stages.recommend_tags.models import LinearTagModel, TreeTagModel

        index = {k: i for i, k in enumerate(self.tag_keys_)}
        Y = np.zeros((len(products), len(index)), dtype=np.uint8)
        for i, ts in enumerate(tags):
            for t in ts:
                if t in index:
                    Y[i, index[t]] = 1
        views = [self._feature_view(p) for p in products]
        self.features_ = TextFeatures(
            self.inputs_, char_ngrams=False, description_chars=self.description_chars, crosses=False
        )
        X = self.features_.fit_transform(views)
        self.char_vectorizer_ = None
        if self.char_ngrams:
            vec = TfidfVectorizer(
                analyzer="char_wb",
                ngram_range=(2, 5),
                min_df=2,
                sublinear_tf=True,
                max_features=200_000,
                dtype=np.float32,
            )
            try:
                vec.fit([p.title for p in views])
                self.char_vectorizer_ = vec
            except ValueError:  # too little text for any n-gram to reach min_df
                pass
        # A tag on every (or, after the dev split, on no) training product trains no classifier: it gets a constant.
        self.varying_ = Y.min(axis=0) != Y.max(axis=0)
        self.constant_ = Y.max(axis=0).astype(np.float32)
        threads = num_threads()
        self.linear_ = None
        rows = self._rows(X, views)
        if len(index) <= self.max_linear_tags and self.varying_.sum() >= 2:
            self.linear_ = LinearTagModel(self.C, n_jobs=threads).fit(rows, Y[:, self.varying_])
        self.tree_ = TreeTagModel(n_threads=threads).fit(rows, Y)

    def _rows(self, X: Any, views: Sequence[Product]) -> Any:
        """The feature rows both models read: the word blocks and title character n-grams, L2-normalised."""
        from scipy.sparse import hstack
        from sklearn.preprocessing import normalize

        if self.char_vectorizer_ is not None:
            X = hstack([X, self.char_vectorizer_.transform([p.title for p in views])], format="csr")
        out = normalize(X).astype(np.float32)
        out.sort_indices()
        return out

    def _model_scores(self, products: Sequence[Product]) -> tuple[np.ndarray | None, np.ndarray]:
        views = [self._feature_view(p) for p in products]
        X = self.features_.transform(views)
        rows = self._rows(X, views)
        tree = self.tree_.scores(rows)
        lin = None
        if self.linear_ is not None:
            lin = np.tile(self.constant_, (len(products), 1))
            lin[:, self.varying_] = self.linear_.scores(rows).reshape(len(products), -1)
        return lin, tree

    def _mix(self, lin: np.ndarray | None, tree: np.ndarray) -> np.ndarray:
        if lin is None:
            return tree
        return self.weight_ * lin + (1.0 - self.weight_) * tree

    def _ranked_keys(self, scores: np.ndarray) -> list[list[str]]:
        return [[k for k, _ in row] for row in self._rank(scores)]

    def _rank(self, scores: np.ndarray) -> list[list[tuple[str, float]]]:
        """Per product the `limit` best (tag key, score), best first; ties broken by tag key for determinism."""
        out = []
        k = min(self.limit, scores.shape[1])
        for row in scores:
            best = np.argpartition(-row, k - 1)[:k] if k < len(row) else np.arange(len(row))
            top = sorted(best.tolist(), key=lambda j: (-row[j], self.tag_keys_[j]))
            out.append([(self.tag_keys_[j], float(row[j])) for j in top if row[j] > 0])
        return out

    def _select(self, scores: np.ndarray) -> list[list[tuple[str, float]]]:
        index = {k: i for i, k in enumerate(self.tag_keys_)}
        return [[(k, s) for k, s in row if s >= self.thresholds_[index[k]]] for row in self._rank(scores)]

    def _tune_thresholds(self, scores: np.ndarray, gold: Sequence[list[str]]) -> np.ndarray:
        """Per tag, the threshold on the grid that maximises the tag's F1 on dev among its `limit` best."""
        index = {k: i for i, k in enumerate(self.tag_keys_)}
        n, m = scores.shape
        ranked = np.zeros_like(scores)  # scores outside each product's `limit` best are never returned
        for i, row in enumerate(self._rank(scores)):
            for k, s in row:
                ranked[i, index[k]] = s
        truth = np.zeros((n, m), dtype=bool)
        for i, ts in enumerate(gold):
            for t in ts:
                if t in index:
                    truth[i, index[t]] = True
        grid = np.array(THRESHOLD_GRID, dtype=np.float32)
        # One grid value at a time: an (n, m, grid) array would take gigabytes at tens of thousands of tags.
        f1 = np.zeros((m, len(grid)))
        positives = truth.sum(0)
        for g, t in enumerate(grid):
            pred = ranked >= t
            tp = (pred & truth).sum(0)
            f1[:, g] = 2 * tp / np.maximum(pred.sum(0) + positives, 1)
        global_best = float(grid[int(np.argmax(f1.sum(0)))])
        out = np.full(m, global_best, dtype=np.float32)
        enough = truth.sum(0) >= MIN_DEV_POSITIVES
        out[enough] = grid[np.argmax(f1[enough], axis=1)]
        return out

    def _metrics(
        self, gold: Sequence[list[str]], ranked: Sequence[list[str]], selected: Sequence[list[str]]
    ) -> dict[str, float]:
        from shangpin.evaluate import tag_macro_f1, tag_scores

        out = tag_scores(gold, ranked)
        out["macro_f1_selected"], _ = tag_macro_f1(gold, selected)
        out["macro_f1_top5"], _ = tag_macro_f1(gold, [r[:5] for r in ranked])
        return out

    # ------------------------------------------------------------------ inference

    def is_fitted(self) -> bool:
        return hasattr(self, "tree_")

    def predict(self, products: Sequence[Product]) -> list[Prediction]:
        self.check_fitted()
        if not products:
            return []
        lin, tree = self._model_scores(products)
        scores = self._mix(lin, tree)
        index = {k: i for i, k in enumerate(self.tag_keys_)}
        out: list[Prediction] = []
        new = self._new_tags(products)
        for i, row in enumerate(self._rank(scores)):
            tags = []
            for key, score in row:
                j = index[key]
                selected = self.thresholds == "none" or score >= float(self.thresholds_[j])
                if self.thresholds == "cut" and not selected:
                    continue
                tags.append(TagSuggestion(self.tag_names_[j], score, selected=selected))
            out.append((tags, new[i]))
        return out

    def _new_tags(self, products: Sequence[Product]) -> list[list[TagSuggestion]]:
        if self.keyphrases <= 0:
            return [[] for _ in products]
        from shangpin.stages.recommend_tags.keyphrases import KeyphraseExtractor, known_words

        extractor = getattr(self, "_keyphraser", None)
        if extractor is None:
            extractor = self._keyphraser = KeyphraseExtractor(
                self.encoder,
                known=known_words(self.tag_names_),
                onnx_folder=getattr(self, "_keyphrase_onnx", None),
            )
        return [
            [TagSuggestion(text, score, new=True) for text, score in row]
            for row in extractor.extract(products, self.keyphrases, self.keyphrase_min_score)
        ]

    def annotate(self, products: Sequence[Product], preds: Sequence[Prediction]) -> None:
        for product, (tags, new) in zip(products, preds, strict=True):
            product.tags = list(tags)
            product.new_tags = list(new)

    def evaluate(self, gold: Sequence[Product], pred: Sequence[Product]) -> StageReport:
        from shangpin.evaluate import tag_macro_f1

        report = StageReport(stage=self.name)
        pairs = [(self.gold_tags(g), p) for g, p in zip(gold, pred, strict=True)]
        pairs = [(g, p) for g, p in pairs if g]
        if not pairs:
            report.notes.append("No gold product has tags: nothing to score.")
            return report
        gold_keys = [g for g, _ in pairs]
        ranked = [[value_key(t.label) for t in p.tags] for _, p in pairs]
        selected = [[value_key(t.label) for t in p.tags if getattr(t, "selected", True)] for _, p in pairs]
        report.metrics = self._metrics(gold_keys, ranked, selected)
        vocab = set(self.tag_keys_)
        oov = Counter(t for g in gold_keys for t in g if t not in vocab)
        report.metrics["n_products"] = float(len(pairs))
        report.metrics["gold_tags_out_of_vocabulary"] = (
            100 * sum(oov.values()) / max(1, sum(len(g) for g in gold_keys))
        )
        _, rows = tag_macro_f1(gold_keys, selected)
        names = dict(zip(self.tag_keys_, self.tag_names_, strict=True))
        report.tables["Per tag (selected tags)"] = [{**r, "tag": names.get(r["tag"], r["tag"])} for r in rows]
        if oov:
            top = ", ".join(f"'{t}' ({n})" for t, n in oov.most_common(5))
            report.notes.append(
                f"{sum(oov.values())} gold tags are not in the model's vocabulary (it cannot return them): {top}."
            )
        report.notes.append(
            "F1@5, NDCG@10 and P@k are computed on the ranked list (up to `limit` tags); macro-F1 over tags on the "
            "tags that reached their threshold ('selected') and, for comparison, on the top 5."
        )
        return report

    # ------------------------------------------------------------------ persistence

    def _save_state(self, path: Path) -> None:
        import joblib

        self.tree_.save(path / self.TREE_DIR)
        state = {
            k: v
            for k, v in self.__dict__.items()
            if k.endswith("_") and not k.startswith("_") and k != "train_info_"
        }
        joblib.dump(state, path / self.MODELS_FILE)
        onnx_folder = getattr(self, "_keyphrase_onnx", None)
        if onnx_folder is not None and onnx_folder.resolve() != path.resolve():
            for name in (MiniLMSentenceEncoder.ONNX_FILE, MiniLMSentenceEncoder.TOKENIZER_FILE):
                shutil.copyfile(onnx_folder / name, path / name)

    def _load_state(self, path: Path) -> None:
        import joblib

        self.__dict__.update(joblib.load(path / self.MODELS_FILE))
        self.tree_.load(path / self.TREE_DIR, len(self.tag_keys_))
        self._keyphraser = None
        # An ONNX export of the keyphrase encoder (written by 'shangpin export') replaces the torch checkpoint.
        onnx_file = path / MiniLMSentenceEncoder.ONNX_FILE
        self._keyphrase_onnx = path if onnx_file.is_file() else None
