"""Batch enrichment of a product file: stream in, run every stage of a model, stream out in input order."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shangpin._progress import track
from shangpin._util import atomic_write
from shangpin.pipeline import Pipeline
from shangpin.records import Product
from shangpin.storage.catalog import ReadReport, product_to_output, read_products, write_jsonl

log = logging.getLogger(__name__)


@dataclass
class PredictReport:
    """What a batch run did. Attributes: read (input report), written (output lines), seconds, stored (db rows)."""

    read: ReadReport = field(default_factory=ReadReport)
    written: int = 0
    seconds: float = 0.0
    stored: int = 0
    model_version: str = ""

    def summary(self) -> str:
        rate = self.written / self.seconds if self.seconds else 0.0
        s = f"{self.read.summary()}; wrote {self.written} products in {self.seconds:.1f} s ({rate:.0f}/s)"
        return s + (f"; stored {self.stored} predictions" if self.stored else "")


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
) -> PredictReport:
    """Enrich `data` into `out` (JSONL, one line per input product, input order), optionally storing predictions.

    The output file appears only when the run completes (written to a temp file and renamed). Larger batches
    let a stage sort more titles by length before padding them into model batches (faster on a CPU).
    """
    t0 = time.perf_counter()
    pipeline = pipeline or Pipeline.load(model_dir)
    report = PredictReport(model_version=model_version(model_dir))
    products = read_products(data, field_map=field_map, skip_invalid=skip_invalid, report=report.read)
    fields = pipeline.assigns
    store = None
    if db_url is not None:
        from shangpin.storage.db import PredictionStore

        store = PredictionStore(db_url)

    def rows() -> Iterator[dict[str, Any]]:
        batch: list[Product] = []
        for product in track(pipeline.pipe(products, batch_size=batch_size), "predicting"):
            yield product_to_output(product, fields)
            if store is not None:
                batch.append(product)
                if len(batch) >= batch_size:
                    report.stored += store.save_products(
                        batch, model_version=report.model_version, include_category="category" in fields
                    )
                    batch = []
        if store is not None and batch:
            report.stored += store.save_products(
                batch, model_version=report.model_version, include_category="category" in fields
            )

    try:
        with atomic_write(out) as fh:
            report.written = write_jsonl(rows(), fh)
    finally:
        if store is not None:
            store.close()
    report.seconds = time.perf_counter() - t0
    return report


def model_version(model_dir: Path) -> str:
    """A short identifier of a trained model: folder name plus the update time of pipeline.json."""
    from shangpin.storage.artifacts import read_pipeline_meta

    meta = read_pipeline_meta(model_dir)
    return f"{model_dir.name}@{meta.get('updated_at', '?')}"
