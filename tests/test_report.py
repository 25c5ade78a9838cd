"""Tests for the HTML evaluation report (no model needed)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from shangpin.report import COLLAPSE_AFTER, render_html, write_report
from shangpin.stages.base import StageReport

INJECTION = "<script>alert(1)</script>"


def _extraction_report() -> StageReport:
    cells = [
        {
            "category": f"服装 > 上衣 {i}",
            "attribute": "颜色" if i % 2 else "Material",
            "NN": i,
            "NV": 1,
            "VN": 2,
            "VC": 10 + i,
            "VW": 3,
            "precision": round(100 * (10 + i) / (14 + i), 1),
            "recall": round(100 * (10 + i) / (15 + i), 1),
            "f1": round(30.0 + i, 1),
        }
        for i in range(60)
    ]
    errors = [
        {
            "id": "p1",
            "outcome": "VW",
            "gold": "红色",
            "predicted": INJECTION,
            "score": 0.8731,
            "title": "纯棉T恤",
        },
        {"id": "p2", "outcome": "VN", "gold": "cotton", "predicted": None, "score": None, "title": "Shirt"},
        {"id": "p3", "outcome": "NV", "gold": None, "predicted": "blue", "score": 0.0042, "title": "Cap"},
    ]
    return StageReport(
        stage="extract_attributes",
        metrics={
            "micro_precision": 81.234,
            "micro_recall": 70.0,
            "micro_f1": 74.987,
            "macro_precision": 77.5,
            "macro_recall": 66.6,
            "macro_f1": 70.12,
            "vc": 1234.0,
            "vw": 56.0,
        },
        tables={
            "Per category and attribute": cells,
            "Wrong values (VW) by kind": [{"kind": "too_long", "count": 3, "share": 60.0}],
            "Errors (first 200)": errors,
            "Empty table": [],
        },
        notes=["ExtractGPT counting: P = VC/(NV+VC+VW) & more."],
    )


def _category_report() -> StageReport:
    report = StageReport(
        stage="categorize",
        metrics={"accuracy": 91.5, "top3_accuracy": 97.26, "n": 300.0},
        tables={"Confusions": [{"gold": "鞋", "predicted": "靴子", "count": 7}]},
    )
    return report


def _render(**kwargs: Any) -> str:
    reports = {"extract_attributes": _extraction_report(), "categorize": _category_report()}
    return render_html(reports, title="评估报告 run 7", **kwargs)


def test_write_report_is_self_contained_utf8(tmp_path: Path) -> None:
    path = tmp_path / "out" / "report.html"
    write_report(
        path,
        {"extract_attributes": _extraction_report()},
        title="评估报告",
        model_info={"trained_at": "2024-05-01T12:00:00", "params": {"lr": 3e-5, "模型": "minilm"}},
        data_info={"path": "data/test.jsonl", "products": 300},
    )
    raw = path.read_bytes()
    html = raw.decode("utf-8")
    assert html.lstrip().lower().startswith("<!doctype html>")
    assert '<meta charset="utf-8">' in html
    assert "评估报告" in html and "服装 &gt; 上衣 3" in html and "颜色" in html
    # No external resources: nothing is fetched over the network or from other files.
    assert not re.search(r"""(src|href)=["'](https?:)?//""", html)
    assert "<link" not in html and "@import" not in html and "url(" not in html
    # No temp file left behind by the atomic write.
    assert [p.name for p in path.parent.iterdir()] == ["report.html"]
    assert path.stat().st_mode & 0o777 == 0o644


def test_cell_content_is_escaped() -> None:
    html = _render()
    assert INJECTION not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    # Notes and titles are escaped too.
    assert "P = VC/(NV+VC+VW) &amp; more." in html


def test_headline_metrics_come_first_and_are_formatted() -> None:
    html = _render()
    card = html[html.index('id="summary"') :]
    card = card[: card.index("</section>")]
    order = [card.index(f'title="{k}"') for k in ("micro_f1", "macro_f1", "micro_precision", "micro_recall")]
    assert order == sorted(order)
    assert order[-1] < card.index('title="macro_precision"') < card.index('title="vc"')
    assert "75.0<small>%</small>" in card  # micro_f1 74.987 -> 1 decimal
    assert ">1234<" in card  # counts without decimals
    # A later stage's metrics render without any code change.
    assert 'title="top3_accuracy"' in card and "97.3" in card


def test_long_table_is_collapsed() -> None:
    html = _render()
    start = html.index(">Per category and attribute<")
    section = html[start : html.index("</details>", start)]
    head = section[section.index('<tbody class="head">') : section.index('<tbody class="rest">')]
    rest = section[section.index('<tbody class="rest">') :]
    assert head.count("<tr") == COLLAPSE_AFTER
    assert rest.count("<tr") == 60 - COLLAPSE_AFTER
    assert '<details class="more">' in section and "Show all 60 rows" in section
    # Short tables are not collapsed.
    short = html[html.index(">Wrong values (VW) by kind<") : html.index(">Errors (first 200)<")]
    assert "<details" not in short and 'class="rest"' not in short


def test_numeric_cells_sortable_and_f1_bars() -> None:
    html = _render()
    assert 'data-type="num"' in html and "addEventListener" in html and "sortTable" in html
    # f1 of the first row (30.0) gets a bar; floats are formatted, ints are not.
    bar = '<span class="bar"><span class="weak" style="width: 30.0%"></span></span>30.0</td>'
    assert bar in html
    assert '<td class="num" data-v="0.8731">0.87</td>' in html
    assert '<td class="num" data-v="0.0042">0.0042</td>' in html
    assert '<td class="num" data-v="7">7</td>' in html
    # The table without precision/recall/f1 columns has no bars.
    kinds = html[html.index(">Wrong values (VW) by kind<") : html.index(">Errors (first 200)<")]
    assert 'class="bar"' not in kinds


def test_outcome_rows_are_tinted() -> None:
    html = _render()
    for outcome in ("VW", "VN", "NV"):
        assert f'<tr class="o-{outcome}">' in html
    # None cells render as empty "missing" cells.
    assert '<td class="na"></td>' in html


def test_model_and_data_info_sections() -> None:
    model_info = {"params": {"lr": 3e-5, "模型": "minilm"}, "data_hash": "abc123"}
    html = _render(model_info=model_info, data_info={"n": 5})
    model = html[html.index('id="model"') :]
    assert "<details" in model and "<summary>Model info</summary>" in model
    assert "<dt>data_hash</dt>" in model and "abc123" in model
    assert "<pre>{\n  &#34;lr&#34;: 3e-05,\n  &#34;模型&#34;: &#34;minilm&#34;\n}</pre>" in model
    assert 'id="data"' in html
    without = _render()
    assert 'id="model"' not in without and 'id="data"' not in without


def test_figures_are_rendered_unescaped() -> None:
    report = _category_report()
    svg = '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 10 10"><rect width="10" height="10"/></svg>'
    report.figures = {"Calibration <curve>": svg}  # type: ignore[attr-defined]
    html = render_html({"categorize": report}, title="t")
    assert svg in html
    assert "Calibration &lt;curve&gt;" in html


@pytest.mark.parametrize("rows", [[], [{"a": None}], [{"a": 1, "b": "x"}, {"b": "y", "c": [1, "二"]}]])
def test_odd_tables_render(rows: list[dict[str, Any]]) -> None:
    html = render_html({"s": StageReport(stage="s", tables={"T": rows})}, title="t")
    assert ">T<" in html
    if len(rows) == 2:
        assert "[1, &#34;二&#34;]" in html  # nested values as JSON; missing keys as empty cells
        assert html.count('<td class="na') == 2
