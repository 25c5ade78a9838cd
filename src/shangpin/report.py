"""Self-contained HTML evaluation report: one page per run, rendered from the stages' `StageReport`s.

The code is generic: it renders whatever metrics, tables, notes and (optional) inline SVG figures a stage
puts in its report, so new stages need no change here. The page has no external assets and works offline.
"""

from __future__ import annotations

import functools
import json
import math
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jinja2 import Environment, PackageLoader, select_autoescape

from shangpin._util import atomic_write

if TYPE_CHECKING:
    from shangpin.stages.base import StageReport

__all__ = ["COLLAPSE_AFTER", "render_html", "write_report"]

#: Tables with more rows than this show only the first COLLAPSE_AFTER rows until expanded.
COLLAPSE_AFTER = 50

#: Metrics shown first (as large headline numbers) when present, in this order.
HEADLINE_METRICS = (
    "weighted_f1",
    "leaf_accuracy",
    "micro_f1",
    "macro_f1",
    "f1",
    "micro_precision",
    "precision",
    "micro_recall",
    "recall",
)

#: Tables with all these columns get an inline bar next to the F1 value.
PRF_COLUMNS = ("precision", "recall", "f1")

#: Outcome codes that tint a row when a table has an "outcome" column.
TINTED_OUTCOMES = ("VW", "VN", "NV")

_PERCENT_TOKENS = {"precision", "recall", "f1"}
_UPPER_TOKENS = {"f1", "vc", "vw", "vn", "nv", "nn", "ndcg", "mrr", "map", "auc", "id", "url"}


@functools.cache
def _environment() -> Environment:
    env = Environment(
        loader=PackageLoader("shangpin", "templates"),
        autoescape=select_autoescape(),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.globals["zip"] = zip
    return env


def render_html(
    reports: Mapping[str, StageReport],
    *,
    title: str,
    model_info: Mapping[str, Any] | None = None,
    data_info: Mapping[str, Any] | None = None,
) -> str:
    """Render stage name -> StageReport as one self-contained HTML page.

    Args:
        reports: stage name -> its evaluation report, rendered in this order.
        title: page heading and <title>.
        model_info: shown in a collapsible section (stage versions, params, training time, data hash...).
        data_info: shown near the top (data set path, sizes, hash...).
    """
    stages = [_stage_view(i, name, report) for i, (name, report) in enumerate(reports.items())]
    template = _environment().get_template("report.html")
    return template.render(
        title=title,
        generated=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        stages=stages,
        data_info=_info_view(data_info),
        model_info=_info_view(model_info),
        collapse_after=COLLAPSE_AFTER,
    )


def write_report(
    path: Path,
    reports: Mapping[str, StageReport],
    *,
    title: str,
    model_info: Mapping[str, Any] | None = None,
    data_info: Mapping[str, Any] | None = None,
) -> None:
    """Render the report (see `render_html`) and write it to `path` atomically, as UTF-8."""
    html = render_html(reports, title=title, model_info=model_info, data_info=data_info)
    path = Path(path)
    with atomic_write(path) as fh:
        fh.write(html)


# --------------------------------------------------------------------------- view models


def _stage_view(index: int, name: str, report: StageReport) -> dict[str, Any]:
    headline, rest = _split_metrics(report.metrics)
    figures = report.figures
    return {
        "name": name,
        "kind": report.stage,
        "id": f"stage-{index}-{_slug(name)}",
        "headline": headline,
        "metrics": rest,
        "tables": [
            _table_view(f"t{index}-{j}", str(title), rows)
            for j, (title, rows) in enumerate(report.tables.items())
        ],
        "notes": [str(n) for n in report.notes],
        "figures": [(str(t), str(svg)) for t, svg in figures.items()],
    }


def _split_metrics(metrics: Mapping[str, float]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Headline: the HEADLINE_METRICS present, in that order, else the stage's first metric; then the rest."""
    keys = [k for k in HEADLINE_METRICS if k in metrics] or list(metrics)[:1]
    headline = [_metric_view(k, metrics[k]) for k in keys]
    rest = [_metric_view(k, v) for k, v in metrics.items() if k not in keys]
    return headline, rest


def _metric_view(key: str, value: Any) -> dict[str, Any]:
    percent = _is_percent(key)
    text = _format_metric(value, percent=percent)
    bar = None
    if percent and _is_number(value) and math.isfinite(value):
        bar = _bar(float(value))
    return {"key": key, "label": _label(key), "text": text, "percent": percent and text != "—", "bar": bar}


def _table_view(table_id: str, title: str, rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    columns: list[str] = []
    seen: set[str] = set()
    for row in rows:
        for key in row:
            if key not in seen:
                seen.add(key)
                columns.append(key)
    numeric = {c: _numeric_column(rows, c) for c in columns}
    bar_column = "f1" if all(c in seen for c in PRF_COLUMNS) and numeric["f1"] else None
    has_outcome = "outcome" in seen
    view_rows = []
    for row in rows:
        cells = [_cell_view(row.get(c), numeric[c], with_bar=c == bar_column) for c in columns]
        outcome = str(row.get("outcome")) if has_outcome else ""
        view_rows.append({"cells": cells, "outcome": outcome if outcome in TINTED_OUTCOMES else ""})
    return {
        "id": table_id,
        "title": title,
        "columns": [{"name": c, "label": c, "numeric": numeric[c]} for c in columns],
        "head": view_rows[:COLLAPSE_AFTER],
        "rest": view_rows[COLLAPSE_AFTER:],
        "n_rows": len(view_rows),
        "has_outcome": has_outcome,
    }


def _cell_view(value: Any, numeric: bool, *, with_bar: bool = False) -> dict[str, Any]:
    if value is None:
        return {"text": "", "sort": None, "numeric": numeric, "na": True, "bar": None}
    if numeric and _is_number(value):
        finite = math.isfinite(value)
        return {
            "text": _format_number(value),
            "sort": repr(value) if finite else None,
            "numeric": True,
            "na": False,
            "bar": _bar(float(value)) if with_bar and finite else None,
        }
    if isinstance(value, Mapping | list | tuple):
        text = json.dumps(value, ensure_ascii=False, default=str)
    else:
        text = str(value)
    return {"text": text, "sort": None, "numeric": False, "na": False, "bar": None}


def _info_view(info: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """Top-level keys become <dt>; scalars are shown as text, nested values as pretty JSON."""
    out = []
    for key, value in (info or {}).items():
        if isinstance(value, Mapping | list | tuple):
            out.append({"key": str(key), "text": _json(value), "pre": True})
        else:
            out.append({"key": str(key), "text": "" if value is None else str(value), "pre": False})
    return out


# --------------------------------------------------------------------------- formatting helpers


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _numeric_column(rows: Sequence[Mapping[str, Any]], column: str) -> bool:
    values = [row.get(column) for row in rows]
    present = [v for v in values if v is not None]
    return bool(present) and all(_is_number(v) for v in present)


def _format_number(value: float) -> str:
    """Integers as they are; floats with 1 decimal from 10 up, else 2 (tiny ones: 2 significant digits)."""
    if isinstance(value, int):
        return str(value)
    if not math.isfinite(value):
        return str(value)
    magnitude = abs(value)
    if magnitude >= 10:
        return f"{value:.1f}"
    if 0 < magnitude < 0.01:
        return f"{value:.2g}"
    return f"{value:.2f}"


def _format_metric(value: Any, *, percent: bool) -> str:
    """Percentages with 1 decimal, whole numbers (counts) without decimals, the rest as table numbers."""
    if value is None:
        return "—"
    if not _is_number(value) or not math.isfinite(value):
        return str(value)
    if percent:
        return f"{value:.1f}"
    if float(value).is_integer():
        return str(int(value))
    return _format_number(value)


def _is_percent(key: str) -> bool:
    return any(token in _PERCENT_TOKENS for token in key.lower().split("_"))


def _label(key: str) -> str:
    words = [w.upper() if w.lower() in _UPPER_TOKENS else w for w in key.split("_") if w]
    return " ".join(words) or key


def _bar(value: float) -> dict[str, Any]:
    """Width (0-100, percent scale) and a level class: weak (<50), fair (<80), good."""
    width = max(0.0, min(100.0, value))
    level = "weak" if value < 50 else "fair" if value < 80 else "good"
    return {"width": f"{width:.1f}", "level": level}


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "stage"


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, indent=2, default=str)
