"""Training entry point shared by the CLI and tests: read data, fit one stage, add it to a model directory."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from shangpin._util import file_sha256
from shangpin.config import build_stage, load_config
from shangpin.pipeline import Pipeline
from shangpin.registry import stage_for_task
from shangpin.stages.base import Stage
from shangpin.storage.catalog import ReadReport, read_products

log = logging.getLogger(__name__)


def train(
    task: str,
    data: Path,
    model_dir: Path,
    *,
    config_path: Path | None = None,
    overrides: Sequence[str] = (),
    skip_invalid: bool = False,
    field_map: Mapping[str, str] | None = None,
) -> Stage:  # type: ignore[type-arg]
    """Fit the stage for `task` on `data` and save it into `model_dir`; other stages already there stay.

    Returns the fitted stage; its `train_info_` (also in meta.json) holds the data hash and size and dev metrics.
    """
    kind = stage_for_task(task)
    config = load_config(config_path, overrides, default_stage=kind)
    stage = build_stage(kind, config)
    # Load what is there first, so a broken model directory fails before an expensive fit.
    pipeline = Pipeline.load_or_empty(model_dir)
    report = ReadReport()
    products = list(read_products(data, field_map=field_map, skip_invalid=skip_invalid, report=report))
    log.info("%s: %s", data, report.summary())
    t0 = time.perf_counter()
    stage.fit(products)
    info = dict(getattr(stage, "train_info_", {}))
    info.update(
        {
            "data_file": str(data),
            "data_sha256": file_sha256(data),
            "data_products": report.read,
            "data_skipped": report.n_skipped,
            "train_wall_seconds": round(time.perf_counter() - t0, 2),
            "trained_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
    )
    stage.train_info_ = info
    pipeline = pipeline.with_stage(stage)
    pipeline.save(model_dir, only=[stage.name])
    return stage
