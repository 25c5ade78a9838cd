"""Categorisation into a taxonomy: supervised (TF-IDF + optional sentence vectors, linear SVM) or zero/few-shot.

Every prediction is a whole path that exists in the taxonomy: the classes are complete paths, never levels
predicted one by one, so a leaf can never appear under the wrong parent. Each ancestor of the chosen path gets the
probability mass of the paths below it, which is what `levels` reports and what the per-level metrics score.

Two methods, chosen by `method="auto"` from how much labelled data there is:

- ``supervised``: a linear SVM over TF-IDF blocks (title words, title characters, breadcrumb, description) and,
  with `encoder`, sentence vectors. Decision values become probabilities by a softmax whose temperature is fitted on
  a dev split carved from the training data; the abstention threshold is chosen on the same split.
- ``prototypes``: every candidate category is a vector, the category's name ("Leaf (Parent)") encoded by a
  sentence encoder, plus the vectors of any labelled products of that category (few-shot). A product goes to the
  most similar category. With no labelled products at all this is zero-shot from the taxonomy alone; USE is
  multilingual, so Chinese titles find categories of an English or Chinese taxonomy.
"""

from __future__ import annotations

import json
import logging
import random
import tempfile
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal, Self

import numpy as np

from shangpin._util import atomic_write
from shangpin.encoders import l2_normalise
from shangpin.errors import ConfigError, DataError
from shangpin.records import CategoryPrediction, Event, Product, ScoredLabel
from shangpin.sentence import (
    SENTENCE_ENCODERS,
    MiniLMSentenceEncoder,
    SentenceEncoder,
    create_sentence_encoder,
    load_sentence_encoder,
)
from shangpin.stages.base import Stage, StageReport, dev_split
from shangpin.stages.categorize.features import SparseFeatures, category_text, product_text
from shangpin.taxonomy import SEP, Taxonomy, split_path
from shangpin.text import has_han

log = logging.getLogger(__name__)

Method = Literal["auto", "supervised", "prototypes"]
PRUNE = 1e-3
"""SVM weights smaller than this (in absolute value) are dropped from the saved model."""


class Categorizer(Stage[CategoryPrediction]):
    """Predicts a product's category path with a score, top-k alternatives, per-level scores and abstention.

    Confidence: `score` is the probability that the predicted path is the product's category (softmax of the
    model's scores, temperature fitted on the dev split). A product whose score is below the threshold chosen on
    the dev split for `target_precision` is marked `abstained` (it still gets the best guess) so it can go to review.

    Args:
        taxonomy: taxonomy file or Shopify taxonomy folder (see `shangpin.taxonomy`); "" = the paths of the
            training data. Needed for zero-shot. Training categories must be in it (see `unknown_categories`).
        method: "supervised", "prototypes" (zero/few-shot) or "auto": supervised once the labelled products
            number at least `min_per_class` per category seen among them (it can only predict those categories),
            prototypes otherwise (any category of the taxonomy, improved by the few labels there are).
        encoder: sentence encoder: "none" (supervised only: TF-IDF alone, the fast path), "minilm", "use" or "auto"
            (prototypes: "use" when the taxonomy or products contain Chinese, else "minilm"); or the folder of a
            BERT-style Hugging Face checkpoint (e.g. written by `shangpin pretrain`), used like "minilm".
        use_description: read descriptions (the first `description_chars` characters).
        c: inverse regularisation of the linear SVM.
        dense_weight: scale of the sentence vectors next to the TF-IDF blocks.
        candidates: prototypes: "leaves" or "all" categories of the taxonomy.
        dev_fraction: share of labelled products held out to fit the temperature and the abstention threshold.
        refit_full: after tuning on the dev split, refit on all labelled products.
        target_precision: abstain below the score at which dev precision reaches this; 0 = never abstain.
        top_k: alternatives returned (besides the best path).
        min_per_class: see `method`.
        unknown_categories: "error" or "skip" training products whose category is not in `taxonomy`.
        finetune_epochs: supervised with encoder minilm: first fine-tune the encoder's top `finetune_layers`
            layers as a classifier (early stopping on the dev split), then use its sentence vectors (0 = frozen).
        finetune_layers, finetune_learning_rate: see `finetune_epochs`.
        finetune_lora_rank: > 0 fine-tunes LoRA adapters of this rank (peft) on every layer's attention and
            feed-forward weights instead of the top `finetune_layers` layers in full; merged before the export.
        seed: seed for the dev split.
    """

    name: ClassVar[str] = "categorize"
    task: ClassVar[str] = "categorize"
    version: ClassVar[int] = 1
    requires: ClassVar[tuple[str, ...]] = ("title", "description", "breadcrumb")
    assigns: ClassVar[tuple[str, ...]] = ("category",)
    headline_metric: ClassVar[str] = "weighted_f1"
    test_params: ClassVar[dict[str, Any]] = {"dev_fraction": 0.25}

    STATE_FILE: ClassVar[str] = "categorizer.json"
    TAXONOMY_FILE: ClassVar[str] = "taxonomy.json"

    def __init__(
        self,
        *,
        taxonomy: str = "",
        method: Method = "auto",
        encoder: str = "auto",
        use_description: bool = True,
        description_chars: int = 1000,
        c: float = 0.5,
        dense_weight: float = 1.0,
        candidates: Literal["leaves", "all"] = "leaves",
        dev_fraction: float = 0.1,
        refit_full: bool = True,
        target_precision: float = 0.95,
        top_k: int = 4,
        min_per_class: float = 20.0,
        unknown_categories: Literal["error", "skip"] = "error",
        finetune_epochs: int = 0,
        finetune_layers: int = 2,
        finetune_learning_rate: float = 1e-4,
        finetune_lora_rank: int = 0,
        seed: int = 13,
    ) -> None:
        self.taxonomy = taxonomy
        self.method = method
        self.encoder = encoder
        self.use_description = use_description
        self.description_chars = description_chars
        self.c = c
        self.dense_weight = dense_weight
        self.candidates = candidates
        self.dev_fraction = dev_fraction
        self.refit_full = refit_full
        self.target_precision = target_precision
        self.top_k = top_k
        self.min_per_class = min_per_class
        self.unknown_categories = unknown_categories
        self.finetune_epochs = finetune_epochs
        self.finetune_layers = finetune_layers
        self.finetune_learning_rate = finetune_learning_rate
        self.finetune_lora_rank = finetune_lora_rank
        self.seed = seed

    # ------------------------------------------------------------------ fit

    def _validate(self) -> None:
        checks = [
            (
                self.method in ("auto", "supervised", "prototypes"),
                "method must be auto, supervised or prototypes",
            ),
            (
                self.encoder in ("none", "auto", *SENTENCE_ENCODERS) or self._checkpoint() != "",
                f"encoder must be none, auto, minilm, use or a checkpoint folder with a config.json; found "
                f"'{self.encoder}'",
            ),
            (self.candidates in ("leaves", "all"), "candidates must be leaves or all"),
            (0.0 <= self.dev_fraction < 0.9, "dev_fraction must be in [0, 0.9)"),
            (0.0 <= self.target_precision <= 1.0, "target_precision must be in [0, 1]"),
            (self.c > 0, "c must be > 0"),
            (self.top_k >= 0, "top_k must be >= 0"),
            (self.unknown_categories in ("error", "skip"), "unknown_categories must be error or skip"),
            (self.finetune_epochs >= 0, "finetune_epochs must be >= 0"),
            (self.finetune_lora_rank >= 0, "finetune_lora_rank must be >= 0 (0 = no LoRA)"),
            (
                self.finetune_epochs == 0 or self.encoder in ("auto", "minilm") or self._checkpoint() != "",
                "fine-tuning (finetune_epochs > 0) works on the minilm encoder or a checkpoint folder; "
                "set encoder=minilm",
            ),
        ]
        self._require(checks)

    def fit(self, products: Sequence[Product], events: Sequence[Event] = ()) -> Self:
        """Learn from products with a category (or, with a taxonomy and none labelled, set up zero-shot)."""
        self._validate()
        labelled = [p for p in products if p.category is not None and p.category.path]
        taxonomy = self._load_taxonomy(labelled)
        labelled, skipped = self._check_categories(labelled, taxonomy)
        candidates = self._candidates(taxonomy, labelled)
        method = self.method
        seen = len({p.category_path for p in labelled})
        if method == "auto":
            method = (
                "supervised" if seen >= 2 and len(labelled) >= self.min_per_class * seen else "prototypes"
            )
        if method == "supervised" and seen < 2:
            raise DataError(
                f"supervised categorisation needs products of at least 2 categories, found "
                f"{seen}; add labelled products or pass a taxonomy "
                "(--taxonomy FILE) for zero-shot",
                stage=self.name,
            )
        self.taxonomy_ = taxonomy
        self.method_ = method
        self.encoder_kind_ = self._encoder_kind(method, taxonomy, products)
        info: dict[str, Any] = {
            "method": method,
            "encoder": self.encoder_kind_,
            "n_products": len(products),
            "n_labelled": len(labelled),
            "n_skipped_unknown_category": skipped,
            "taxonomy": taxonomy.name,
            "taxonomy_size": len(taxonomy),
        }
        self._workdir = tempfile.TemporaryDirectory(prefix="shangpin-categorize-")
        self._sentence: SentenceEncoder | None = None
        if self._checkpoint():
            self._sentence = MiniLMSentenceEncoder.export(
                Path(self._workdir.name), encoder=self._checkpoint()
            )
        elif self.encoder_kind_ != "none":
            self._sentence = create_sentence_encoder(self.encoder_kind_, Path(self._workdir.name))

        self._dense_cache: dict[int, np.ndarray] | None = {}
        dev, train = dev_split(labelled, self.dev_fraction, random.Random(self.seed))
        info.update({"n_train": len(train), "n_dev": len(dev)})
        if self.finetune_epochs and method == "supervised":
            info["finetune"] = self._finetune(train, dev, Path(self._workdir.name))
        # Without a dev split: SVM margins are already on a useful scale; cosine similarities need sharpening
        # (0.05 is the usual temperature of contrastive sentence encoders).
        self.temperature_ = 1.0 if method == "supervised" else 0.05
        self.threshold_ = 0.0
        fit_one = self._fit_supervised if method == "supervised" else self._fit_prototypes
        fit_one(train, candidates)
        if dev:
            scores = self._scores(dev)
            gold = [p.category_path or "" for p in dev]
            self.temperature_ = _fit_temperature(scores, [self._class_index.get(g, -1) for g in gold])
            probs = _softmax(scores / self.temperature_)
            best = probs.argmax(1)
            correct = np.array([self.classes_[b] == g for b, g in zip(best, gold, strict=True)])
            self.threshold_ = _threshold_for_precision(probs.max(1), correct, self.target_precision)
            covered = probs.max(1) >= self.threshold_
            from shangpin.evaluate import category_scores

            dev_metrics = category_scores(gold, [self.classes_[b] for b in best])
            info["dev_metrics"] = {
                **{k: round(v, 2) for k, v in dev_metrics.items()},
                "temperature": round(self.temperature_, 4),
                "threshold": round(self.threshold_, 4),
                "coverage_at_target": round(100 * float(covered.mean()), 2),
                "precision_at_target": round(100 * float(correct[covered].mean()), 2)
                if covered.any()
                else 0.0,
            }
            if self.refit_full:
                fit_one(labelled, candidates)
        elif self.target_precision > 0:
            info["abstention"] = "no dev split (too few labelled products): the model never abstains"
        self._dense_cache = None
        info["n_fitted"] = len(labelled) if dev and self.refit_full else len(train)
        info["summary"] = (
            f"{method} on {info['n_fitted']} labelled products"
            + (
                f", {len(self.classes_)} categories"
                if method == "supervised"
                else f", {len(self.classes_)} candidate categories"
            )
            + (f", sentence encoder {self.encoder_kind_}" if self.encoder_kind_ != "none" else "")
        )
        self.train_info_ = info
        return self

    def _load_taxonomy(self, labelled: Sequence[Product]) -> Taxonomy:
        if self.taxonomy:
            return Taxonomy.load(self.taxonomy)
        if not labelled:
            raise DataError(
                "no product has a category and no taxonomy was given: expected training products with "
                "'category' paths, or a taxonomy (--taxonomy FILE) to categorise zero-shot",
                stage=self.name,
            )
        return Taxonomy.from_paths((p.category_path or "" for p in labelled), name="training data")

    def _check_categories(self, labelled: list[Product], taxonomy: Taxonomy) -> tuple[list[Product], int]:
        unknown = [p for p in labelled if (p.category_path or "") not in taxonomy]
        if not unknown:
            return labelled, 0
        counts = Counter(p.category_path for p in unknown)
        parts = []
        for path, n in counts.most_common(3):
            example = next(p.product_id for p in unknown if p.category_path == path)
            closest = taxonomy.suggest(path or "", 2)
            hint = f"; closest: {', '.join(repr(s) for s in closest)}" if closest else ""
            parts.append(f"'{path}' ({n} products, e.g. id {example}{hint})")
        examples = "; ".join(parts)
        message = (
            f"{len(unknown)} of {len(labelled)} labelled products have a category that is not in the taxonomy "
            f"{taxonomy.name} ({len(counts)} distinct): {examples}"
        )
        if self.unknown_categories == "error":
            raise DataError(
                f"{message}. Fix the paths, pass the taxonomy they come from, or set unknown_categories=skip",
                stage=self.name,
            )
        log.warning("%s; skipped (unknown_categories=skip)", message)
        return [p for p in labelled if (p.category_path or "") in taxonomy], len(unknown)

    def _candidates(self, taxonomy: Taxonomy, labelled: Sequence[Product]) -> list[str]:
        cats = taxonomy.leaves() if self.candidates == "leaves" else list(taxonomy)
        paths = [c.path for c in cats]
        seen = set(paths)
        # A product labelled with an inner category makes that category a candidate too.
        paths += sorted(
            {p.category_path for p in labelled if p.category_path and p.category_path not in seen}
        )
        return paths

    def _checkpoint(self) -> str:
        """The checkpoint folder when `encoder` names one (its sentence vectors play the "minilm" role), else ""."""
        if self.encoder in ("none", "auto", *SENTENCE_ENCODERS) or not self.encoder:
            return ""
        return self.encoder if (Path(self.encoder).expanduser() / "config.json").is_file() else ""

    def _encoder_kind(self, method: str, taxonomy: Taxonomy, products: Sequence[Product]) -> str:
        if self._checkpoint():
            return "minilm"
        if self.encoder != "auto":
            if method == "prototypes" and self.encoder == "none":
                raise ConfigError(
                    "zero/few-shot categorisation (method prototypes) compares sentence vectors; "
                    "set encoder to minilm, use or auto",
                    stage=self.name,
                )
            return self.encoder
        if method == "supervised":
            return "minilm" if self.finetune_epochs else "none"
        chinese = any(has_han(c.path) for c in taxonomy) or any(has_han(p.title) for p in products[:1000])
        return "use" if chinese else "minilm"

    def _finetune(self, train: Sequence[Product], dev: Sequence[Product], folder: Path) -> dict[str, Any]:
        from shangpin.sentence import MiniLMSentenceEncoder
        from shangpin.stages.categorize.finetune import export_finetuned, finetune_encoder

        classes = {c: i for i, c in enumerate(sorted({p.category_path or "" for p in train}))}
        dev = [p for p in dev if p.category_path in classes]
        model, info = finetune_encoder(
            [self._vector_text(p) for p in train],
            [classes[p.category_path or ""] for p in train],
            len(classes),
            dev_texts=[self._vector_text(p) for p in dev],
            dev_labels=[classes[p.category_path or ""] for p in dev],
            encoder=self._checkpoint(),
            trainable_layers=self.finetune_layers,
            epochs=self.finetune_epochs,
            learning_rate=self.finetune_learning_rate,
            lora_rank=self.finetune_lora_rank,
            seed=self.seed,
        )
        export_finetuned(model, folder, encoder=self._checkpoint())
        self._sentence = MiniLMSentenceEncoder(
            folder / MiniLMSentenceEncoder.ONNX_FILE, folder / MiniLMSentenceEncoder.TOKENIZER_FILE
        )
        return info

    def _vector_text(self, product: Product) -> str:
        """What the sentence encoder reads: title, breadcrumb and the description's first 300 characters."""
        return product_text(product, 300 if self.use_description else 0)

    def _dense(self, products: Sequence[Product]) -> np.ndarray:
        """Sentence vectors; during `fit` each product is encoded once, although it is used twice (dev, refit)."""
        assert self._sentence is not None
        cache: dict[int, np.ndarray] | None = getattr(self, "_dense_cache", None)
        missing = [p for p in products if cache is None or id(p) not in cache]
        vecs = self._sentence.encode([self._vector_text(p) for p in missing])
        if cache is None:
            return vecs
        cache.update(zip(map(id, missing), vecs, strict=True))
        return np.stack([cache[id(p)] for p in products]) if products else vecs

    def _fit_supervised(self, products: Sequence[Product], candidates: Sequence[str]) -> None:
        from scipy.sparse import csr_matrix, hstack
        from sklearn.svm import LinearSVC

        self._features = SparseFeatures(self.description_chars, self.use_description)
        x = self._features.fit_transform(products)
        if self._sentence is not None:
            x = hstack([x, csr_matrix(self.dense_weight * self._dense(products))], format="csr")
        y = [p.category_path for p in products]
        svm = LinearSVC(C=self.c, random_state=self.seed).fit(x, y)
        self.classes_ = [str(c) for c in svm.classes_]
        coef = np.asarray(svm.coef_, dtype=np.float32)
        intercept = np.asarray(svm.intercept_, dtype=np.float32)
        if len(self.classes_) == 2:  # sklearn keeps one row for two classes: score(class 1) = -score(class 0)
            coef, intercept = np.vstack([-coef, coef]), np.concatenate([-intercept, intercept])
        n_sparse = self._features.n_features
        # Weights under PRUNE are dropped: 87 % of the MWPD model's, with the same validation scores (134 MB
        # dense float32 -> 38 MB sparse), so the model loads faster and predicts in less memory.
        sparse_part = coef[:, :n_sparse].copy()
        sparse_part[np.abs(sparse_part) < PRUNE] = 0.0
        self._coef = csr_matrix(sparse_part.T)
        self._coef_dense = coef[:, n_sparse:].T.copy() if self._sentence is not None else None
        self._intercept = intercept
        self._prototypes: np.ndarray | None = None
        self._index_classes()

    def _fit_prototypes(self, products: Sequence[Product], candidates: Sequence[str]) -> None:
        assert self._sentence is not None
        self.classes_ = list(candidates)
        self._index_classes()
        names = [category_text(split_path(c)) for c in self.classes_]
        protos = self._sentence.encode(names).astype(np.float32)
        if products:
            vecs = self._dense(products)
            for vec, p in zip(vecs, products, strict=True):
                protos[self._class_index[p.category_path or ""]] += vec
            protos = l2_normalise(protos)
        self._prototypes = protos
        self._features = None  # type: ignore[assignment]

    def _index_classes(self) -> None:
        self._class_index = {c: i for i, c in enumerate(self.classes_)}
        depth = max(len(split_path(c)) for c in self.classes_)
        # _ancestors[k][i]: id of class i's ancestor at level k+1 (-1 when the class is shallower).
        self._ancestors = np.full((depth, len(self.classes_)), -1, dtype=np.int64)
        self._ancestor_paths: list[list[str]] = []
        for k in range(depth):
            ids: dict[str, int] = {}
            for i, c in enumerate(self.classes_):
                names = split_path(c)
                if len(names) > k:
                    self._ancestors[k, i] = ids.setdefault(SEP.join(names[: k + 1]), len(ids))
            self._ancestor_paths.append(list(ids))

    # ------------------------------------------------------------------ predict

    def is_fitted(self) -> bool:
        return hasattr(self, "classes_")

    def _scores(self, products: Sequence[Product]) -> np.ndarray:
        if self._prototypes is not None:
            sims: np.ndarray = self._dense(products) @ self._prototypes.T
            return sims
        scores = np.asarray((self._features.transform(products) @ self._coef).toarray())
        if self._coef_dense is not None:
            scores += self.dense_weight * (self._dense(products) @ self._coef_dense)
        return scores + self._intercept

    def predict(self, products: Sequence[Product]) -> list[CategoryPrediction]:
        self.check_fitted()
        if not products:
            return []
        probs = _softmax(self._scores(products) / self.temperature_)
        k = min(self.top_k + 1, probs.shape[1])
        top = np.argsort(-probs, axis=1, kind="stable")[:, :k]
        out = []
        for i, row in enumerate(top):
            best = int(row[0])
            levels = []
            for lvl in range(self._ancestors.shape[0]):
                anc = self._ancestors[lvl, best]
                if anc < 0:
                    break
                mass = float(probs[i, self._ancestors[lvl] == anc].sum())
                levels.append(ScoredLabel(self._ancestor_paths[lvl][anc], min(1.0, mass)))
            score = float(probs[i, best])
            out.append(
                CategoryPrediction(
                    path=self.classes_[best],
                    score=score,
                    alternatives=tuple(ScoredLabel(self.classes_[j], float(probs[i, j])) for j in row[1:]),
                    abstained=score < self.threshold_,
                    levels=tuple(levels),
                )
            )
        return out

    def annotate(self, products: Sequence[Product], preds: Sequence[CategoryPrediction]) -> None:
        for product, pred in zip(products, preds, strict=True):
            product.category = pred

    # ------------------------------------------------------------------ evaluate

    def evaluate(self, gold: Sequence[Product], pred: Sequence[Product]) -> StageReport:
        from shangpin.evaluate import category_report

        taxonomy = getattr(self, "taxonomy_", None)
        return category_report(self.name, gold, pred, taxonomy)

    # ------------------------------------------------------------------ persistence

    def _save_state(self, path: Path) -> None:
        state = {
            "method": self.method_,
            "encoder": self.encoder_kind_,
            "classes": self.classes_,
            "temperature": self.temperature_,
            "threshold": self.threshold_,
        }
        with atomic_write(path / self.STATE_FILE) as fh:
            json.dump(state, fh, ensure_ascii=False)
        self.taxonomy_.save(path / self.TAXONOMY_FILE)
        if self._prototypes is not None:
            np.save(path / "prototypes.npy", self._prototypes)
        else:
            import joblib

            joblib.dump(self._features, path / "features.joblib")
            from scipy.sparse import save_npz

            save_npz(path / "coef.npz", self._coef)
            np.save(path / "intercept.npy", self._intercept)
            if self._coef_dense is not None:
                np.save(path / "coef_dense.npy", self._coef_dense)
        if self._sentence is not None:
            self._sentence.save(path)

    def _load_state(self, path: Path) -> None:
        state = json.loads((path / self.STATE_FILE).read_text(encoding="utf-8"))
        self.method_ = state["method"]
        self.encoder_kind_ = state["encoder"]
        self.classes_ = state["classes"]
        self.temperature_ = float(state["temperature"])
        self.threshold_ = float(state["threshold"])
        self.taxonomy_ = Taxonomy.load(path / self.TAXONOMY_FILE)
        self._index_classes()
        self._sentence = (
            None if self.encoder_kind_ == "none" else load_sentence_encoder(self.encoder_kind_, path)
        )
        if (path / "prototypes.npy").is_file():
            self._prototypes = np.load(path / "prototypes.npy")
        else:
            import joblib

            self._prototypes = None
            self._features = joblib.load(path / "features.joblib")
            from scipy.sparse import load_npz

            self._coef = load_npz(path / "coef.npz").tocsr()
            self._intercept = np.load(path / "intercept.npy")
            dense_file = path / "coef_dense.npy"
            self._coef_dense = np.load(dense_file) if dense_file.is_file() else None


def _softmax(x: np.ndarray) -> np.ndarray:
    z = x - x.max(axis=1, keepdims=True)
    e = np.exp(z)
    out: np.ndarray = e / e.sum(axis=1, keepdims=True)
    return out


def _fit_temperature(scores: np.ndarray, gold: Sequence[int]) -> float:
    """The softmax temperature that minimises dev log-loss (a grid: robust and fast for one parameter)."""
    idx = np.array(gold)
    known = idx >= 0
    if not known.any():
        return 1.0
    s, g = scores[known], idx[known]
    best_t, best_loss = 1.0, np.inf
    for t in np.geomspace(0.01, 10.0, 61):
        p = _softmax(s / t)
        loss = -float(np.log(np.maximum(p[np.arange(len(g)), g], 1e-12)).mean())
        if loss < best_loss:
            best_t, best_loss = float(t), loss
    return best_t


def _threshold_for_precision(scores: np.ndarray, correct: np.ndarray, target: float) -> float:
    """The lowest score threshold at which the products kept have dev precision >= target (0 = keep all)."""
    if target <= 0 or len(scores) == 0:
        return 0.0
    order = np.argsort(-scores, kind="stable")
    hits = np.cumsum(correct[order])
    precision = hits / np.arange(1, len(order) + 1)
    ok = np.nonzero(precision >= target)[0]
    if len(ok) == 0:
        return float(scores.max()) + 1e-6  # nothing reaches the target: abstain on everything
    return float(scores[order[ok[-1]]])
