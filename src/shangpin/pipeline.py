"""Pipeline: an ordered list of stages, checked at construction, streamed batch by batch."""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from shangpin import __version__
from shangpin.errors import ConfigError
from shangpin.records import INPUT_FIELDS, Event, Product
from shangpin.registry import get_stage_class, stage_rank
from shangpin.stages.base import Stage
from shangpin.storage.artifacts import read_pipeline_meta, write_pipeline_meta

log = logging.getLogger(__name__)


class Pipeline:
    """Stages run in registry order over streams of products.

    Args:
        stages: the stages; sorted into run order, at most one per kind.
    """

    def __init__(self, stages: Sequence[Stage[Any]] = ()) -> None:
        kinds = [s.name for s in stages]
        if len(set(kinds)) != len(kinds):
            raise ConfigError(f"each stage may appear once, found {kinds}")
        self.stages: list[Stage[Any]] = sorted(stages, key=lambda s: stage_rank(s.name))
        self._check_requires()

    def _check_requires(self) -> None:
        available = set(INPUT_FIELDS)
        for stage in self.stages:
            missing = [f for f in stage.requires if f not in available]
            if missing:
                raise ConfigError(
                    f"stage '{stage.name}' requires {missing}, which neither the input nor an earlier stage "
                    "provides; add the stage that assigns it before this one"
                )
            available.update(stage.assigns)

    @property
    def names(self) -> list[str]:
        """Stage kinds in run order."""
        return [s.name for s in self.stages]

    @property
    def assigns(self) -> set[str]:
        """Product fields written by some stage of this pipeline."""
        return {f for s in self.stages for f in s.assigns}

    def get(self, kind: str) -> Stage[Any]:
        """The stage of a kind; ConfigError listing the stages present when absent."""
        for stage in self.stages:
            if stage.name == kind:
                return stage
        raise ConfigError(f"the model has no '{kind}' stage; it has: {', '.join(self.names) or 'none'}")

    def with_stage(self, stage: Stage[Any]) -> Pipeline:
        """A pipeline with `stage` added, replacing any stage of the same kind."""
        return Pipeline([s for s in self.stages if s.name != stage.name] + [stage])

    def fit(self, products: Sequence[Product], events: Sequence[Event] = ()) -> Pipeline:
        """Fit each stage on the gold fields of `products` (teacher forcing: a later stage sees gold inputs,
        not an earlier stage's predictions, so stages can be trained independently and in any order)."""
        for stage in self.stages:
            stage.fit(products, events)
        return self

    def pipe(
        self, products: Iterable[Product], batch_size: int = 256, stages: Sequence[str] | None = None
    ) -> Iterator[Product]:
        """Run the stages lazily (generators chained), so a catalog of any size streams in constant memory."""
        stream: Iterable[Product] = products
        for stage in self.stages:
            if stages is None or stage.name in stages:
                stage.check_fitted()
                stream = stage.pipe(stream, batch_size=batch_size)
        yield from stream

    def save(self, model_dir: Path, only: Sequence[str] | None = None) -> None:
        """Save stages into `model_dir/<kind>/` (all, or only the kinds in `only`) and list them in pipeline.json.

        Each stage is written to a temporary folder and renamed into place, so a crash never leaves half a stage.
        """
        model_dir.mkdir(parents=True, exist_ok=True)
        for stage in self.stages:
            if only is not None and stage.name not in only:
                continue
            tmp = model_dir / f".{stage.name}.tmp"
            if tmp.exists():
                shutil.rmtree(tmp)
            stage.save(tmp)
            final = model_dir / stage.name
            old = model_dir / f".{stage.name}.old"
            if final.exists():
                final.rename(old)
            tmp.rename(final)
            if old.exists():
                shutil.rmtree(old)
        write_pipeline_meta(
            model_dir,
            {
                "stages": self.names,
                "shangpin_version": __version__,
                "updated_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            },
        )

    @classmethod
    def load(cls, model_dir: Path, stages: Sequence[str] | None = None) -> Pipeline:
        """Load the stages listed in pipeline.json (or only `stages`)."""
        meta = read_pipeline_meta(model_dir)
        kinds = [k for k in meta["stages"] if stages is None or k in stages]
        return cls([get_stage_class(k).load(model_dir / k) for k in kinds])

    @classmethod
    def load_or_empty(cls, model_dir: Path) -> Pipeline:
        """Load an existing model directory, or an empty pipeline when there is none yet."""
        if (model_dir / "pipeline.json").is_file():
            return cls.load(model_dir)
        return cls()
