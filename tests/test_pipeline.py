"""Pipeline construction checks, lazy streaming and model directories."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, Self

import pytest

from shangpin.errors import ConfigError, IncompatibleModelError, NotFittedError
from shangpin.pipeline import Pipeline
from shangpin.records import Event, Product
from shangpin.stages.base import Stage, StageReport


class Upper(Stage[str]):
    """A toy stage: writes the upper-cased title into `description`."""

    name: ClassVar[str] = "upper"
    task: ClassVar[str] = "upper"
    requires: ClassVar[tuple[str, ...]] = ("title",)
    assigns: ClassVar[tuple[str, ...]] = ("description",)

    def __init__(self, *, suffix: str = "") -> None:
        self.suffix = suffix

    def fit(self, products: Sequence[Product], events: Sequence[Event] = ()) -> Self:
        self.fitted_ = True
        return self

    def is_fitted(self) -> bool:
        return hasattr(self, "fitted_")

    def predict(self, products: Sequence[Product]) -> list[str]:
        self.check_fitted()
        self.calls = getattr(self, "calls", 0) + 1
        return [p.title.upper() + self.suffix for p in products]

    def annotate(self, products: Sequence[Product], preds: Sequence[str]) -> None:
        for p, d in zip(products, preds, strict=True):
            p.description = d

    def evaluate(self, gold: Sequence[Product], pred: Sequence[Product]) -> StageReport:
        return StageReport(stage=self.name)

    def _save_state(self, path: Path) -> None:
        (path / "state.txt").write_text("ok")

    def _load_state(self, path: Path) -> None:
        self.fitted_ = (path / "state.txt").read_text() == "ok"


class NeedsTags(Upper):
    name: ClassVar[str] = "needs_extracted"
    requires: ClassVar[tuple[str, ...]] = ("extracted",)


def test_requires_must_be_input_or_assigned_earlier() -> None:
    with pytest.raises(ConfigError, match="stage 'needs_extracted' requires \\['extracted'\\]"):
        Pipeline([NeedsTags()])


def test_duplicate_stage_rejected() -> None:
    with pytest.raises(ConfigError, match="once"):
        Pipeline([Upper(), Upper()])


def test_pipe_is_lazy_and_batched() -> None:
    stage = Upper().fit([])
    pipeline = Pipeline([stage])

    def endless() -> Any:
        i = 0
        while True:
            yield Product(str(i), f"t{i}")
            i += 1

    stream = pipeline.pipe(endless(), batch_size=4)
    first = [next(stream) for _ in range(6)]
    assert [p.description for p in first] == ["T0", "T1", "T2", "T3", "T4", "T5"]
    assert stage.calls == 2  # two batches of 4 were needed, no more


def test_parameters_from_a_newer_version_are_reported(tmp_path: Path) -> None:
    stage = Upper().fit([])
    stage.save(tmp_path / "upper")
    meta_path = tmp_path / "upper" / "meta.json"
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    meta["params"]["newer_option"] = 1
    meta_path.write_text(json.dumps(meta), encoding="utf-8")
    with pytest.raises(IncompatibleModelError, match=r"does not know \(newer_option\).*newer or patched"):
        Upper.load(tmp_path / "upper")


def test_unfitted_stage_in_pipeline() -> None:
    with pytest.raises(NotFittedError, match="stage 'upper'"):
        list(Pipeline([Upper()]).pipe([Product("1", "x")]))


def test_version_mismatch_is_reported(tmp_path: Path) -> None:
    stage = Upper().fit([])
    stage.save(tmp_path / "upper")
    Upper.version = 2
    try:
        with pytest.raises(IncompatibleModelError, match="format v1, this code reads v2; retrain"):
            Upper.load(tmp_path / "upper")
    finally:
        Upper.version = 1


def test_missing_model_dir_message(tmp_path: Path) -> None:
    with pytest.raises(NotFittedError, match="expected a model directory with pipeline.json"):
        Pipeline.load(tmp_path / "nothing")
