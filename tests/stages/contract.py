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
            assert_close(getattr(a, f), getattr(b, f), SCORE_TOLERANCE)


def check_save_load(stage: Stage[Any], products: list[Product], path: Path) -> None:
    stage.save(path)
    loaded = type(stage).load(path)
    assert loaded.get_params() == stage.get_params()
    assert_close(loaded.predict(products), stage.predict(products), 1e-6)


def check_overfits(stage: Stage[Any], products: list[Product], minimum: float = 80.0) -> None:
    pred = list(stage.pipe(copy.deepcopy(products)))
    report = stage.evaluate(products, pred)
    assert report.metrics[stage.headline_metric] >= minimum, report.metrics


SCORE_TOLERANCE = 1e-3
"""Padding changes matrix shapes, so float sums may round differently with the batch size; beyond that a
product's output must not depend on its batch (int8 models use static activation ranges for this)."""


def assert_close(a: Any, b: Any, tol: float) -> None:
    """Equal structure and non-float values; floats within `tol`."""
    fa, fb = _flat(a), _flat(b)
    assert [k for k, _ in fa] == [k for k, _ in fb]
    for (key, x), (_, y) in zip(fa, fb, strict=True):
        if isinstance(x, float) and isinstance(y, float):
            assert abs(x - y) <= tol, (key, x, y)
        else:
            assert x == y, (key, x, y)


def _flat(value: Any, prefix: str = "") -> list[tuple[str, Any]]:
    if isinstance(value, dict):
        return [kv for k in sorted(value) for kv in _flat(value[k], f"{prefix}.{k}")]
    if isinstance(value, list | tuple):
        return [kv for i, v in enumerate(value) for kv in _flat(v, f"{prefix}[{i}]")]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _flat({f.name: getattr(value, f.name) for f in dataclasses.fields(value)}, prefix)
    return [(prefix, value)]
