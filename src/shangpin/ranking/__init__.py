"""Attribute importance from behaviour and session re-ranking (issue 6): the calls behind `shangpin rank ...`.

Ranking is not a product stage: it learns from a catalog plus an event log, and answers requests (a session so
far and candidates), not products. It lives in the model directory next to the product stages, in the folder
`rank_attributes/`, so one model directory can enrich products and rank them.
"""

from __future__ import annotations

import json
import logging
import math
import statistics
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from shangpin._util import atomic_write
from shangpin.config import parse_override
from shangpin.errors import ConfigError, DataError
from shangpin.ranking.catalog import RankCatalog, build_catalog
from shangpin.ranking.model import Ranking, RankModel, RankRequest, ndcg_at_k
from shangpin.records import Event
from shangpin.stages.base import Params
from shangpin.storage.catalog import ReadReport, read_products, read_records, read_rows, write_jsonl

__all__ = [
    "RANK_DIR",
    "RankModel",
    "RankRequest",
    "Ranking",
    "evaluate_requests",
    "load_catalog",
    "load_ranker",
    "ndcg_at_k",
    "ranking_to_dict",
    "read_answers",
    "read_requests",
    "request_from_dict",
    "train_ranker",
]

log = logging.getLogger(__name__)
RANK_DIR = "rank_attributes"


def ranker_params(overrides: Sequence[str]) -> dict[str, Any]:
    """`--set key=value` pairs as RankModel keyword arguments, checked against its parameters."""
    return _params(RankModel, overrides, RANK_DIR, "ranking")


def _params(cls: type[Params], overrides: Sequence[str], section: str, what: str) -> dict[str, Any]:
    """`--set key=value` pairs as keyword arguments of `cls`; an unknown key lists the valid ones."""
    valid = cls._param_names()
    params: dict[str, Any] = {}
    for text in overrides:
        parts, value = parse_override(text, default_stage=section)
        key = parts[-1]
        if key not in valid:
            raise ConfigError(
                f"unknown {what} parameter '{key}' in --set {text!r}; valid: {', '.join(valid)}"
            )
        params[key] = value
    return params


def load_catalog(path: Path, *, skip_invalid: bool = False, min_coverage: float = 0.2) -> RankCatalog:
    """Read a product file (JSONL or CSV) and index it for ranking."""
    report = ReadReport()
    catalog = build_catalog(
        read_products(path, skip_invalid=skip_invalid, report=report), min_coverage=min_coverage, source=path
    )
    if report.n_skipped:
        log.warning("%s", report.summary())
    return catalog


def read_event_files(paths: Sequence[Path], *, skip_invalid: bool = False) -> Iterator[Event]:
    from shangpin.storage.events import read_events

    for path in paths:
        report = ReadReport()
        yield from read_events(path, skip_invalid=skip_invalid, report=report)
        if report.n_skipped:
            log.warning("%s", report.summary())


def event_source(
    paths: Sequence[Path], db_url: str | None, *, since: float | None = None, skip_invalid: bool = False
) -> Iterator[Event]:
    """Events streamed from files, or from a database (newer than `since`, when given); exactly one of them."""
    if bool(paths) == bool(db_url):
        raise ConfigError(
            "expected the events either as files (--events FILE, repeatable) or from a database (--db URL), "
            f"found {'both' if paths else 'neither'}; pass one of them."
        )
    if paths:
        return read_event_files(paths, skip_invalid=skip_invalid)
    return stored_events(str(db_url), since=since)


def stored_events(db_url: str, *, since: float | None = None) -> Iterator[Event]:
    """Stream the events stored by `shangpin events ingest` (user ids are their salted hashes there)."""
    from shangpin.storage.events import EventStore

    with EventStore(db_url) as store:
        # Strictly newer than `since`: the model has already seen events at that very time.
        start = None if since is None else math.nextafter(since, math.inf)
        yield from store.iter_events(since=start)


def train_ranker(
    catalog: Path,
    model_dir: Path,
    *,
    events: Sequence[Path] = (),
    db_url: str | None = None,
    overrides: Sequence[str] = (),
    skip_invalid: bool = False,
) -> RankModel:
    """Learn attribute importance from a catalog and event files (or stored events) into `model_dir`/rank_attributes."""
    model = RankModel(**ranker_params(overrides))
    stream = event_source(events, db_url, skip_invalid=skip_invalid)
    index = load_catalog(catalog, skip_invalid=skip_invalid, min_coverage=model.min_coverage)
    model.fit(index, stream)
    model.save(model_dir / RANK_DIR)
    return model


def update_ranker(
    model_dir: Path,
    *,
    events: Sequence[Path] = (),
    db_url: str | None = None,
    catalog: Path | None = None,
    skip_invalid: bool = False,
) -> RankModel:
    """Fold new events into a trained ranker (no retraining on old events) and save it in place; from a
    database, only the events newer than the newest the model has seen."""
    model = load_ranker(model_dir)
    stream = event_source(events, db_url, since=model.t_ref_, skip_invalid=skip_invalid)
    index = (
        load_catalog(catalog, skip_invalid=skip_invalid, min_coverage=model.min_coverage) if catalog else None
    )
    model.update(stream, index)
    model.save(model_dir / RANK_DIR)
    return model


def load_ranker(model_dir: Path) -> RankModel:
    """The ranking model saved in a model directory."""
    return RankModel.load(model_dir / RANK_DIR)


def request_from_dict(obj: Mapping[str, Any], where: str) -> RankRequest:
    """A ranking request {"id", "category"?, "session_events": [...], "candidates": [id or {"id", "score"}]}."""
    from shangpin.storage.events import event_from_dict

    if not isinstance(obj, Mapping):
        raise DataError(f"{where}: expected a JSON object (a ranking request), found {type(obj).__name__}.")
    rid = obj.get("id")
    if rid is None or isinstance(rid, dict | list):
        raise DataError(
            f'{where}: a ranking request needs an "id" (string), found {rid!r}; give every request an id.'
        )
    raw = obj.get("candidates")
    if not isinstance(raw, list):
        raise DataError(
            f'{where}: "candidates" must be a list of product ids (or {{"id", "score"}} objects), found '
            f"{type(raw).__name__}."
        )
    candidates: list[str] = []
    base: dict[str, float] = {}
    for k, item in enumerate(raw):
        if isinstance(item, Mapping):
            if "id" not in item:
                raise DataError(
                    f'{where}: candidates[{k}] is an object without "id"; expected {{"id", "score"}}.'
                )
            pid = str(item["id"])
            if item.get("score") is not None:
                try:
                    base[pid] = float(item["score"])
                except (TypeError, ValueError) as exc:
                    raise DataError(
                        f"{where}: candidates[{k}].score must be a number, found {item['score']!r}."
                    ) from exc
        elif isinstance(item, str | int):
            pid = str(item)
        else:
            raise DataError(f"{where}: candidates[{k}] must be a product id, found {item!r}.")
        candidates.append(pid)
    session = obj.get("session_events") or []
    if not isinstance(session, list):
        raise DataError(
            f'{where}: "session_events" must be a list of events, found {type(session).__name__}.'
        )
    events: list[Event] = []
    for k, e in enumerate(session):
        if isinstance(e, Mapping):
            # A request's events belong to its session and arrive in order: both may go unsaid.
            defaults = {"session_id": str(rid), "timestamp": float(k)}
            e = {**defaults, **{key: value for key, value in e.items() if value is not None}}
        events.append(event_from_dict(e, f"{where} session_events[{k}]"))
    category = obj.get("category")
    return RankRequest(
        request_id=str(rid),
        candidates=candidates,
        events=sorted(events, key=lambda e: e.timestamp),
        category=str(category) if category else None,
        base=base,
    )


def read_requests(
    path: Path, *, skip_invalid: bool = False, report: ReadReport | None = None
) -> Iterator[RankRequest]:
    """Stream ranking requests from a JSONL file; bad lines raise DataError naming file and line."""
    return read_records(path, request_from_dict, kind="request", skip_invalid=skip_invalid, report=report)


def ranking_to_dict(ranking: Ranking) -> dict[str, Any]:
    """The answer contract: {"id", "ranking": [ids best first], "explanations": {id: {attribute: contribution}}}."""
    return {
        "id": ranking.request_id,
        "ranking": ranking.ranking,
        "explanations": ranking.explanations,
        "scores": ranking.scores,
        "category": ranking.category,
    }


def predict_requests(
    model_dir: Path, requests: Path, out: Path, *, skip_invalid: bool = False
) -> dict[str, Any]:
    """Rank every request of a file into `out` (one answer per line, input order); returns counts and latency."""
    model = load_ranker(model_dir)
    report = ReadReport()
    latencies: list[float] = []

    def answers() -> Iterator[dict[str, Any]]:
        for request in read_requests(requests, skip_invalid=skip_invalid, report=report):
            started = time.perf_counter()
            ranking = model.rank(request)
            latencies.append(time.perf_counter() - started)
            yield ranking_to_dict(ranking)

    with atomic_write(out) as fh:
        n = write_jsonl(answers(), fh)
    return {"requests": n, "skipped": report.n_skipped, "report": report, **latency_summary(latencies)}


def latency_summary(latencies: Sequence[float]) -> dict[str, float]:
    """p50 and p99 in milliseconds (0 for no requests)."""
    if not latencies:
        return {"p50_ms": 0.0, "p99_ms": 0.0}
    ordered = sorted(latencies)
    p99 = ordered[min(len(ordered) - 1, int(round(0.99 * (len(ordered) - 1))))]
    return {"p50_ms": round(statistics.median(ordered) * 1000, 3), "p99_ms": round(p99 * 1000, 3)}


def read_answers(path: Path) -> dict[str, dict[str, float]]:
    """Utilities per request from an answer file (lines {"id", "utilities": {product id: u in [0, 1]}})."""
    out: dict[str, dict[str, float]] = {}
    for line_no, row in read_rows(Path(path), kind="answer"):
        where = f"{path}:{line_no}"
        if isinstance(row, DataError):
            raise row
        if not isinstance(row, Mapping) or "id" not in row or not isinstance(row.get("utilities"), Mapping):
            raise DataError(
                f'{where}: expected {{"id": ..., "utilities": {{product id: utility}}}}, found {str(row)[:80]!r}.'
            )
        out[str(row["id"])] = {str(k): float(v) for k, v in row["utilities"].items()}
    return out


def evaluate_requests(
    model: RankModel, requests: Iterable[RankRequest], answers: Mapping[str, Mapping[str, float]], k: int = 10
) -> dict[str, float]:
    """Mean NDCG@k (gain 2^(5u) - 1, docs/metrics.md) over the requests that have answers, with latency."""
    scores: list[float] = []
    latencies: list[float] = []
    for request in requests:
        utility = answers.get(request.request_id)
        if utility is None:
            continue
        started = time.perf_counter()
        ranking = model.rank(request)
        latencies.append(time.perf_counter() - started)
        scores.append(ndcg_at_k(ranking.ranking, dict(utility), k))
    if not scores:
        raise DataError(
            "none of the requests has an answer (utilities) to score against; check the request ids."
        )
    return {
        f"ndcg_at_{k}": round(100 * statistics.fmean(scores), 2),
        "requests": len(scores),
        **latency_summary(latencies),
    }


def write_importance(model: RankModel, out: Path) -> dict[str, dict[str, float]]:
    importance = model.importance()
    with atomic_write(out) as fh:
        json.dump(importance, fh, indent=2, ensure_ascii=False)
    return importance


def simulate_files(
    catalog: Path,
    out: Path,
    *,
    weights_out: Path | None = None,
    requests_out: Path | None = None,
    answers_out: Path | None = None,
    overrides: Sequence[str] = (),
) -> dict[str, Any]:
    """Simulate sessions over a catalog: events to `out`, hidden weights to `weights_out` and, when asked,
    held-out requests with their utilities (the answer key) to `requests_out` / `answers_out`."""
    from shangpin.ranking.simulate import Simulator
    from shangpin.storage.events import event_to_dict

    params = _params(Simulator, overrides, "simulate", "simulator")
    if requests_out is not None:
        params.setdefault("requests", 1000)
    simulator = Simulator(**params)
    sim = simulator.run(load_catalog(catalog))
    with atomic_write(out) as fh:
        n_events = write_jsonl((event_to_dict(e) for e in sim.events), fh)
    weights_out = weights_out or out.with_name(out.name.split(".")[0] + ".weights.json")
    with atomic_write(weights_out) as fh:
        json.dump(sim.weights, fh, indent=2, ensure_ascii=False)
    summary: dict[str, Any] = {
        "events": n_events,
        "sessions": simulator.sessions,
        "weights": str(weights_out),
    }
    if requests_out is not None:
        answers_out = answers_out or requests_out.with_name(
            requests_out.name.split(".")[0] + ".answers.jsonl"
        )
        with atomic_write(requests_out) as fh:
            write_jsonl(
                (
                    {
                        "id": r.request_id,
                        "category": r.category,
                        "session_events": [event_to_dict(e) for e in r.events],
                        "candidates": r.candidates,
                    }
                    for r in sim.requests
                ),
                fh,
            )
        with atomic_write(answers_out) as fh:
            write_jsonl(
                (
                    {"id": r.request_id, "utilities": u}
                    for r, u in zip(sim.requests, sim.utilities, strict=True)
                ),
                fh,
            )
        summary.update(requests=len(sim.requests), answers=str(answers_out))
    return summary
