"""Metrics exactly as ../shared/docs/metrics.md defines them, and `evaluate(pipeline, products)`."""

from __future__ import annotations

import copy
import dataclasses
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from shangpin._util import batched
from shangpin.records import INPUT_FIELDS, AttributeValue, Product

if TYPE_CHECKING:
    from shangpin.pipeline import Pipeline
    from shangpin.stages.base import StageReport

OUTCOMES = ("NN", "NV", "VN", "VC", "VW")


def extraction_outcome(gold: AttributeValue | None, pred: AttributeValue | None) -> str:
    """ExtractGPT outcome of one (product, attribute) pair whose attribute is in the gold.

    Gold None = known absent. Compared as exact strings after stripping the gold's surrounding whitespace.
    """
    if gold is None:
        return "NN" if pred is None else "NV"
    if pred is None:
        return "VN"
    accepted = {v.strip() for v in (gold.value, *gold.alternatives)}
    return "VC" if pred.value in accepted else "VW"


def prf(counts: Mapping[str, int]) -> tuple[float, float, float]:
    """Precision, recall and F1 in percent from outcome counts (0 where undefined)."""
    vc, vw = counts.get("VC", 0), counts.get("VW", 0)
    p_den = counts.get("NV", 0) + vc + vw
    r_den = counts.get("VN", 0) + vc + vw
    p = 100.0 * vc / p_den if p_den else 0.0
    r = 100.0 * vc / r_den if r_den else 0.0
    f = 2 * p * r / (p + r) if p + r else 0.0
    return p, r, f


@dataclass
class ExtractionScorer:
    """Accumulates ExtractGPT outcomes per (category, attribute) cell, batch by batch.

    Attributes:
        cells: (category, attribute) -> outcome counts.
        boundary: counts of wrong-value kinds (VW split into too long / too short / overlapping / elsewhere).
    """

    cells: dict[tuple[str, str], Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    boundary: Counter[str] = field(default_factory=Counter)
    errors: list[dict[str, Any]] = field(default_factory=list)
    max_errors: int = 200

    def add(self, gold: Product, pred: Mapping[str, AttributeValue]) -> None:
        category = gold.category_path or "(none)"
        for name, gold_value in gold.attributes.items():
            p = pred.get(name)
            outcome = extraction_outcome(gold_value, p)
            self.cells[(category, name)][outcome] += 1
            if outcome == "VW" and gold_value is not None and p is not None:
                kind = boundary_kind(gold_value.value.strip(), p.value)
                self.boundary[kind] += 1
            if outcome in ("NV", "VN", "VW") and len(self.errors) < self.max_errors:
                self.errors.append(
                    {
                        "id": gold.product_id,
                        "category": category,
                        "attribute": name,
                        "outcome": outcome,
                        "gold": None if gold_value is None else gold_value.value,
                        "predicted": None if p is None else p.value,
                        "score": None if p is None else round(p.score, 3),
                        "title": gold.title,
                    }
                )

    def totals(self) -> Counter[str]:
        total: Counter[str] = Counter()
        for c in self.cells.values():
            total.update(c)
        return total

    def metrics(self) -> dict[str, float]:
        """micro_* pool all cells; macro_* average the cells' scores."""
        p, r, f = prf(self.totals())
        cells = [
            prf(c)
            for c in self.cells.values()
            if c.get("VC", 0) + c.get("VW", 0) + c.get("VN", 0) + c.get("NV", 0)
        ]
        n = len(cells) or 1
        out = {"micro_precision": p, "micro_recall": r, "micro_f1": f}
        out["macro_precision"] = sum(c[0] for c in cells) / n
        out["macro_recall"] = sum(c[1] for c in cells) / n
        out["macro_f1"] = sum(c[2] for c in cells) / n
        out.update({k.lower(): float(v) for k, v in self.totals().items()})
        return out

    def cell_table(self) -> list[dict[str, Any]]:
        rows = []
        for (cat, attr), c in sorted(self.cells.items()):
            p, r, f = prf(c)
            rows.append(
                {
                    "category": cat,
                    "attribute": attr,
                    **{k: c.get(k, 0) for k in OUTCOMES},
                    "precision": round(p, 1),
                    "recall": round(r, 1),
                    "f1": round(f, 1),
                }
            )
        return rows


def boundary_kind(gold: str, pred: str) -> str:
    """Classify a wrong value: prediction longer than gold (contains it), shorter (inside it), overlapping, other."""
    g, p = gold.lower(), pred.lower()
    if g in p:
        return "too_long"
    if p in g:
        return "too_short"
    gw, pw = set(g.split()), set(p.split())
    if gw & pw:
        return "overlapping"
    return "other_span"


def evaluate(
    pipeline: Pipeline,
    products: Iterable[Product],
    batch_size: int = 256,
    stages: Sequence[str] | None = None,
) -> dict[str, StageReport]:
    """Run the pipeline on copies of gold products and let each stage score its own output.

    Stage outputs are cleared on the copies first, so a stage never sees the gold of the field it predicts.
    Returns stage kind -> StageReport.
    """
    gold_all: list[Product] = []
    pred_all: list[Product] = []
    selected = [s for s in pipeline.stages if stages is None or s.name in stages]
    for batch in batched(products, batch_size):
        preds = [_strip_outputs(copy.deepcopy(p), pipeline.assigns) for p in batch]
        preds = list(pipeline.pipe(preds, batch_size=batch_size, stages=[s.name for s in selected]))
        gold_all.extend(batch)
        pred_all.extend(preds)
    return {s.name: s.evaluate(gold_all, pred_all) for s in selected}


def _strip_outputs(product: Product, fields: set[str]) -> Product:
    """Clear stage-only output fields; input fields a stage assigns (category, tags) are overwritten anyway."""
    for f in dataclasses.fields(Product):
        if f.name in fields and f.name not in INPUT_FIELDS and f.default_factory is not dataclasses.MISSING:
            setattr(product, f.name, f.default_factory())
    return product
