"""Slow end-to-end check on real data (../shared): train on OA-Mine train_small, score a held-out slice."""

from __future__ import annotations

import random

import pytest

from shangpin.evaluate import evaluate
from shangpin.pipeline import Pipeline
from shangpin.stages.extract_attributes import AttributeExtractor
from shangpin.storage.catalog import read_products
from tests.conftest import shared_data


@pytest.mark.slow
def test_issue_2_oa_mine_small_beats_dictionary_level() -> None:
    products = list(read_products(shared_data("extraction/oa-mine/train_small.jsonl")))
    random.Random(1).shuffle(products)
    dev, train = products[:50], products[50:]
    stage = AttributeExtractor(epochs=8).fit(train)
    report = evaluate(Pipeline([stage]), dev)["extract_attributes"]
    # 286 titles are few; the dictionary peer scores about 40 on such a split.
    assert report.metrics["micro_f1"] > 55, report.metrics
