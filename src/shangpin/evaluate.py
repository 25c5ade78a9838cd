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


def with_unlisted_absent(gold: Product, unlisted_absent: Mapping[str, Iterable[str]] | None) -> Product:
    """`gold` with every attribute known for its category but missing from its gold marked known absent.

    The stricter reading of the ExtractGPT counting, in case held-out data lists absent attributes as "n/a":
    a value predicted for such an attribute then counts as NV instead of being ignored.
    """
    if unlisted_absent is None:
        return gold
    attrs: dict[str, AttributeValue | None] = dict.fromkeys(unlisted_absent.get(gold.category_path or "", ()))
    attrs.update(gold.attributes)
    return dataclasses.replace(gold, attributes=attrs)


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


# --------------------------------------------------------------------------- categorisation (MWPD 2020 task 2)


def _level(path: str, k: int) -> str | None:
    from shangpin.taxonomy import SEP, split_path

    names = split_path(path)
    return SEP.join(names[:k]) if len(names) >= k else None


def _depth(paths: Iterable[str]) -> int:
    from shangpin.taxonomy import split_path

    return max((len(split_path(p)) for p in paths), default=0)


def category_scores(gold: Sequence[str], pred: Sequence[str]) -> dict[str, float]:
    """MWPD scoring: weighted F1 (classes weighted by gold support) at each level of the path, averaged over the
    levels; plus leaf (exact path) accuracy. Percent.

    A product counts at level k when its gold path has k levels; a predicted path shorter than that is wrong there.
    Weighted P/R/F1 as sklearn's `average="weighted"` (what the challenge's scorer calls), zero_division 0.
    """
    from sklearn.metrics import precision_recall_fscore_support

    if len(gold) != len(pred):
        raise ValueError(f"expected as many predictions as gold paths, found {len(pred)} and {len(gold)}")
    out: dict[str, float] = {}
    depth = _depth(gold)
    f1s = []
    for k in range(1, depth + 1):
        pairs = [(gl, _level(p, k) or "") for g, p in zip(gold, pred, strict=True) if (gl := _level(g, k))]
        if not pairs:
            continue
        g_k, p_k = zip(*pairs, strict=True)
        p_, r_, f_, _ = precision_recall_fscore_support(g_k, p_k, average="weighted", zero_division=0)
        out[f"level{k}_weighted_f1"] = 100 * float(f_)
        out[f"level{k}_weighted_precision"] = 100 * float(p_)
        out[f"level{k}_weighted_recall"] = 100 * float(r_)
        f1s.append(100 * float(f_))
    out["weighted_f1"] = sum(f1s) / len(f1s) if f1s else 0.0
    out["leaf_accuracy"] = (
        100 * sum(g == p for g, p in zip(gold, pred, strict=True)) / len(gold) if gold else 0.0
    )
    return {"weighted_f1": out.pop("weighted_f1"), "leaf_accuracy": out.pop("leaf_accuracy"), **out}


def category_report(
    stage: str, gold: Sequence[Product], pred: Sequence[Product], taxonomy: Any = None
) -> StageReport:
    """The categorisation StageReport: MWPD metrics, abstention coverage/precision, a per-level classification
    report, the most frequent confusions, and a level-1 confusion-matrix figure."""
    from sklearn.metrics import precision_recall_fscore_support

    from shangpin.stages.base import StageReport

    pairs = [(g, p) for g, p in zip(gold, pred, strict=True) if g.category is not None and g.category.path]
    report = StageReport(stage=stage)
    if not pairs:
        report.notes.append("No gold product has a category: nothing to score.")
        return report
    g_paths = [g.category_path or "" for g, _ in pairs]
    p_paths = [p.category_path or "" for _, p in pairs]
    report.metrics = category_scores(g_paths, p_paths)
    kept = [
        (g.category_path, p.category_path)
        for g, p in pairs
        if p.category is not None and not p.category.abstained
    ]
    report.metrics["coverage"] = 100 * len(kept) / len(pairs)
    report.metrics["precision_when_not_abstained"] = (
        100 * sum(g == p for g, p in kept) / len(kept) if kept else 0.0
    )
    report.metrics["n_products"] = float(len(pairs))
    if taxonomy is not None:
        unknown = Counter(g for g in g_paths if g not in taxonomy)
        if unknown:
            top = ", ".join(f"'{p}' ({n})" for p, n in unknown.most_common(3))
            report.notes.append(
                f"{sum(unknown.values())} gold products have a category that is not in the model's taxonomy "
                f"{taxonomy.name} (the model cannot predict it): {top}."
            )
    depth = _depth(g_paths)
    rows: list[dict[str, Any]] = []
    for k in range(1, depth + 1):
        lv = [(gl, _level(p, k) or "") for g, p in zip(g_paths, p_paths, strict=True) if (gl := _level(g, k))]
        labels = sorted({gl for gl, _ in lv})
        pr, rc, f1, sup = precision_recall_fscore_support(
            [a for a, _ in lv], [b for _, b in lv], labels=labels, zero_division=0
        )
        level_rows = [
            {
                "level": k,
                "category": lab,
                "precision": 100 * float(a),
                "recall": 100 * float(b),
                "f1": 100 * float(c),
                "support": int(d),
            }
            for lab, a, b, c, d in zip(labels, pr, rc, f1, sup, strict=True)
        ]
        rows += sorted(level_rows, key=lambda r: -r["support"])
    report.tables["Per-level classification report"] = rows
    confusions = Counter((g, p) for g, p in zip(g_paths, p_paths, strict=True) if g != p)
    report.tables["Most frequent confusions"] = [
        {"gold": g, "predicted": p, "count": n} for (g, p), n in confusions.most_common(30)
    ]
    svg = _confusion_svg([_level(g, 1) or "" for g in g_paths], [_level(p, 1) or "" for p in p_paths])
    if svg:
        report.figures["Confusion matrix, level 1 (rows: gold, columns: predicted; row-normalised)"] = svg
    return report


def _confusion_svg(gold: Sequence[str], pred: Sequence[str], max_classes: int = 30) -> str:
    """Row-normalised confusion matrix of the `max_classes` most frequent gold classes as inline SVG."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return ""
    import io

    import numpy as np

    labels = [c for c, _ in Counter(gold).most_common(max_classes)]
    index = {c: i for i, c in enumerate(labels)}
    other = len(labels)
    m = np.zeros((len(labels), len(labels) + 1))
    for g, p in zip(gold, pred, strict=True):
        if g in index:
            m[index[g], index.get(p, other)] += 1
    m = m / np.maximum(m.sum(1, keepdims=True), 1)
    short = [lab if len(lab) <= 32 else lab[:30] + "…" for lab in labels]
    size = 3 + 0.28 * len(labels)
    fig, ax = plt.subplots(figsize=(size + 1.5, size))
    im = ax.imshow(m, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(labels) + 1), [*short, "(other)"], rotation=90, fontsize=7)
    ax.set_yticks(range(len(labels)), short, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("gold")
    fig.colorbar(im, ax=ax, fraction=0.03)
    fig.tight_layout()
    buf = io.StringIO()
    fig.savefig(buf, format="svg")
    plt.close(fig)
    text = buf.getvalue()
    return text[text.index("<svg") :]


# --------------------------------------------------------------------------- tags (Annif-style)


def tag_scores(gold: Sequence[Iterable[str]], pred: Sequence[Sequence[str]]) -> dict[str, float]:
    """Annif-style tag metrics in percent, as docs/metrics.md defines them.

    `pred` holds each product's returned tags, best first. F1@5: per product, precision (correct / number returned,
    at most 5) and recall (correct / gold) of the top 5 returned, F1 averaged over products. NDCG@10 with binary
    gains. P@k: correct among the top k divided by k (returning fewer than k counts the gap as wrong). Products
    without gold tags are left out. Tags compare as exact strings.
    """
    import math

    if len(gold) != len(pred):
        raise ValueError(f"expected as many predictions as gold tag sets, found {len(pred)} and {len(gold)}")
    sums: dict[str, float] = defaultdict(float)
    n = 0
    for g_tags, p_tags in zip(gold, pred, strict=True):
        g = set(g_tags)
        if not g:
            continue
        n += 1
        top5 = list(p_tags[:5])
        hit5 = sum(t in g for t in top5)
        p5 = hit5 / len(top5) if top5 else 0.0
        r5 = hit5 / len(g)
        sums["f1@5"] += 2 * p5 * r5 / (p5 + r5) if p5 + r5 else 0.0
        dcg = sum(1 / math.log2(i + 2) for i, t in enumerate(p_tags[:10]) if t in g)
        idcg = sum(1 / math.log2(i + 2) for i in range(min(len(g), 10)))
        sums["ndcg@10"] += dcg / idcg
        for k in (1, 3, 5):
            sums[f"p@{k}"] += sum(t in g for t in p_tags[:k]) / k
    keys = ("f1@5", "ndcg@10", "p@1", "p@3", "p@5")
    return {k.replace("@", "_at_"): 100 * sums[k] / n if n else 0.0 for k in keys}


def tag_macro_f1(
    gold: Sequence[Iterable[str]], pred: Sequence[Iterable[str]], labels: Iterable[str] | None = None
) -> tuple[float, list[dict[str, Any]]]:
    """Macro-F1 over tags (percent) of the returned tag sets, and a per-tag table (support, P, R, F1).

    Averaged over `labels` (default: every tag in the gold), so rare tags weigh as much as frequent ones; a tag
    that is never returned has F1 0.
    """
    tp: Counter[str] = Counter()
    fp: Counter[str] = Counter()
    fn: Counter[str] = Counter()
    for g_tags, p_tags in zip(gold, pred, strict=True):
        g, p = set(g_tags), set(p_tags)
        for t in g & p:
            tp[t] += 1
        for t in p - g:
            fp[t] += 1
        for t in g - p:
            fn[t] += 1
    names = sorted(set(labels) if labels is not None else set(tp) | set(fn))
    rows: list[dict[str, Any]] = []
    for t in names:
        prec = tp[t] / (tp[t] + fp[t]) if tp[t] + fp[t] else 0.0
        rec = tp[t] / (tp[t] + fn[t]) if tp[t] + fn[t] else 0.0
        f1 = 2 * prec * rec / (prec + rec) if prec + rec else 0.0
        rows.append(
            {"tag": t, "support": tp[t] + fn[t], "precision": 100 * prec, "recall": 100 * rec, "f1": 100 * f1}
        )
    macro = sum(float(r["f1"]) for r in rows) / len(rows) if rows else 0.0
    return macro, sorted(rows, key=lambda r: (-r["support"], r["tag"]))
