"""Attribute prediction: values the text need not state, from text and image, normalised and checked by rules.

For each attribute with a closed value set (colour, gender, season, usage, material, ...; learned from the training
data) a linear model over TF-IDF text features gives a score per value, and, for products with an `image`, a
logistic model over EfficientNet-Lite0 features plus a colour histogram gives another. Fusion is learned: the
fused score is ``softmax(w_text * text_margin + w_image * log p_image - w_unseen * [value unseen by the image
model])``, with the weights fitted to minimise log-loss on out-of-fold predictions of the training products that
have images; text-only and image-only products get their own fitted weights. Fusion stays off for an attribute
where it does not gain at least FUSION_MARGIN out-of-fold macro-F1 (then products with an image are scored from
their text). So `score` is a calibrated probability that the value is right, whichever
inputs the product has. Multi-valued attributes (several materials) use one-vs-rest models and sigmoid scores;
every value scoring at least 0.5 is returned (at least the best one).

After the models, per product: values the extractor read from the text win (`source: "text"`), flagged
`conflict` when the model is at least `conflict_threshold` sure of another value; every value is mapped to its
canonical form (`normalize.Normalizer`); business rules (`rules.RuleSet`) lower, replace or reject values and say
why. Given input values of a predicted attribute are never read, so evaluation on gold-labelled copies is honest.
"""

from __future__ import annotations

import json
import logging
import random
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np

from shangpin._util import atomic_write
from shangpin.errors import ConfigError, DataError
from shangpin.normalize import Normalizer, value_key
from shangpin.records import AttributeValue, Event, Product
from shangpin.rules import RuleSet
from shangpin.stages.base import Stage, StageReport, dev_split
from shangpin.stages.predict_attributes.features import TextFeatures, has_text, input_mask
from shangpin.text import ValuesPattern

log = logging.getLogger(__name__)

Prediction = dict[str, AttributeValue]
_EPS = 1e-4
FUSION_MARGIN = 1.0
"""Out-of-fold macro-F1 points that fusion must gain over text alone before it is used for an attribute."""


class AttributePredictor(Stage[Prediction]):
    """Closed-set attribute values from text and image, merged with extraction, normalised, rule-checked.

    Args:
        attributes: the attributes to predict (default: every attribute of the training data with a closed value
            set, see `min_products`, `min_count`, `coverage`).
        inputs: given attributes used as features (default: every given attribute that is not predicted); with
            `attributes` left to the default, the attributes named here are not predicted.
        min_products: an attribute needs this many labelled products to be predicted.
        min_count: a value needs this many training products to become a class.
        coverage: the classes must cover this share of labelled products (an open set such as brand does not).
        max_values: at most this many classes per attribute.
        multi_valued: attributes whose products carry several values (default: detected, when at least 5 % of
            labelled products list more than one).
        image: "auto" (use images when at least `min_images` labelled products have one), "on" or "off".
        min_images: labelled products with images needed to train the image model.
        char_ngrams: add title character 2-5 grams to the text features.
        mentions: add, per attribute, one feature per value saying whether the title names it.
        select_features: also try, per attribute, the plain profile (no given-attribute block, no mentions) and
            keep the better on the dev split.
        C: regularisation of the linear text model (larger = less).
        class_weight: "auto" (choose none, "sqrt" or "balanced" per attribute on the dev split, by macro-F1),
            "balanced", "sqrt" (square root of the balanced weights) or "none".
        threshold: predicted values scoring below it are not output.
        conflict_threshold: a text value is flagged `conflict` when the model gives another value at least this.
        synonyms_file: a synonym/unit file (see `shangpin.normalize`); read at training, kept in the model.
        rules_file: a business rules file (see `shangpin.rules`); read at training, kept in the model (edit
            rules.json in the model folder to change them without retraining).
        taxonomy_path: a Shopify taxonomy (folder or saved file): the values of its attribute with the same name
            ("Color" <-> "color") join that attribute's canonical vocabulary; spellings seen in training win.
        dev_fraction: share of labelled products held out to choose the class weighting and fit temperatures.
        folds: folds of the out-of-fold predictions that fit the fusion weights.
        seed: seeds the dev split and the folds.
    """

    name: ClassVar[str] = "predict_attributes"
    task: ClassVar[str] = "attributes"
    version: ClassVar[int] = 1
    requires: ClassVar[tuple[str, ...]] = ()
    assigns: ClassVar[tuple[str, ...]] = ("predicted",)
    headline_metric: ClassVar[str] = "macro_f1"
    test_params: ClassVar[dict[str, Any]] = {"min_products": 10, "image": "off"}
    MODELS_FILE: ClassVar[str] = "models.joblib"
    STATE_FILE: ClassVar[str] = "state.json"
    RULES_FILE: ClassVar[str] = "rules.json"

    def __init__(
        self,
        *,
        attributes: list[str] | None = None,
        inputs: list[str] | None = None,
        min_products: int = 20,
        min_count: int = 2,
        coverage: float = 0.8,
        max_values: int = 500,
        multi_valued: list[str] | None = None,
        image: str = "auto",
        min_images: int = 20,
        char_ngrams: bool = False,
        mentions: bool = True,
        select_features: bool = True,
        C: float = 1.0,
        class_weight: str = "auto",
        threshold: float = 0.0,
        conflict_threshold: float = 0.9,
        synonyms_file: str = "",
        rules_file: str = "",
        taxonomy_path: str = "",
        dev_fraction: float = 0.1,
        folds: int = 5,
        seed: int = 13,
    ) -> None:
        self.attributes = attributes
        self.inputs = inputs
        self.min_products = min_products
        self.min_count = min_count
        self.coverage = coverage
        self.max_values = max_values
        self.multi_valued = multi_valued
        self.image = image
        self.min_images = min_images
        self.char_ngrams = char_ngrams
        self.mentions = mentions
        self.select_features = select_features
        self.C = C
        self.class_weight = class_weight
        self.threshold = threshold
        self.conflict_threshold = conflict_threshold
        self.synonyms_file = synonyms_file
        self.rules_file = rules_file
        self.taxonomy_path = taxonomy_path
        self.dev_fraction = dev_fraction
        self.folds = folds
        self.seed = seed

    def _validate(self) -> None:
        self._require(
            [
                (self.min_products >= 2, "min_products must be >= 2"),
                (self.min_count >= 1, "min_count must be >= 1"),
                (0 < self.coverage <= 1, "coverage must be in (0, 1]"),
                (self.max_values >= 2, "max_values must be >= 2"),
                (
                    self.image in ("auto", "on", "off"),
                    f"image must be 'auto', 'on' or 'off', found {self.image!r}",
                ),
                (self.min_images >= 4, "min_images must be >= 4"),
                (self.C > 0, "C must be > 0"),
                (
                    self.class_weight in ("auto", "balanced", "sqrt", "none"),
                    f"class_weight must be 'auto', 'balanced', 'sqrt' or 'none', found {self.class_weight!r}",
                ),
                (0 <= self.threshold <= 1, "threshold must be in [0, 1]"),
                (0 < self.conflict_threshold <= 1, "conflict_threshold must be in (0, 1]"),
                (0 <= self.dev_fraction < 0.5, "dev_fraction must be in [0, 0.5)"),
                (self.folds >= 2, "folds must be >= 2"),
            ]
        )

    # ------------------------------------------------------------------ training
    def fit(self, products: Sequence[Product], events: Sequence[Event] = ()) -> Self:
        """Learn the vocabulary, the text and image models per attribute, and the fusion weights."""
        self._validate()
        t0 = time.perf_counter()
        self.normalizer_ = (
            Normalizer.from_file(Path(self.synonyms_file)) if self.synonyms_file else Normalizer()
        )
        self.normalizer_.learn(
            (name, v)
            for p in products
            for name, av in p.attributes.items()
            if av is not None
            for v in (av.value, *av.alternatives)
        )
        from_taxonomy = self._taxonomy_vocabulary(products)
        self.ruleset_ = RuleSet.from_file(Path(self.rules_file)) if self.rules_file else RuleSet()
        self.targets_: dict[str, dict[str, Any]] = {}
        skipped = self._choose_targets(products)
        if not self.targets_:
            raise DataError(
                f"no attribute to predict among {len(products)} training products: an attribute needs "
                f">= {self.min_products} labelled products whose values (each seen >= {self.min_count} times) "
                f"cover >= {self.coverage:.0%} of them; found: {skipped or 'no attributes at all'}. Label more "
                "products, lower min_products/min_count/coverage, or name the attributes with attributes=[...]",
                stage=self.name,
            )
        given = {a for p in products for a, av in p.attributes.items() if av is not None}
        # Category -> the predicted attributes its training products carry; other categories get all of them.
        self.schema_: dict[str, list[str]] = {}
        for p in products:
            if p.category_path:
                names = self.schema_.setdefault(p.category_path, [])
                names.extend(
                    a
                    for a, av in p.attributes.items()
                    if av is not None and a in self.targets_ and a not in names
                )
        inputs = self.inputs if self.inputs is not None else sorted(given - set(self.targets_))
        clash = sorted(set(inputs) & set(self.targets_))
        if clash:
            raise ConfigError(
                f"inputs {clash} are also predicted; an attribute cannot be both", stage=self.name
            )
        self.features_ = TextFeatures(inputs, char_ngrams=self.char_ngrams)
        texted = [p for p in products if has_text(p)]
        X_all = self.features_.fit_transform(texted) if texted else None
        row_of = {id(p): i for i, p in enumerate(texted)}
        images = self._image_vectors(products)
        info: dict[str, Any] = {
            "n_products": len(products),
            "inputs": inputs,
            "not_predicted": skipped,
            "taxonomy_vocabulary": from_taxonomy,
            "attributes": {},
        }
        for name, target in self.targets_.items():
            # One generator per attribute: its dev split does not depend on which other attributes are predicted.
            rng = random.Random(f"{self.seed}:{name}")
            labelled = [p for p in products if self._gold(p, name)]
            y = self._targets(labelled, name)
            text_rows = [i for i, p in enumerate(labelled) if id(p) in row_of]
            a_info: dict[str, Any] = {"n_labelled": len(labelled), "classes": len(target["classes"])}
            if X_all is not None and text_rows and X_all.shape[1]:
                X = X_all[[row_of[id(labelled[i])] for i in text_rows]]
                a_info.update(self._fit_text(name, X, [labelled[i] for i in text_rows], y[text_rows], rng))
            img_rows = [i for i, p in enumerate(labelled) if p.image and images.get(p.image) is not None]
            if images and len(img_rows) >= self.min_images:
                a_info.update(self._fit_image(name, labelled, y, img_rows, images, X_all, row_of, rng))
            info["attributes"][name] = a_info
        info["seconds"] = round(time.perf_counter() - t0, 1)
        info["summary"] = self._summary(info)
        self.train_info_ = info
        return self

    def _taxonomy_vocabulary(self, products: Sequence[Product]) -> dict[str, int]:
        """Add the taxonomy's values of each training attribute it knows; return attribute -> values added."""
        if not self.taxonomy_path:
            return {}
        from shangpin.taxonomy import Taxonomy

        taxonomy = Taxonomy.load(self.taxonomy_path)
        added: dict[str, int] = {}
        for name in sorted({a for p in products for a in p.attributes}):
            handle = taxonomy.attribute_handle(name)
            if handle is not None and (values := taxonomy.attribute_values(handle)):
                self.normalizer_.add_vocabulary(name, values)
                added[name] = len(values)
        if not added:
            log.warning(
                "stage '%s': no training attribute is named like an attribute of %s; its values are not used",
                self.name,
                self.taxonomy_path,
            )
        return added

    def _gold(self, product: Product, name: str) -> list[str]:
        """Canonical gold values of `name` that are classes of the attribute."""
        av = product.attributes.get(name)
        if av is None:
            return []
        known = self.targets_[name]["index"] if name in self.targets_ else None
        out: list[str] = []
        for v in (av.value, *av.alternatives):
            c = self.normalizer_.canonical(name, v)
            if (known is None or c in known) and c not in out:
                out.append(c)
        return out

    def _choose_targets(self, products: Sequence[Product]) -> dict[str, str]:
        """Fill `targets_` with the closed-set attributes; return why the others were skipped."""
        counts: dict[str, Counter[str]] = {}
        n_labelled: Counter[str] = Counter()
        n_multi: Counter[str] = Counter()
        for p in products:
            for name, av in p.attributes.items():
                if av is None or (self.attributes is not None and name not in self.attributes):
                    continue
                if self.attributes is None and self.inputs is not None and name in self.inputs:
                    continue  # named as an input: a feature, never a target
                vals = {self.normalizer_.canonical(name, v) for v in (av.value, *av.alternatives)}
                n_labelled[name] += 1
                n_multi[name] += len(vals) > 1
                counts.setdefault(name, Counter()).update(vals)
        skipped: dict[str, str] = {}
        for name in self.attributes if self.attributes is not None else sorted(counts):
            if name not in counts:
                skipped[name] = "no labelled product"
                continue
            classes = [v for v, n in counts[name].most_common(self.max_values) if n >= self.min_count]
            multi = (
                name in self.multi_valued
                if self.multi_valued is not None
                else n_multi[name] >= 0.05 * n_labelled[name]
            )
            index = set(classes)
            covered = sum(
                1
                for p in products
                if (av := p.attributes.get(name)) is not None
                and any(self.normalizer_.canonical(name, v) in index for v in (av.value, *av.alternatives))
            )
            if n_labelled[name] < self.min_products:
                skipped[name] = f"{n_labelled[name]} labelled products"
            elif len(classes) < 2:
                skipped[name] = f"{len(classes)} values seen >= {self.min_count} times (an open value set?)"
            elif covered < self.coverage * n_labelled[name]:
                skipped[name] = (
                    f"open value set ({covered / n_labelled[name]:.0%} of products in frequent values)"
                )
            else:
                self.targets_[name] = {
                    "classes": classes,
                    "index": {c: i for i, c in enumerate(classes)},
                    "multi": multi,
                }
        if self.attributes is not None and skipped:
            raise DataError(
                f"cannot predict {sorted(skipped)}: " + "; ".join(f"{k}: {v}" for k, v in skipped.items()),
                stage=self.name,
            )
        if skipped:
            log.info(
                "stage '%s': %d attributes not predicted (too few labels or an open value set): %s",
                self.name,
                len(skipped),
                ", ".join(sorted(skipped)),
            )
            for name, why in skipped.items():
                log.debug("stage '%s': attribute '%s' not predicted (%s)", self.name, name, why)
        return skipped

    def _targets(self, labelled: Sequence[Product], name: str) -> np.ndarray:
        """Class index per product (single-valued) or a 0/1 matrix (multi-valued)."""
        t = self.targets_[name]
        if t["multi"]:
            y = np.zeros((len(labelled), len(t["classes"])), dtype=np.int8)
            for i, p in enumerate(labelled):
                for v in self._gold(p, name):
                    y[i, t["index"][v]] = 1
            return y
        return np.array([t["index"][self._gold(p, name)[0]] for p in labelled])

    # --- text model
    def _text_model(self, multi: bool, class_weight: str, y: np.ndarray) -> Any:
        from sklearn.multiclass import OneVsRestClassifier
        from sklearn.svm import LinearSVC

        weights: Any = None
        if class_weight == "balanced" or (class_weight == "sqrt" and multi):
            weights = "balanced"
        elif class_weight == "sqrt":  # halfway (geometrically) between none and balanced
            values, counts = np.unique(y, return_counts=True)
            weights = {
                int(v): float(np.sqrt(len(y) / (len(values) * c)))
                for v, c in zip(values, counts, strict=True)
            }
        svc = LinearSVC(C=self.C, class_weight=weights, max_iter=5000)
        return OneVsRestClassifier(svc) if multi else svc

    def _text_matrix(
        self, name: str, X: Any, products: Sequence[Product], profile: dict[str, bool] | None = None
    ) -> Any:
        """The attribute's view of the shared TF-IDF matrix under its feature profile (chosen on dev):
        "inputs" keeps the given-attribute block, "mentions" adds one column per value of the attribute, 1 where
        the title names it. A value named in the title is strong evidence for colour (fashion dev macro-F1 79.95
        -> 81.93), but for gender both extras cost a little (docs/BENCHMARKS.md), hence the per-attribute choice."""
        from scipy.sparse import csr_matrix, diags, hstack

        t = self.targets_[name]
        profile = (
            profile if profile is not None else t.get("profile", {"inputs": True, "mentions": self.mentions})
        )
        if not profile["inputs"]:
            if "_input_mask" not in self.__dict__:
                self._input_mask = input_mask(self.features_)
            X = (X @ diags(self._input_mask)).tocsr()
        if not profile["mentions"]:
            return X
        if "patterns" not in t:
            # Word boundaries that hold in Chinese titles too (红色 inside 女装红色连衣裙), see shangpin.text.
            t["patterns"] = [ValuesPattern([c.casefold()]) for c in t["classes"]]
        rows, cols = [], []
        for i, p in enumerate(products):
            title = p.title.casefold()
            for k, pattern in enumerate(t["patterns"]):
                if pattern.search(title):
                    rows.append(i)
                    cols.append(k)
        M = csr_matrix(
            (np.ones(len(rows), dtype=np.float32), (rows, cols)), shape=(len(products), len(t["classes"]))
        )
        return hstack([X, M], format="csr")

    def _profiles(self) -> list[dict[str, bool]]:
        full = {"inputs": True, "mentions": self.mentions}
        return [full, {"inputs": False, "mentions": False}] if self.select_features else [full]

    def _fit_text(
        self, name: str, X: Any, products: Sequence[Product], y: np.ndarray, rng: random.Random
    ) -> dict[str, Any]:
        """Choose the feature profile and class weighting on dev (macro-F1), fit the temperature there, refit."""
        t = self.targets_[name]
        idx = list(range(X.shape[0]))
        dev, train = dev_split(idx, self.dev_fraction, rng)
        weightings = ["none", "sqrt", "balanced"] if self.class_weight == "auto" else [self.class_weight]
        profiles = self._profiles()
        chosen: tuple[dict[str, bool], str] = (profiles[0], weightings[0])
        best, dev_scores = -1.0, None
        if dev and len(np.unique(y[train], axis=0)) >= 2:
            for profile in profiles:
                Xp = self._text_matrix(name, X, products, profile)
                for cw in weightings:
                    model = self._text_model(t["multi"], cw, y[train]).fit(Xp[train], y[train])
                    margins = _margins(model, Xp[dev], len(t["classes"]))
                    f1 = _macro_f1(y[dev], margins, t["multi"])
                    if f1 > best:
                        chosen, best, dev_scores = (profile, cw), f1, margins
        t["profile"], t["class_weight"] = chosen
        t["text"] = self._text_model(t["multi"], t["class_weight"], y).fit(
            self._text_matrix(name, X, products), y
        )
        if dev_scores is not None:
            t["t_text"] = _fit_weights([dev_scores], y[dev], t["multi"])
        else:
            t["t_text"] = [1.0] + ([0.0] if t["multi"] else [])
        return {
            "class_weight": t["class_weight"],
            "profile": t["profile"],
            "dev_macro_f1_text": round(100 * best, 2) if best >= 0 else None,
        }

    # --- image model
    def _image_vectors(self, products: Sequence[Product]) -> dict[str, np.ndarray | None]:
        """Image path -> feature vector (None if unreadable), for the labelled products with an image."""
        paths = sorted({p.image for p in products if p.image})
        if self.image == "off" or not paths or (self.image == "auto" and len(paths) < self.min_images):
            self.image_encoder_ = None
            return {}
        from shangpin.images import ImageEncoder

        self._workdir = tempfile.TemporaryDirectory(prefix="shangpin-img-")
        self.image_encoder_ = ImageEncoder.export(Path(self._workdir.name))
        return dict(zip(paths, self._encode_images(paths), strict=True))

    def _encode_images(self, paths: Sequence[str]) -> list[np.ndarray | None]:
        assert self.image_encoder_ is not None
        feats, colours = self.image_encoder_.encode_with_colour(paths)
        ok = np.any(feats, axis=1)
        both = np.hstack([feats, colours * 4.0])  # the histogram sums to 1; x4 puts it on the features' scale
        return [both[i] if ok[i] else None for i in range(len(paths))]

    def _image_model(self, multi: bool) -> Any:
        from sklearn.linear_model import LogisticRegression
        from sklearn.multiclass import OneVsRestClassifier

        lr = LogisticRegression(C=1.0, max_iter=2000, class_weight="balanced")
        return OneVsRestClassifier(lr) if multi else lr

    def _image_parts(
        self, model: Any, Z: np.ndarray, n_classes: int, multi: bool
    ) -> tuple[np.ndarray, np.ndarray]:
        """(log-probabilities over all classes, -1 where the image model never saw the class, else 0).

        Rare values are often missing from the few products with images. Such a class gets the row's mean
        log-probability (neutral), and the fusion learns from the second part how much to distrust it: on fashion
        colour a strong penalty helps (the products with photos come from a few common colours), on usage none.
        """
        proba = np.clip(model.predict_proba(Z), _EPS, 1 - _EPS)
        seen = np.asarray(model.classes_)
        logp = np.repeat(np.log(proba).mean(axis=1, keepdims=True), n_classes, axis=1)
        logp[:, seen] = np.log(proba)
        unseen = np.zeros((Z.shape[0], n_classes))
        if not multi:
            unseen[:] = -1.0
            unseen[:, seen] = 0.0
        return logp, unseen

    def _fit_image(
        self,
        name: str,
        labelled: Sequence[Product],
        y: np.ndarray,
        img_rows: list[int],
        images: dict[str, np.ndarray | None],
        X_all: Any,
        row_of: dict[int, int],
        rng: random.Random,
    ) -> dict[str, Any]:
        t = self.targets_[name]
        K = len(t["classes"])
        Z = np.vstack([_vector(images, labelled[i].image) for i in img_rows])
        yz = y[img_rows]
        # Out-of-fold image probabilities and text margins for the products with images.
        order = list(range(len(img_rows)))
        rng.shuffle(order)
        folds = [sorted(order[f :: self.folds]) for f in range(self.folds)]
        p_img = np.zeros((len(img_rows), K))  # log-probabilities
        u_img = np.zeros((len(img_rows), K))
        filled = np.zeros(len(img_rows), dtype=bool)
        m_text = np.zeros((len(img_rows), K))
        has_t = np.array([id(labelled[i]) in row_of for i in img_rows]) & ("text" in t)
        text_idx = np.array([row_of.get(id(p), -1) for p in labelled])
        for fold in folds:
            rest = sorted(set(range(len(img_rows))) - set(fold))
            if len(np.unique(yz[rest], axis=0)) < 2:
                continue
            fold_model = self._image_model(t["multi"]).fit(Z[rest], yz[rest])
            p_img[fold], u_img[fold] = self._image_parts(fold_model, Z[fold], K, t["multi"])
            filled[fold] = True
            if has_t.any():
                held = {img_rows[i] for i in fold}
                keep = [i for i in range(len(labelled)) if text_idx[i] >= 0 and i not in held]
                Xk = self._text_matrix(name, X_all[text_idx[keep]], [labelled[i] for i in keep])
                model = self._text_model(t["multi"], t["class_weight"], y[keep]).fit(Xk, y[keep])
                rows = [i for i in fold if has_t[i]]
                if rows:
                    chosen = [img_rows[i] for i in rows]
                    Xr = self._text_matrix(name, X_all[text_idx[chosen]], [labelled[i] for i in chosen])
                    m_text[rows] = _margins(model, Xr, K)
        t["image_model"] = self._image_model(t["multi"]).fit(Z, yz)
        image_parts = [p_img[filled], u_img[filled]]
        t["t_image"] = _fit_weights(image_parts, yz[filled], t["multi"])
        out: dict[str, Any] = {"n_images": len(img_rows)}
        both = filled & has_t
        if both.sum() >= 4:
            parts = [m_text[both], p_img[both], u_img[both]]
            t["t_fused"] = _fit_weights(parts, yz[both], t["multi"])
            fused = _probabilities(_combine(t["t_fused"], parts), t["multi"])
            image_only = _probabilities(_combine(t["t_image"], [p_img[both], u_img[both]]), t["multi"])
            oof = {
                "text": round(100 * _macro_f1(yz[both], m_text[both], t["multi"], 0.0), 2),
                "image": round(100 * _macro_f1(yz[both], image_only, t["multi"], 0.5), 2),
                "fused": round(100 * _macro_f1(yz[both], fused, t["multi"], 0.5), 2),
            }
            out["oof_macro_f1"] = oof
            out["fusion_weights"] = [round(w, 3) for w in t["t_fused"]]
            # The weights minimise log-loss, which can trade rare values for confidence on common ones; fuse only
            # where it clearly gains out-of-fold macro-F1 (measured: usage on fashion lost 20 points with it, and
            # a 0.5-point out-of-fold gain on 190 products turned into a loss on dev).
            out["fusion"] = oof["fused"] >= oof["text"] + FUSION_MARGIN
            if not out["fusion"]:
                del t["t_fused"]
        return out

    def _summary(self, info: dict[str, Any]) -> str:
        parts = []
        for name, a in info["attributes"].items():
            s = f"{name}: {a['classes']} values from {a['n_labelled']} products"
            if a.get("dev_macro_f1_text") is not None:
                s += f", dev macro-F1 {a['dev_macro_f1_text']} (text)"
            if "oof_macro_f1" in a:
                o = a["oof_macro_f1"]
                s += f", on {a['n_images']} with images text {o['text']} / image {o['image']} / fused {o['fused']}"
                s += "" if a.get("fusion") else " (fusion off)"
            parts.append(s)
        return "; ".join(parts)

    # ------------------------------------------------------------------ prediction
    def is_fitted(self) -> bool:
        return hasattr(self, "targets_")

    def _scores(self, products: Sequence[Product]) -> dict[str, np.ndarray]:
        """Attribute -> (n, K) calibrated scores (rows of zeros where the product has neither text nor image)."""
        texted = [i for i, p in enumerate(products) if has_text(p)]
        X = self.features_.transform([products[i] for i in texted]) if texted else None
        img: dict[int, np.ndarray] = {}
        if self.image_encoder_ is not None:
            paths = [(i, p.image) for i, p in enumerate(products) if p.image]
            if paths:
                for (i, _), z in zip(paths, self._encode_images([p for _, p in paths]), strict=True):
                    if z is not None:
                        img[i] = z
        out = {}
        for name, t in self.targets_.items():
            K = len(t["classes"])
            scores = np.zeros((len(products), K))
            margins = np.zeros((len(products), K))
            text_ok = np.zeros(len(products), dtype=bool)
            if X is not None and "text" in t:
                Xa = self._text_matrix(name, X, [products[i] for i in texted])
                margins[texted] = _margins(t["text"], Xa, K)
                text_ok[texted] = True
            logp = np.zeros((len(products), K))
            unseen = np.zeros((len(products), K))
            img_ok = np.zeros(len(products), dtype=bool)
            if img and "image_model" in t:
                rows = sorted(img)
                Z = np.vstack([img[i] for i in rows])
                logp[rows], unseen[rows] = self._image_parts(t["image_model"], Z, K, t["multi"])
                img_ok[rows] = True
            for mask, weights, parts in (
                (text_ok & ~img_ok, t.get("t_text"), [margins]),
                (~text_ok & img_ok, t.get("t_image"), [logp, unseen]),
                (text_ok & img_ok, t.get("t_fused") or t.get("t_text"), [margins, logp, unseen]),
            ):
                if mask.any() and weights is not None:
                    used = [p[mask] for p in parts][: len(weights) - (1 if t["multi"] else 0)]
                    scores[mask] = _probabilities(_combine(weights, used), t["multi"])
            out[name] = scores
        return out

    def predict(self, products: Sequence[Product]) -> list[Prediction]:
        """Per product: attribute -> AttributeValue (merged with extracted values, normalised, rule-checked)."""
        self.check_fitted()
        if not products:
            return []
        scores = self._scores(products)
        return [self._finish(p, {n: s[i] for n, s in scores.items()}) for i, p in enumerate(products)]

    def _model_values(self, name: str, row: np.ndarray) -> list[tuple[str, float]]:
        """(value, score) best first: every value >= 0.5 (at least one) for multi-valued attributes, else the best."""
        t = self.targets_[name]
        order = np.argsort(-row, kind="stable")
        if not row.any():
            return []
        if t["multi"]:
            return [(t["classes"][k], float(row[k])) for k in order if row[k] >= 0.5] or [
                (t["classes"][order[0]], float(row[order[0]]))
            ]
        return [(t["classes"][order[0]], float(row[order[0]]))]

    def _finish(self, product: Product, rows: dict[str, np.ndarray]) -> Prediction:
        out: Prediction = {}
        category = product.category_path
        for name, av in product.extracted.items():  # text values first: they win unless contradicted
            canonical = self.normalizer_.canonical(name, av.value)
            out[name] = replace(av, canonical=canonical if canonical != av.value else None)
        applicable = self.schema_.get(category or "")
        for name, row in rows.items():
            if applicable is not None and name not in applicable:
                continue
            found = self._model_values(name, row)
            if not found:
                continue
            value, score = found[0]
            text = out.get(name)
            if text is not None:
                if value_key(text.canonical or text.value) == value_key(value):
                    out[name] = replace(text, score=max(text.score, score))
                elif score >= self.conflict_threshold:
                    out[name] = replace(text, conflict=True, alternatives=(value,))
                continue
            if score < self.threshold:
                continue
            out[name] = self._checked(
                AttributeValue(
                    name=name,
                    value=value,
                    score=round(score, 6),
                    source="predicted",
                    values=tuple(v for v, _ in found) if len(found) > 1 else (),
                ),
                category,
                row,
            )
        for name, av in list(out.items()):
            if av.source == "text":
                out[name] = self._checked(av, category, None)
        for rule in self.ruleset_.required(category):
            if rule.attribute not in out:
                if rule.default is not None:
                    out[rule.attribute] = AttributeValue(
                        rule.attribute,
                        rule.default,
                        1.0,
                        "rule",
                        rule=f"required in {rule.category}: default",
                    )
                else:
                    out[rule.attribute] = AttributeValue(
                        rule.attribute, "", 0.0, "rule", rule=f"required in {rule.category}: no value found"
                    )
        return out

    def _checked(self, av: AttributeValue, category: str | None, row: np.ndarray | None) -> AttributeValue:
        """Apply the business rules to one value; `row` (model scores) lets a rejected prediction fall back."""
        rules = self.ruleset_.for_product(av.name, category)
        if not rules:
            return av
        # Rules speak the canonical vocabulary: "Men's" read from a title is checked as "Men".
        values = [self.normalizer_.canonical(av.name, v) for v in (av.values or (av.value,))]
        original = av.value
        reasons: list[str] = []
        for rule in rules:
            if (why := rule.together(values)) is not None:
                reasons.append(why)
                if rule.action == "reject":
                    values = values[:1] + [v for v in values[1:] if rule.together([values[0], v]) is None]
                else:
                    av = replace(av, score=av.score * rule.penalty)
            bad = [(v, why) for v in values if (why := rule.violation(v)) is not None]
            if not bad:
                continue
            reasons.extend(why for _, why in bad)
            if rule.action == "lower":
                av = replace(av, score=av.score * rule.penalty)
                continue
            keep = [v for v in values if rule.violation(v) is None]
            if not keep and av.source == "predicted" and row is not None:
                t = self.targets_[av.name]
                for k in np.argsort(-row, kind="stable"):
                    candidate = t["classes"][k]
                    if all(r.violation(candidate) is None for r in rules):
                        keep = [candidate]
                        av = replace(av, score=round(float(row[k]), 6))
                        break
            if not keep:
                return replace(av, rejected=True, rule="; ".join(reasons))
            values = keep
        if av.source == "text":  # a text value stays the span it is; only its score and reason change
            return replace(av, rule="; ".join(reasons) if reasons else None)
        return replace(
            av,
            value=values[0] if values[0] != self.normalizer_.canonical(av.name, original) else original,
            values=tuple(values) if len(values) > 1 else (),
            rule="; ".join(reasons) if reasons else None,
        )

    def annotate(self, products: Sequence[Product], preds: Sequence[Prediction]) -> None:
        for p, pred in zip(products, preds, strict=True):
            p.predicted = dict(pred)

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, gold: Sequence[Product], pred: Sequence[Product]) -> StageReport:
        """Per attribute: accuracy and macro-F1 (sklearn's, over the values in gold or predicted) on the products
        with a gold value; the headline is the mean macro-F1 over attributes. Values compare in canonical form."""
        from sklearn.metrics import f1_score

        report = StageReport(stage=self.name)
        rows = []
        f1s = []
        for name in self.targets_:
            y_true, y_pred = [], []
            for g, p in zip(gold, pred, strict=True):
                av = g.attributes.get(name)
                if av is None:
                    continue
                gold_values = {
                    value_key(self.normalizer_.canonical(name, v)) for v in (av.value, *av.alternatives)
                }
                got = p.predicted.get(name)
                guess = "" if got is None or got.rejected else value_key(got.canonical or got.value)
                y_true.append(guess if guess in gold_values else sorted(gold_values)[0])
                y_pred.append(guess or "<none>")
            if not y_true:
                continue
            acc = float(np.mean([a == b for a, b in zip(y_true, y_pred, strict=True)]))
            f1 = float(f1_score(y_true, y_pred, average="macro", zero_division=0))
            f1s.append(f1)
            rows.append(
                {
                    "attribute": name,
                    "products": len(y_true),
                    "accuracy": round(100 * acc, 2),
                    "macro_f1": round(100 * f1, 2),
                }
            )
            report.metrics[f"{_slug(name)}_accuracy"] = round(100 * acc, 2)
            report.metrics[f"{_slug(name)}_macro_f1"] = round(100 * f1, 2)
        report.metrics["macro_f1"] = round(100 * float(np.mean(f1s)), 2) if f1s else 0.0
        report.tables["Attribute prediction per attribute"] = rows
        report.notes.append(
            "macro-F1 averages the F1 of each value over the values present in gold or predicted (sklearn's "
            "average='macro'); a product with no predicted value counts as wrong."
        )
        return report

    # ------------------------------------------------------------------ persistence
    def _save_state(self, path: Path) -> None:
        import joblib

        state = {
            "targets": {
                n: {k: v for k, v in t.items() if k not in ("text", "image_model", "index", "patterns")}
                for n, t in self.targets_.items()
            },
            "normalizer": self.normalizer_.to_dict(),
            "schema": self.schema_,
            "image": self.image_encoder_ is not None,
        }
        with atomic_write(path / self.STATE_FILE) as fh:
            json.dump(state, fh, ensure_ascii=False)
        with atomic_write(path / self.RULES_FILE) as fh:
            json.dump(self.ruleset_.to_list(), fh, ensure_ascii=False, indent=2)
        models = {n: {k: t[k] for k in ("text", "image_model") if k in t} for n, t in self.targets_.items()}
        joblib.dump({"features": self.features_, "models": models}, path / self.MODELS_FILE)
        if self.image_encoder_ is not None:
            self.image_encoder_.save(path)

    def _load_state(self, path: Path) -> None:
        import joblib

        state = json.loads((path / self.STATE_FILE).read_text(encoding="utf-8"))
        saved = joblib.load(path / self.MODELS_FILE)
        self.features_ = saved["features"]
        self.targets_ = {}
        for name, t in state["targets"].items():
            t["index"] = {c: i for i, c in enumerate(t["classes"])}
            t.update(saved["models"].get(name, {}))
            self.targets_[name] = t
        self.normalizer_ = Normalizer.from_dict(state["normalizer"])
        self.schema_ = state["schema"]
        self.ruleset_ = RuleSet.from_list(json.loads((path / self.RULES_FILE).read_text(encoding="utf-8")))
        if state["image"]:
            from shangpin.images import load_image_encoder

            self.image_encoder_ = load_image_encoder(path)
        else:
            self.image_encoder_ = None


# ---------------------------------------------------------------------- helpers
def _vector(images: dict[str, np.ndarray | None], path: str | None) -> np.ndarray:
    v = images.get(path or "")
    if v is None:
        raise KeyError(path)
    return v


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name.casefold()).strip("_")


def _margins(model: Any, X: Any, n_classes: int) -> np.ndarray:
    """Decision margins (n, K) in class order, also for two classes (sklearn returns one column there)."""
    d = np.asarray(model.decision_function(X), dtype=np.float64)
    if d.ndim == 1:
        d = np.column_stack([-d / 2, d / 2])
    out = np.full((d.shape[0], n_classes), -10.0)
    classes = getattr(model, "classes_", None)
    if (
        classes is not None
        and len(classes) == d.shape[1]
        and np.issubdtype(np.asarray(classes).dtype, np.integer)
    ):
        out[:, np.asarray(classes)] = d
    else:
        out[:, : d.shape[1]] = d
    return out


def _combine(weights: Sequence[float], parts: Sequence[np.ndarray]) -> np.ndarray:
    """w_1 * part_1 + ... (+ bias, the extra last weight for multi-valued attributes)."""
    z = np.zeros_like(parts[0], dtype=np.float64)
    for w, p in zip(weights, parts, strict=False):
        z = z + w * p
    if len(weights) > len(parts):
        z = z + weights[-1]
    return z


def _probabilities(z: np.ndarray, multi: bool) -> np.ndarray:
    if multi:
        return np.asarray(1.0 / (1.0 + np.exp(-np.clip(z, -50, 50))))
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return np.asarray(e / e.sum(axis=1, keepdims=True))


def _fit_weights(parts: Sequence[np.ndarray], y: np.ndarray, multi: bool) -> list[float]:
    """Weights (one per part, plus a bias when multi-valued) minimising log-loss of the combined scores."""
    from scipy.optimize import minimize

    n_params = len(parts) + (1 if multi else 0)

    def loss(w: np.ndarray) -> float:
        p = _probabilities(_combine(list(w), parts), multi)
        if multi:
            q = np.clip(p, 1e-9, 1 - 1e-9)
            return float(-(y * np.log(q) + (1 - y) * np.log(1 - q)).mean())
        return float(-np.log(np.clip(p[np.arange(len(y)), y], 1e-9, None)).mean())

    start = np.array([1.0] * len(parts) + ([0.0] if multi else []))
    res = minimize(
        loss,
        start,
        method="L-BFGS-B",
        bounds=[(0.0, 100.0)] * len(parts) + [(-20.0, 20.0)] * (n_params - len(parts)),
    )
    return [float(w) for w in res.x]


def _macro_f1(y: np.ndarray, scores: np.ndarray, multi: bool, cut: float = 0.0) -> float:
    """Macro-F1 of the best value (single-valued) or of every value scoring >= `cut`, at least the best (multi)."""
    from sklearn.metrics import f1_score

    if multi:
        pred = (scores >= cut).astype(int)
        pred[np.arange(len(pred)), scores.argmax(axis=1)] = 1
        return float(f1_score(y, pred, average="macro", zero_division=0))
    return float(f1_score(y, scores.argmax(axis=1), average="macro", zero_division=0))
