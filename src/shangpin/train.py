"""Training entry point shared by the CLI and tests: read data, fit one stage, add it to a model directory."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from shangpin._util import file_sha256
from shangpin.config import build_stage, load_config
from shangpin.errors import ConfigError, DataError
from shangpin.pipeline import Pipeline
from shangpin.records import Product
from shangpin.registry import stage_for_task
from shangpin.stages.base import Stage
from shangpin.storage.catalog import ReadReport, read_products

log = logging.getLogger(__name__)


def train(
    task: str,
    data: Path | None,
    model_dir: Path,
    *,
    config_path: Path | None = None,
    overrides: Sequence[str] = (),
    skip_invalid: bool = False,
    field_map: Mapping[str, str] | None = None,
    reviews_db: str | None = None,
) -> Stage:  # type: ignore[type-arg]
    """Fit the stage for `task` on `data` and/or reviewed suggestions, and save it into `model_dir`; other
    stages already there stay.

    With `reviews_db`, the human decisions on this stage's suggestions in that database are gold: accepted and
    corrected values are labels, rejected ones negatives (see `ReviewStore.reviewed_products`); they override
    the same products' labels in `data`. Auto-accepted values nobody reviewed are never used.

    Returns the fitted stage; its `train_info_` (also in meta.json) holds the data hash and size and dev metrics.
    """
    kind = stage_for_task(task)
    if data is None and reviews_db is None:
        raise ConfigError("training needs labelled products: pass --data FILE, --from-reviews, or both.")
    config = load_config(config_path, overrides, default_stage=kind)
    stage = build_stage(kind, config)
    # Load what is there first, so a broken model directory fails before an expensive fit.
    pipeline = Pipeline.load_or_empty(model_dir)
    report = ReadReport()
    products: list[Product] = []
    if data is not None:
        products = list(read_products(data, field_map=field_map, skip_invalid=skip_invalid, report=report))
        log.info("%s: %s", data, report.summary())
    reviewed = 0
    if reviews_db is not None:
        from shangpin.storage.review import ReviewStore, merge_reviews

        with ReviewStore(reviews_db) as store:
            corrections = store.reviewed_products(kind)
        if not corrections:
            raise DataError(
                f"the review database {store!r} holds no human decisions on '{kind}' suggestions; expected "
                "accepted, edited or rejected ones. Review some first (POST /v1/suggestions/ID/accept|edit|reject)."
            )
        reviewed = len(corrections)
        products = merge_reviews(products, corrections, kind)
        log.info("%d reviewed products from the review queue", reviewed)
    t0 = time.perf_counter()
    stage.fit(products)
    info = dict(getattr(stage, "train_info_", {}))
    info.update(
        {
            "data_file": str(data) if data is not None else None,
            "data_sha256": file_sha256(data) if data is not None else None,
            "data_products": report.read,
            "data_skipped": report.n_skipped,
            "reviewed_products": reviewed,
            "train_wall_seconds": round(time.perf_counter() - t0, 2),
            "trained_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
    )
    stage.train_info_ = info
    pipeline = pipeline.with_stage(stage)
    pipeline.save(model_dir, only=[stage.name])
    return stage
