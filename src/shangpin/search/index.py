"""Query a built index: search by text and similar products by id, BM25 and sentence-vector cosine fused."""

from __future__ import annotations

import bisect
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from shangpin.errors import ConfigError, DataError, IncompatibleModelError, NotFittedError
from shangpin.search.build import (
    BM25_DIR,
    ENCODER_DIR,
    FORMAT_VERSION,
    ID_ORDER_FILE,
    INDEX_DIR,
    META_FILE,
    VECTORS_FILE,
    _import_bm25s,
)
from shangpin.search.store import StringColumn
from shangpin.search.text import FACET_SEPARATOR, terms
from shangpin.sentence import SentenceEncoder, load_sentence_encoder

log = logging.getLogger(__name__)

MODES = ("hybrid", "bm25", "embedding")
FUSIONS = ("minmax", "rrf")
DEFAULT_FUSION = "minmax"
DEFAULT_WEIGHT = 0.5
"""Weight of BM25 in the fused score (1 - weight for the cosine) for an index of bare titles: the best NDCG@10 on
the WANDS queries and the best mean over the two similar-products sets (fashion 41.1, Chinese titles 30.6; 0.3: 42.1
and 28.6); docs/BENCHMARKS.md, issue 5."""
FACETED_WEIGHT = 0.8
"""Weight of BM25 when most products have a category, tags or attributes (given or
predicted by the model's stages): their whole-value terms make BM25 the stronger signal (fashion dev products
indexed through trained stages: similar 38.9 vs 34.7 at 0.3, attribute queries NDCG@10 89.5 vs 82.2 at 0.5)."""
FACETED_SHARE = 0.5
RRF_K = 60
_CHUNK_ROWS = 65536  # vectors scored per block: bounds the float32 copy of a float16 memory map


@dataclass(frozen=True, slots=True)
class Hit:
    """One result: the product, its fused score, the score of each retriever and the evidence that matched.

    `matched_terms` are query terms (for `similar`: the source product's terms) found in the product;
    `matched_tags`, `matched_category` and `matched_attributes` name the tags, category and attribute values that
    the query words hit (for `similar`: that both products share).
    """

    product_id: str
    title: str
    score: float
    bm25: float
    cosine: float
    category: str | None = None
    matched_terms: tuple[str, ...] = ()
    matched_tags: tuple[str, ...] = ()
    matched_category: str | None = None
    matched_attributes: dict[str, str] = field(default_factory=dict)


def hit_to_dict(hit: Hit) -> dict[str, Any]:
    """A hit in the JSON output of `shangpin search` and `shangpin similar`."""
    out: dict[str, Any] = {
        "id": hit.product_id,
        "title": hit.title,
        "score": round(hit.score, 4),
        "bm25": round(hit.bm25, 4),
        "cosine": round(hit.cosine, 4),
    }
    if hit.category:
        out["category"] = hit.category
    matched: dict[str, Any] = {"terms": list(hit.matched_terms)}
    if hit.matched_tags:
        matched["tags"] = list(hit.matched_tags)
    if hit.matched_category:
        matched["category"] = hit.matched_category
    if hit.matched_attributes:
        matched["attributes"] = hit.matched_attributes
    out["matched"] = matched
    return out


class SearchIndex:
    """A built index, memory-mapped: vectors, BM25 postings and string columns stay on disk until read.

    Load with `SearchIndex.load(model_dir)`; the sentence encoder is loaded on the first text query only.
    """

    def __init__(self, folder: Path, meta: dict[str, Any]) -> None:
        self.folder, self.meta = folder, meta
        self.size: int = int(meta["size"])
        self.ids = StringColumn(folder, "ids")
        self.titles = StringColumn(folder, "titles")
        self.terms = StringColumn(folder, "terms")
        self.facets = StringColumn(folder, "facets")
        self.vectors = np.load(folder / VECTORS_FILE, mmap_mode="r", allow_pickle=False)
        self.id_order = np.load(folder / ID_ORDER_FILE, mmap_mode="r", allow_pickle=False)
        self.bm25: Any = None
        if self.size:
            self.bm25 = _import_bm25s().BM25.load(str(folder / BM25_DIR), mmap=True, show_progress=False)
        self._encoder: SentenceEncoder | None = None

    @classmethod
    def load(cls, model_dir: Path) -> SearchIndex:
        """The index in `model_dir/index/`; NotFittedError saying how to build it when there is none."""
        folder = model_dir / INDEX_DIR
        meta_file = folder / META_FILE
        if not meta_file.is_file():
            raise NotFittedError(
                f"expected a search index at {folder}, found "
                f"{'no such folder' if not folder.exists() else 'no ' + META_FILE}; build it with "
                f"'shangpin index --model {model_dir} --data CATALOG.jsonl'"
            )
        meta: dict[str, Any] = json.loads(meta_file.read_text(encoding="utf-8"))
        if meta.get("format_version") != FORMAT_VERSION:
            raise IncompatibleModelError(
                f"the search index at {folder} was written in format v{meta.get('format_version')}, this code "
                f"reads v{FORMAT_VERSION}; rebuild it with 'shangpin index --model {model_dir} --data CATALOG'"
            )
        return cls(folder, meta)

    @property
    def encoder(self) -> SentenceEncoder:
        if self._encoder is None:
            self._encoder = load_sentence_encoder(self.meta["encoder"], self.folder / ENCODER_DIR)
        return self._encoder

    def default_weight(self) -> float:
        """BM25's share of the fused score by default: higher when most indexed products carry a category, tags or
        attributes (their whole-value terms make BM25 the stronger signal)."""
        if float(self.meta.get("facet_share", 0.0)) >= FACETED_SHARE:
            return FACETED_WEIGHT
        return DEFAULT_WEIGHT

    def row_of(self, product_id: str) -> int:
        """The row of a product id; DataError naming the id (and the nearest ids) when the index lacks it."""
        key = self.ids.__getitem__
        pos = bisect.bisect_left(self.id_order, product_id, key=lambda row: key(int(row)))
        if pos < self.size and key(int(self.id_order[pos])) == product_id:
            return int(self.id_order[pos])
        near = [key(int(self.id_order[i])) for i in range(max(0, pos - 1), min(self.size, pos + 2))]
        hint = f" (nearest ids: {', '.join(near)})" if near else ""
        raise DataError(
            f"unknown product id '{product_id}': the index of {self.size} products built from "
            f"{self.meta.get('data')} has no such product{hint}; if the catalog changed, rebuild the index with "
            f"'shangpin index --model {self.folder.parent} --data CATALOG'"
        )

    def search(
        self,
        query: str,
        k: int = 10,
        *,
        mode: str = "hybrid",
        fusion: str = DEFAULT_FUSION,
        weight: float | None = None,
        candidates: int = 100,
    ) -> list[Hit]:
        """The k products that best match a text query (any language the encoder reads). `weight` is BM25's share
        of the fused score; None: the default for this index (`default_weight`)."""
        weight = self.default_weight() if weight is None else weight
        _check(mode, fusion, weight, k)
        if not self.size or not query.strip():
            return []
        qterms = list(dict.fromkeys(terms(query)))
        s_bm25 = self._bm25_scores(qterms) if mode != "embedding" else None
        s_cos = self._cosines(self.encoder.encode([query])[0]) if mode != "bm25" else None
        rows = self._rank(s_bm25, s_cos, k, mode, fusion, weight, candidates, exclude=None)
        qset = set(qterms)
        return [self._hit(row, score, s_bm25, s_cos, qset, source=None) for row, score in rows]

    def similar(
        self,
        product_id: str,
        k: int = 10,
        *,
        mode: str = "hybrid",
        fusion: str = DEFAULT_FUSION,
        weight: float | None = None,
        candidates: int = 100,
    ) -> list[Hit]:
        """The k products most similar to an indexed product (itself excluded): its terms, including its category,
        tags and attribute values as whole-value terms, against BM25, and its stored vector against the others."""
        weight = self.default_weight() if weight is None else weight
        _check(mode, fusion, weight, k)
        row = self.row_of(product_id)
        return self.similar_to_row(row, k, mode=mode, fusion=fusion, weight=weight, candidates=candidates)

    def similar_to_row(
        self,
        row: int,
        k: int = 10,
        *,
        mode: str = "hybrid",
        fusion: str = DEFAULT_FUSION,
        weight: float | None = None,
        candidates: int = 100,
    ) -> list[Hit]:
        """`similar` for a row number (benchmarks query thousands of rows)."""
        weight = self.default_weight() if weight is None else weight
        qterms = [t for t in self.terms[row].split("\t") if t]
        s_bm25 = self._bm25_scores(qterms) if mode != "embedding" else None
        s_cos = self._cosines(np.asarray(self.vectors[row], dtype=np.float32)) if mode != "bm25" else None
        rows = self._rank(s_bm25, s_cos, k, mode, fusion, weight, candidates, exclude=row)
        qset = {t for t in qterms if FACET_SEPARATOR not in t}
        return [self._hit(r, score, s_bm25, s_cos, qset, source=row) for r, score in rows]

    def _bm25_scores(self, qterms: list[str]) -> np.ndarray:
        vocab = self.bm25.vocab_dict
        token_ids = sorted({vocab[t] for t in qterms if t in vocab})
        if not token_ids:
            return np.zeros(self.size, dtype=np.float32)
        return np.asarray(self.bm25.get_scores_from_ids(token_ids), dtype=np.float32)

    def _cosines(self, vector: np.ndarray) -> np.ndarray:
        q = np.asarray(vector, dtype=np.float32)
        out = np.empty(self.size, dtype=np.float32)
        for start in range(0, self.size, _CHUNK_ROWS):
            block = np.asarray(self.vectors[start : start + _CHUNK_ROWS], dtype=np.float32)
            out[start : start + len(block)] = block @ q
        return out

    def _rank(
        self,
        s_bm25: np.ndarray | None,
        s_cos: np.ndarray | None,
        k: int,
        mode: str,
        fusion: str,
        weight: float,
        candidates: int,
        exclude: int | None,
    ) -> list[tuple[int, float]]:
        """Top-k (row, fused score). BM25 alone returns only products sharing a term with the query."""
        if exclude is not None:
            for s in (s_bm25, s_cos):
                if s is not None:
                    s[exclude] = -np.inf
        if mode == "bm25" or s_cos is None:
            assert s_bm25 is not None
            top = _top(s_bm25, k)
            return [(int(r), float(s_bm25[r])) for r in top if s_bm25[r] > 0]
        if mode == "embedding" or s_bm25 is None or not (s_bm25 > 0).any():  # no term matched: vectors alone
            top = _top(s_cos, k)
            return [(int(r), float(s_cos[r])) for r in top if np.isfinite(s_cos[r])]
        n_cand = max(candidates, k)
        top_b = [r for r in _top(s_bm25, n_cand) if s_bm25[r] > 0]
        top_c = [r for r in _top(s_cos, n_cand) if np.isfinite(s_cos[r])]
        cand = np.asarray(list(dict.fromkeys([*top_b, *top_c])), dtype=np.int64)
        if not len(cand):
            return []
        if fusion == "rrf":
            fused = np.zeros(len(cand), dtype=np.float64)
            pos = {int(r): i for i, r in enumerate(cand)}
            for rank, r in enumerate(top_b):
                fused[pos[int(r)]] += weight / (RRF_K + rank + 1)
            for rank, r in enumerate(top_c):
                fused[pos[int(r)]] += (1 - weight) / (RRF_K + rank + 1)
        else:
            b = s_bm25[cand].astype(np.float64)
            c = s_cos[cand].astype(np.float64)
            b_max = b.max()
            bn = b / b_max if b_max > 0 else np.zeros_like(b)  # BM25's minimum over the catalog is 0
            c = np.where(np.isfinite(c), c, c[np.isfinite(c)].min(initial=0.0))
            span = c.max() - c.min()
            cn = (c - c.min()) / span if span > 0 else np.zeros_like(c)
            fused = weight * bn + (1 - weight) * cn
        order = np.lexsort((cand, -fused))[:k]  # ties: lower row first, so results are reproducible
        return [(int(cand[i]), float(fused[i])) for i in order]

    def _hit(
        self,
        row: int,
        score: float,
        s_bm25: np.ndarray | None,
        s_cos: np.ndarray | None,
        qset: set[str],
        source: int | None,
    ) -> Hit:
        facets: dict[str, Any] = json.loads(self.facets[row])
        doc = self.terms[row].split("\t")
        matched_terms = tuple(t for t in doc if t in qset and FACET_SEPARATOR not in t)
        if source is None:  # a text query: facets whose words the query names

            def hits(value: str) -> bool:
                return bool(qset.intersection(terms(value)))

            tags = tuple(t for t in facets.get("tags", ()) if hits(t))
            cat = facets.get("category")
            category = cat if cat and hits(cat.split(" > ")[-1]) else None
            attrs = {n: v for n, v in facets.get("attributes", {}).items() if hits(v)}
        else:  # similar products: facets both share
            src: dict[str, Any] = json.loads(self.facets[source])
            src_tags = {t.lower() for t in src.get("tags", ())}
            tags = tuple(t for t in facets.get("tags", ()) if t.lower() in src_tags)
            cat = facets.get("category")
            category = cat if cat and cat == src.get("category") else None
            src_attrs = src.get("attributes", {})
            attrs = {
                n: v
                for n, v in facets.get("attributes", {}).items()
                if str(src_attrs.get(n, "")).lower() == v.lower()
            }
        return Hit(
            product_id=self.ids[row],
            title=self.titles[row],
            score=score,
            bm25=float(s_bm25[row]) if s_bm25 is not None else 0.0,
            cosine=float(s_cos[row]) if s_cos is not None else 0.0,
            category=facets.get("category"),
            matched_terms=matched_terms,
            matched_tags=tags,
            matched_category=category,
            matched_attributes=attrs,
        )


def _top(scores: np.ndarray, k: int) -> np.ndarray:
    """Rows of the k highest scores, best first (ties: lower row first)."""
    n = len(scores)
    if k >= n:
        part = np.arange(n)
    else:
        part = np.argpartition(-scores, k - 1)[:k]
    return part[np.lexsort((part, -scores[part]))]


def _check(mode: str, fusion: str, weight: float, k: int) -> None:
    if mode not in MODES:
        raise ConfigError(f"unknown search mode '{mode}'; expected one of {', '.join(MODES)}")
    if fusion not in FUSIONS:
        raise ConfigError(f"unknown fusion '{fusion}'; expected one of {', '.join(FUSIONS)}")
    if not 0.0 <= weight <= 1.0:
        raise ConfigError(f"fusion weight must be in [0, 1], found {weight}")
    if k < 1:
        raise ConfigError(f"k must be at least 1, found {k}")
