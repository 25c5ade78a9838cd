"""Batch enrichment of a product file: stream in, run every stage of a model, stream out in input order.

Two engines compute the same bytes: `local` runs the pipeline in this process; `ray` (see `ray_engine.py`) runs
it in a pool of Ray actors. Both work through a resumable job (`jobs.py`): the output is computed in chunks of
`chunk_size` products, each written whole into `OUT.parts/`, so a killed run started again computes only the
chunks that are missing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shangpin._progress import track
from shangpin._util import batched, file_sha256
from shangpin.errors import ConfigError, DataError
from shangpin.jobs import ChunkedJob
from shangpin.pipeline import Pipeline
from shangpin.records import Product
from shangpin.storage.catalog import ReadReport, product_to_output, read_products

if TYPE_CHECKING:
    from shangpin.storage.db import PredictionStore
    from shangpin.storage.review import Thresholds

log = logging.getLogger(__name__)

ENGINES = ("local", "ray")


@dataclass
class PredictReport:
    """What a batch run did. Attributes: read (input report), written (output lines), seconds, stored (db rows
    stored by this run), resumed (chunks an earlier, interrupted run had written)."""

    read: ReadReport = field(default_factory=ReadReport)
    written: int = 0
    seconds: float = 0.0
    stored: int = 0
    model_version: str = ""
    resumed: int = 0

    def summary(self) -> str:
        rate = self.written / self.seconds if self.seconds else 0.0
        s = f"{self.read.summary()}; wrote {self.written} products in {self.seconds:.1f} s ({rate:.0f}/s)"
        if self.resumed:
            s += f"; resumed: {self.resumed} chunks were written by an earlier run"
        return s + (f"; stored {self.stored} predictions" if self.stored else "")


@dataclass
class ChunkResult:
    """One enriched chunk: its output lines, and its products when they are to be stored in a database."""

    index: int
    lines: str
    products: list[Product] | None = None


def predict_file(
    model_dir: Path,
    data: Path,
    out: Path,
    *,
    batch_size: int = 1024,
    skip_invalid: bool = False,
    field_map: Mapping[str, str] | None = None,
    db_url: str | None = None,
    pipeline: Pipeline | None = None,
    engine: str = "local",
    workers: int | None = None,
    chunk_size: int | None = None,
    restart: bool = False,
    thresholds: Thresholds | None = None,
) -> PredictReport:
    """Enrich `data` into `out` (JSONL, one line per input product, input order), optionally storing predictions.

    The output file appears only when the run completes. Until then chunks of `chunk_size` products (default:
    `batch_size`) are kept in `out.parts/`; running the same command again after a crash or kill keeps them
    and computes only the rest (`restart` discards them). Larger batches let a stage sort more titles by
    length before padding them into model batches (faster on a CPU).

    Args:
        engine: "local" (this process) or "ray" (`workers` Ray actors, each loading the model once; needs
            the `ray` extra). Both write the same bytes.
        workers: Ray actors (default: the cores this process may use).
        chunk_size: products per chunk, the unit of resuming (and of work handed to a Ray actor).
        pipeline: an already loaded pipeline of `model_dir` for the local engine.
        thresholds: with `db_url`, suggestions scoring at or above their threshold are stored auto-accepted
            (see `shangpin.storage.review.Thresholds`); without, every stored prediction waits for review.
    """
    t0 = time.perf_counter()
    if engine not in ENGINES:
        raise ConfigError(f"unknown engine '{engine}'; expected one of: {', '.join(ENGINES)}")
    if workers is not None and engine != "ray":
        raise ConfigError("--workers sets the number of Ray actors; pass it with --engine ray")
    if not data.is_file():
        raise DataError(f"{data}: no such file; expected a .jsonl, .jsonl.gz or .csv product file")
    chunk_size = chunk_size or batch_size
    report = PredictReport(model_version=model_version(model_dir))
    # The model is checked (ray) or loaded (local) before anything is written, so a bad one leaves nothing.
    local = None if engine == "ray" else (pipeline or Pipeline.load(model_dir))
    assigned = _stage_assigns(model_dir) if local is None else local.assigns
    include_category = "category" in assigned
    include_tags = "tags" in assigned
    settings = _job_settings(
        model_dir,
        data,
        batch_size=batch_size,
        chunk_size=chunk_size,
        skip_invalid=skip_invalid,
        field_map=field_map,
        db_url=db_url,
    )
    store = None
    if db_url is not None:
        from shangpin.storage.db import PredictionStore

        store = PredictionStore(db_url)
    try:
        job = ChunkedJob(out, settings, restart=restart)
        report.resumed = len(job.done)
        chunks: Iterator[ChunkResult]
        if local is None:
            from shangpin.ray_engine import ray_chunks

            chunks = ray_chunks(
                model_dir,
                data,
                batch_size=batch_size,
                chunk_size=chunk_size,
                skip_invalid=skip_invalid,
                field_map=field_map,
                done=job.done,
                workers=workers,
                with_products=store is not None,
                report=report.read,
            )
        else:
            products = read_products(data, field_map=field_map, skip_invalid=skip_invalid, report=report.read)
            chunks = local_chunks(
                local,
                track(products, "predicting"),
                batch_size=batch_size,
                chunk_size=chunk_size,
                done=job.done,
                with_products=store is not None,
            )
        try:
            for chunk in chunks:
                if store is not None and chunk.products is not None:
                    report.stored += _store_chunk(
                        store, job, chunk, report.model_version, include_category, include_tags, thresholds
                    )
                job.write_chunk(chunk.index, chunk.lines)
        except DataError:
            job.discard()  # the same input stops at the same line again: no use keeping its chunks
            raise
        n_chunks = -(-report.read.read // chunk_size)
        report.written = job.finish(n_chunks)
    finally:
        if store is not None:
            store.close()
    report.seconds = time.perf_counter() - t0
    return report


def local_chunks(
    pipeline: Pipeline,
    products: Iterable[Product],
    *,
    batch_size: int,
    chunk_size: int,
    done: Iterable[int] = (),
    with_products: bool = False,
) -> Iterator[ChunkResult]:
    """Enrich `products` chunk by chunk in this process, skipping the chunks in `done` (still read, so the
    read report and the chunk numbering are those of the whole file)."""
    skip = set(done)
    fields = pipeline.assigns
    for index, chunk in enumerate(batched(products, chunk_size)):
        if index in skip:
            continue
        enriched = list(pipeline.pipe(chunk, batch_size=batch_size))
        yield ChunkResult(index, output_lines(enriched, fields), enriched if with_products else None)


def output_lines(products: Iterable[Product], fields: Iterable[str]) -> str:
    """The output JSONL of enriched products (the same bytes as `write_jsonl`)."""
    fields = set(fields)
    return "".join(json.dumps(product_to_output(p, fields), ensure_ascii=False) + "\n" for p in products)


def _store_chunk(
    store: PredictionStore,
    job: ChunkedJob,
    chunk: ChunkResult,
    version: str,
    include_category: bool,
    include_tags: bool,
    thresholds: Thresholds | None,
) -> int:
    """Store a chunk's predictions before its output is written, so a written chunk is always stored.

    A chunk stored by a run killed before it wrote the chunk's output is stored again on resume; its rows
    from that run are deleted first (`ChunkedJob.db_pending` says which chunk that may be).
    """
    products = chunk.products or []
    job.mark_db_pending(chunk.index)
    if chunk.index == job.db_pending:
        removed = _delete_job_rows(
            store.url, [p.product_id for p in products], model_version=version, since=job.started_at
        )
        log.info("chunk %d: removed %d rows stored by the interrupted run", chunk.index, removed)
    return store.save_products(
        products,
        model_version=version,
        include_category=include_category,
        include_tags=include_tags,
        thresholds=thresholds,
    )


def _delete_job_rows(url: str, product_ids: Sequence[str], *, model_version: str, since: float) -> int:
    """Delete the predictions of `product_ids` by `model_version` stored at or after `since` (epoch seconds)."""
    from datetime import UTC, datetime

    from sqlalchemy import delete

    from shangpin.storage.db import PredictionRow, init_db

    engine = init_db(url)
    removed = 0
    try:
        with engine.begin() as conn:
            for ids in batched(sorted(set(product_ids)), 500):  # keeps the IN list within SQLite's limits
                result = conn.execute(
                    delete(PredictionRow).where(
                        PredictionRow.product_id.in_(ids),
                        PredictionRow.model_version == model_version,
                        PredictionRow.created_at >= datetime.fromtimestamp(since, UTC),
                    )
                )
                removed += result.rowcount
    finally:
        engine.dispose()
    return removed


def _job_settings(
    model_dir: Path,
    data: Path,
    *,
    batch_size: int,
    chunk_size: int,
    skip_invalid: bool,
    field_map: Mapping[str, str] | None,
    db_url: str | None,
) -> dict[str, Any]:
    """What the chunks of a run depend on; a rerun keeps earlier chunks only when all of it is unchanged."""
    stat = data.stat()
    return {
        "input": {
            "path": str(data.resolve()),
            "size": stat.st_size,
            "mtime_ns": stat.st_mtime_ns,
            "sha256": file_sha256(data),
        },
        "model": {
            "path": str(model_dir.resolve()),
            "version": model_version(model_dir),
            "sha256": _model_fingerprint(model_dir),
        },
        "batch_size": batch_size,
        "chunk_size": chunk_size,
        "skip_invalid": skip_invalid,
        "field_map": dict(sorted(field_map.items())) if field_map else None,
        # A hash, not the URL: the manifest must not hold a password. Resuming into another database would
        # lose the rows of the chunks already written.
        "db": hashlib.sha256(db_url.encode()).hexdigest() if db_url else None,
    }


def _model_fingerprint(model_dir: Path) -> str:
    """SHA-256 over pipeline.json and each stage's meta.json (rewritten whenever a stage is retrained)."""
    from shangpin.storage.artifacts import PIPELINE_FILE, read_pipeline_meta

    h = hashlib.sha256((model_dir / PIPELINE_FILE).read_bytes())
    for kind in read_pipeline_meta(model_dir).get("stages", []):
        meta = model_dir / kind / "meta.json"
        if meta.is_file():
            h.update(meta.read_bytes())
    return h.hexdigest()


def _stage_assigns(model_dir: Path) -> set[str]:
    """Product fields the stages of a saved model assign, read without loading the stages; checks each stage's
    meta.json first, so a missing or incompatible stage fails here rather than inside a Ray actor."""
    from shangpin.registry import get_stage_class
    from shangpin.storage.artifacts import read_pipeline_meta

    fields: set[str] = set()
    for kind in read_pipeline_meta(model_dir)["stages"]:
        stage_class = get_stage_class(kind)
        stage_class.read_meta(model_dir / kind)
        fields.update(stage_class.assigns)
    return fields


def model_version(model_dir: Path) -> str:
    """A short identifier of a trained model: folder name plus the update time of pipeline.json."""
    from shangpin.storage.artifacts import read_pipeline_meta

    meta = read_pipeline_meta(model_dir)
    return f"{model_dir.name}@{meta.get('updated_at', '?')}"
