"""Product text -> feature matrix for the supervised categoriser: TF-IDF per field, plus optional sentence vectors.

The sparse part is the fast path (about 90 weighted F1 on MWPD validation alone, thousands of products/s); a
sentence encoder adds about one point for a tenfold cost (docs/BENCHMARKS.md).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from shangpin.records import Product

_CODE = re.compile(r"^\s*\d+[_:\-]\s*")


def category_text(names: Sequence[str]) -> str:
    """What a category is called, for comparing with product text: "Leaf (Parent)" without numeric codes.

    GS1 names such as "64010100_Jewellery" carry their code; it says nothing to a text encoder. The parent
    disambiguates leaves such as "Accessories". Measured on MWPD validation (zero-shot, MiniLM): "leaf (parent)"
    45.9 weighted F1, leaf alone 44.7, the whole path 28.7 (USE).
    """
    clean = [_CODE.sub("", n).strip() for n in names]
    if len(clean) >= 2 and clean[-2] != clean[-1]:
        return f"{clean[-1]} ({clean[-2]})"
    return clean[-1] if clean else ""


def product_text(product: Product, description_chars: int) -> str:
    """Title, breadcrumb and the start of the description in one string, for sentence encoders."""
    parts = [product.title]
    if product.breadcrumb:
        parts.append(product.breadcrumb)
    if description_chars and product.description:
        parts.append(product.description[:description_chars])
    return " | ".join(p for p in parts if p)


class SparseFeatures:
    """TF-IDF over title words (1-2 grams), title character 2-5 grams, breadcrumb words (1-2) and description
    words; one block per field so a word in the title counts apart from the same word in a long description.

    Character n-grams make the title robust to spelling variants and unseen compounds ("T-Shirt", "tshirt").
    """

    def __init__(self, description_chars: int = 1000, use_description: bool = True) -> None:
        self.description_chars = description_chars
        self.use_description = use_description
        self.vectorizers: list[tuple[str, Any]] = []

    def _field(self, products: Sequence[Product], name: str) -> list[str]:
        if name == "title":
            return [p.title for p in products]
        if name == "breadcrumb":
            return [p.breadcrumb or "" for p in products]
        return [p.description[: self.description_chars] for p in products]

    def fit_transform(self, products: Sequence[Product]) -> Any:
        from scipy.sparse import hstack
        from sklearn.feature_extraction.text import TfidfVectorizer

        blocks: list[tuple[str, Any]] = [
            ("title", TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, dtype=np.float32)),
            (
                "title",
                TfidfVectorizer(
                    analyzer="char_wb", ngram_range=(2, 5), min_df=2, sublinear_tf=True, dtype=np.float32
                ),
            ),
        ]
        if any(p.breadcrumb for p in products):
            blocks.append(
                ("breadcrumb", TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, dtype=np.float32))
            )
        if self.use_description and any(p.description for p in products):
            blocks.append(("description", TfidfVectorizer(min_df=2, sublinear_tf=True, dtype=np.float32)))
        mats = []
        self.vectorizers = []
        for name, vec in blocks:
            try:
                mats.append(vec.fit_transform(self._field(products, name)))
            except ValueError:  # empty vocabulary (e.g. min_df on tiny data): the field adds nothing
                continue
            self.vectorizers.append((name, vec))
        return hstack(mats, format="csr")

    def transform(self, products: Sequence[Product]) -> Any:
        from scipy.sparse import hstack

        mats = [vec.transform(self._field(products, name)) for name, vec in self.vectorizers]
        return hstack(mats, format="csr")

    @property
    def n_features(self) -> int:
        return sum(len(vec.vocabulary_) for _, vec in self.vectorizers)
