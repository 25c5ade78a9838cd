"""The ExtractGPT counting, checked by hand on small cases."""

from __future__ import annotations

import pytest

from shangpin.evaluate import ExtractionScorer, boundary_kind, extraction_outcome, prf
from shangpin.records import AttributeValue, CategoryPrediction, Product


def av(value: str, *alts: str) -> AttributeValue:
    return AttributeValue(name="a", value=value, alternatives=alts)


@pytest.mark.parametrize(
    ("gold", "pred", "outcome"),
    [
        (None, None, "NN"),
        (None, av("x"), "NV"),
        (av("x"), None, "VN"),
        (av(" Red "), av("Red"), "VC"),
        (av("Red", "red"), av("red"), "VC"),
        (av("Red"), av("Dark Red"), "VW"),
    ],
)
def test_outcomes(gold: AttributeValue | None, pred: AttributeValue | None, outcome: str) -> None:
    assert extraction_outcome(gold, pred) == outcome


def test_prf_formula() -> None:
    # P = VC/(NV+VC+VW) = 6/10, R = VC/(VN+VC+VW) = 6/9
    p, r, f = prf({"VC": 6, "VW": 2, "NV": 2, "VN": 1, "NN": 5})
    assert p == pytest.approx(60.0) and r == pytest.approx(66.6667, abs=1e-3)
    assert f == pytest.approx(2 * 60 * 66.6667 / 126.6667, abs=1e-3)


def test_scorer_micro_macro_and_ignores_attributes_not_in_gold() -> None:
    g1 = Product(
        "1", "t", category=CategoryPrediction("Shoes"), attributes={"Color": av("Red"), "Size": None}
    )
    g2 = Product("2", "t", category=CategoryPrediction("Shoes"), attributes={"Color": av("Blue")})
    s = ExtractionScorer()
    s.add(g1, {"Color": av("Red"), "Size": av("9"), "Brand": av("ignored")})
    s.add(g2, {"Color": av("Navy Blue")})
    m = s.metrics()
    # Color: VC 1, VW 1 -> P = R = 50; Size: NV 1 -> P = 0, R undefined (0)
    assert m["vc"] == 1 and m["vw"] == 1 and m["nv"] == 1
    assert m["micro_precision"] == pytest.approx(100 / 3)
    assert m["micro_recall"] == pytest.approx(50.0)
    assert m["macro_f1"] == pytest.approx((50.0 + 0.0) / 2)
    assert s.boundary == {"too_long": 1}


def test_boundary_kinds() -> None:
    assert boundary_kind("Loafer", "Slip-On Loafer") == "too_long"
    assert boundary_kind("Slip-On Loafer", "Loafer") == "too_short"
    assert boundary_kind("Red Patent", "Patent Leather") == "overlapping"
    assert boundary_kind("Red", "Blue") == "other_span"
