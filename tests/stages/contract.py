"""The checks every registered stage must pass (sklearn's check_estimator idea, over our registry)."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any

import pytest
from sklearn.base import clone

from shangpin.errors import NotFittedError
from shangpin.records import Product
from shangpin.stages.base import Stage


def make(cls: type[Stage[Any]]) -> Stage[Any]:
    return cls(**cls.test_params)


def check_clone(cls: type[Stage[Any]]) -> None:
    stage = make(cls)
    twin = clone(stage)
    assert twin.get_params() == stage.get_params()
    assert type(twin) is cls


def check_not_fitted(cls: type[Stage[Any]], products: list[Product]) -> None:
    with pytest.raises(NotFittedError, match=cls.name):
        make(cls).predict(products[:2])


def check_predict_pure(stage: Stage[Any], products: list[Product]) -> None:
    batch = copy.deepcopy(products[:8])
    before = copy.deepcopy(batch)
    stage.predict(batch)
    assert batch == before


def check_annotate_only_assigns(stage: Stage[Any], products: list[Product]) -> None:
    batch = copy.deepcopy(products[:8])
    before = copy.deepcopy(batch)
    stage.annotate(batch, stage.predict(batch))
    for old, new in zip(before, batch, strict=True):
        for f in dataclasses.fields(Product):
            if f.name not in stage.assigns:
                assert getattr(old, f.name) == getattr(new, f.name), f"{stage.name} changed {f.name}"


def check_empty(stage: Stage[Any]) -> None:
    assert stage.predict([]) == []
    assert list(stage.pipe([])) == []


def check_batch_invariance(stage: Stage[Any], products: list[Product]) -> None:
    one = list(stage.pipe(copy.deepcopy(products), batch_size=1))
    many = list(stage.pipe(copy.deepcopy(products), batch_size=64))
    for a, b in zip(one, many, strict=True):
        for f in stage.assigns:
            assert _rounded(getattr(a, f)) == _rounded(getattr(b, f))


def check_save_load(stage: Stage[Any], products: list[Product], path: Path) -> None:
    stage.save(path)
    loaded = type(stage).load(path)
    assert loaded.get_params() == stage.get_params()
    assert _rounded(loaded.predict(products)) == _rounded(stage.predict(products))


def check_overfits(stage: Stage[Any], products: list[Product], minimum: float = 80.0) -> None:
    pred = list(stage.pipe(copy.deepcopy(products)))
    report = stage.evaluate(products, pred)
    assert report.metrics[stage.headline_metric] >= minimum, report.metrics


def _rounded(value: Any) -> Any:
    """Scores to 3 decimals: batching changes padding, which may move float results in the last digits."""
    if isinstance(value, float):
        return round(value, 3)
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_rounded(v) for v in value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _rounded(getattr(value, f.name)) for f in dataclasses.fields(value)}
    return value
