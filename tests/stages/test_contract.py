"""Every stage in the registry passes the same contract checks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from shangpin.registry import available_stages, get_stage_class
from shangpin.stages.base import Stage
from tests.factories import tiny_products
from tests.stages import contract

KINDS = available_stages()


@pytest.fixture(scope="module", params=KINDS)
def fitted(request: pytest.FixtureRequest) -> Stage[Any]:
    cls = get_stage_class(request.param)
    stage = contract.make(cls)
    assert stage.fit(tiny_products(40)) is stage
    return stage


@pytest.mark.parametrize("kind", KINDS)
def test_clone(kind: str) -> None:
    contract.check_clone(get_stage_class(kind))


@pytest.mark.parametrize("kind", KINDS)
def test_legacy_params_name_real_parameters(kind: str) -> None:
    cls = get_stage_class(kind)
    assert set(cls.legacy_params) <= set(cls().get_params())


@pytest.mark.parametrize("kind", KINDS)
def test_not_fitted(kind: str) -> None:
    contract.check_not_fitted(get_stage_class(kind), tiny_products(4))


def test_predict_is_pure(fitted: Stage[Any]) -> None:
    contract.check_predict_pure(fitted, tiny_products(40))


def test_annotate_writes_only_assigns(fitted: Stage[Any]) -> None:
    contract.check_annotate_only_assigns(fitted, tiny_products(40))


def test_empty_batch(fitted: Stage[Any]) -> None:
    contract.check_empty(fitted)


def test_batch_size_invariance(fitted: Stage[Any]) -> None:
    contract.check_batch_invariance(fitted, tiny_products(40)[:20])


def test_save_load_roundtrip(fitted: Stage[Any], tmp_path: Path) -> None:
    contract.check_save_load(fitted, tiny_products(40), tmp_path / fitted.name)


def test_overfits_tiny_data(fitted: Stage[Any]) -> None:
    contract.check_overfits(fitted, tiny_products(40))
