"""Product search and similar products: a hybrid of BM25 (bm25s, jieba for Chinese) and sentence vectors."""

from __future__ import annotations

from shangpin.search.build import DEFAULT_ENCODER, build_index
from shangpin.search.index import (
    DEFAULT_FUSION,
    DEFAULT_WEIGHT,
    FACETED_WEIGHT,
    MODES,
    Hit,
    SearchIndex,
    hit_to_dict,
)

__all__ = [
    "DEFAULT_ENCODER",
    "DEFAULT_FUSION",
    "DEFAULT_WEIGHT",
    "FACETED_WEIGHT",
    "MODES",
    "Hit",
    "SearchIndex",
    "build_index",
    "hit_to_dict",
]
