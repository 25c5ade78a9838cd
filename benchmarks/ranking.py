"""Benchmark: attribute importance from behaviour and session re-ranking (issue 6).

Simulated shoppers over a real catalog (fashion styles.csv from ../shared, else the demo catalog): the simulator
writes a training log and held-out requests whose utilities are known. In the same run, on the same log and
features: random, popularity, equal weights, shangpin's learned weights, the simulator's hidden weights (an
upper reference) and LightGBM LambdaMART. Reports NDCG@10 (gain 2^(5u) - 1), importance recovery (Spearman rho
against the hidden weights on categories with enough sessions), training time, rank latency and peak RSS.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/ranking.py [--sessions 20000] [--requests 2000] [--seeds 7,8,9]
        [--variants default,shifted,third,cascade]

Spearman rho over a handful of attributes moves by about 0.1 between simulator seeds, and NDCG closure by
20 points at 3,000 sessions: compare configurations over several `--seeds` (a mean +- sd table is printed). `default`, `shifted` and `third` are
click models of `shangpin simulate`; `cascade` is another simulator altogether (benchmarks/cascade_sim.py: leaves'
weights drawn independently and parents' their mean, shop-wide preferences, popularity-ordered lists, cascade clicks).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import resource
import statistics
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import numpy as np
from cascade_sim import cascade_simulation
from scipy.stats import spearmanr

from shangpin.ranking import latency_summary, load_catalog, ranker_params
from shangpin.ranking.catalog import RankCatalog
from shangpin.ranking.features import ACTION_WEIGHTS, choices, features, session_evidence
from shangpin.ranking.model import NodeFit, RankModel, RankRequest, group_sessions, ndcg_at_k
from shangpin.ranking.simulate import Simulation, Simulator

ROOT = Path(__file__).resolve().parent.parent
FASHION = ROOT.parent / "shared" / "data" / "fashion" / "styles.csv"
DEMO = ROOT / "demo" / "rank_catalog.jsonl"
MIN_SESSIONS = 200
VARIANTS: dict[str, dict[str, Any]] = {
    "default": {},
    "shifted": {  # another click model: steeper position bias, flatter clicks, fewer query words, flatter weights
        "position_decay": 1.2,
        "click_sharpness": 6.0,
        "click_midpoint": 0.45,
        "spread": 1.0,
        "query_rate": 0.2,
        "list_size": 30,
    },
    "third": {  # a third click model, between the two, with shoppers closer to their category's weights
        "position_decay": 1.0,
        "click_sharpness": 8.0,
        "click_midpoint": 0.5,
        "spread": 0.7,
        "concentration": 50.0,
        "query_rate": 0.35,
        "list_size": 24,
    },
}
CASCADE = "cascade"
"""Another simulator altogether (benchmarks/cascade_sim.py), not a setting of `Simulator`."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=20000)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument(
        "--variants",
        default="default,shifted",
        help=f"simulator settings, comma-separated, of {', '.join([*VARIANTS, CASCADE])}",
    )
    parser.add_argument(
        "--seeds", default="7", help="simulator seeds, comma-separated (7 = the tables above)"
    )
    parser.add_argument("--catalog", type=Path, default=FASHION if FASHION.exists() else DEMO)
    parser.add_argument(
        "--set", action="append", default=[], help="ranking parameter, e.g. prior_strength=1.0"
    )
    args = parser.parse_args()
    catalog = load_catalog(args.catalog, skip_invalid=True)
    print(
        f"catalog {args.catalog.name}: {len(catalog)} products, {len(catalog.nodes)} category nodes, "
        f"attributes {catalog.attributes}"
    )
    results: dict[str, list[dict[str, float]]] = defaultdict(list)
    seeds = [int(s) for s in args.seeds.split(",")]
    for seed in seeds:
        for variant in args.variants.split(","):
            results[variant].append(
                run(variant, catalog, args.sessions, args.requests, ranker_params(args.set), seed=seed)
            )
    if len(seeds) > 1:
        print(
            f"\n== over simulator seeds {seeds}: mean (sd)\n| simulator | learned | equal | hidden | closure | rho |"
        )
        print("|---|---|---|---|---|---|")
        for variant, runs in results.items():
            cells = [
                f"{statistics.fmean(v):.4f} ({statistics.stdev(v):.4f})"
                for k in ("learned", "equal", "hidden", "closure", "rho")
                for v in [[r[k] for r in runs]]
            ]
            print(f"| {variant} | " + " | ".join(cells) + " |")
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


def run(
    variant: str, catalog: RankCatalog, sessions: int, n_requests: int, params: dict[str, Any], seed: int = 7
) -> dict[str, float]:
    if variant == CASCADE:
        sim = cascade_simulation(catalog, sessions=sessions, requests=n_requests, seed=seed)
    else:
        sim = Simulator(sessions=sessions, requests=n_requests, seed=seed, **VARIANTS[variant]).run(catalog)
    print(
        f"\n== simulator '{variant}', seed {seed}: {sessions} sessions, {len(sim.events)} events, "
        f"{n_requests} requests"
    )
    started = time.perf_counter()
    model = RankModel(**params).fit(catalog, sim.events)
    train_s = time.perf_counter() - started
    print(f"train {train_s:.1f} s ({model.train_info_['n_choices']} choices)")

    rows: dict[str, float] = {}
    rng = np.random.default_rng(0)
    popularity = Counter(e.product_id for e in sim.events if e.product_id and e.action in ACTION_WEIGHTS)
    rows["random"] = _mean_ndcg(sim, lambda r: list(rng.permutation(r.candidates)))
    rows["popularity"] = _mean_ndcg(sim, lambda r: sorted(r.candidates, key=lambda p: -popularity.get(p, 0)))
    learned = dict(model.nodes_)
    _fix_weights(
        model, learned, lambda fit, path: np.full(len(fit.attributes), 1.0 / max(len(fit.attributes), 1))
    )
    rows["equal weights"] = _mean_ndcg(sim, lambda r: model.rank(r).ranking)
    names = catalog.attributes
    _fix_weights(
        model,
        learned,
        lambda fit, path: np.array([sim.weights[path].get(names[a], 0.0) for a in fit.attributes]),
    )
    rows["hidden true weights"] = _mean_ndcg(sim, lambda r: model.rank(r).ranking)
    model.nodes_ = learned
    latencies: list[float] = []

    def timed(request: RankRequest) -> list[str]:
        t = time.perf_counter()
        out = model.rank(request).ranking
        latencies.append(time.perf_counter() - t)
        return out

    rows["shangpin (learned weights)"] = _mean_ndcg(sim, timed)
    started = time.perf_counter()
    lgbm = _lambdamart(model, catalog, sim, popularity)
    lgbm_s = time.perf_counter() - started
    rows["LightGBM LambdaMART"] = _mean_ndcg(sim, lgbm)
    # A plain reference ranker, as a checker might write one: per attribute, the value the session engaged with
    # most; score = sum of weights where the candidate has that value (equal or hidden weights).
    rows["session's top value, equal weights"] = _mean_ndcg(sim, lambda r: _top_value_rank(catalog, r, None))
    rows["session's top value, hidden weights"] = _mean_ndcg(
        sim, lambda r: _top_value_rank(catalog, r, sim.weights.get(r.category or "", {}))
    )

    print("| method | NDCG@10 |\n|---|---|")
    for name, value in rows.items():
        print(f"| {name} | {value:.4f} |")
    # Latency at 100 candidates: each request's session with 100 products of its top-level category.
    latencies.clear()
    for request in sim.requests:
        top = catalog.lineage(catalog.resolve(request.category) or 0)[-1]
        pool = np.flatnonzero(
            np.isin(catalog.leaf, [n for n in range(len(catalog.nodes)) if catalog.lineage(n)[-1] == top])
        )
        picks = rng.choice(pool, size=min(100, len(pool)), replace=False)
        timed(
            RankRequest(
                request.request_id, [catalog.ids[int(i)] for i in picks], request.events, request.category
            )
        )
    latency = latency_summary(latencies)
    print(
        f"rank latency ({len(latencies)} requests, 100 candidates): "
        f"p50 {latency['p50_ms']:.2f} ms, p99 {latency['p99_ms']:.2f} ms; "
        f"LambdaMART features + training {lgbm_s:.1f} s"
    )
    rho = _importance_recovery(model, catalog, sim)
    learned_ndcg, equal, hidden = (
        rows["shangpin (learned weights)"],
        rows["equal weights"],
        rows["hidden true weights"],
    )
    closure = (learned_ndcg - equal) / (hidden - equal) if hidden > equal else float("nan")
    return {"learned": learned_ndcg, "equal": equal, "hidden": hidden, "closure": closure, "rho": rho}


def _top_value_rank(
    catalog: RankCatalog, request: RankRequest, weights: dict[str, float] | None
) -> list[str]:
    engaged: dict[int, Counter[int]] = defaultdict(Counter)
    for e in request.events:
        row = catalog.row(e.product_id) if e.product_id else None
        if row is None or e.action not in ACTION_WEIGHTS:
            continue
        for a, code in enumerate(catalog.codes[row].tolist()):
            if code >= 0:
                engaged[a][code] += ACTION_WEIGHTS[e.action]
    top = {a: counts.most_common(1)[0][0] for a, counts in engaged.items()}

    def score(pid: str) -> float:
        row = catalog.row(pid)
        if row is None:
            return 0.0
        return sum(
            (1.0 if weights is None else weights.get(catalog.attributes[a], 0.0))
            for a, code in top.items()
            if catalog.codes[row, a] == code
        )

    return sorted(request.candidates, key=lambda p: -score(p))


def _fix_weights(model: RankModel, learned: dict[int, NodeFit], weights: Any) -> None:
    model.nodes_ = {
        node: dataclasses.replace(fit, fixed_weights=weights(fit, model.catalog_.nodes[node]))
        for node, fit in learned.items()
    }


def _mean_ndcg(sim: Simulation, rank: Any) -> float:
    return statistics.fmean(ndcg_at_k(rank(r), u) for r, u in zip(sim.requests, sim.utilities, strict=True))


def _importance_recovery(model: RankModel, catalog: RankCatalog, sim: Simulation) -> float:
    learned = model.importance()
    stats = model.node_stats()
    by_depth: dict[int, list[float]] = defaultdict(list)
    for node, path in enumerate(catalog.nodes):
        if stats[path]["sessions"] < MIN_SESSIONS:
            continue
        rows = np.flatnonzero(
            np.isin(catalog.leaf, [n for n in range(len(catalog.nodes)) if node in catalog.lineage(n)])
        )
        # Attributes with one value in the node cannot show in any choice: no log can rank them.
        varied = [
            a for a in catalog.node_attributes[node] if len(set(catalog.codes[rows, a].tolist()) - {-1}) > 1
        ]
        names = [catalog.attributes[a] for a in varied]
        if len(names) < 3:
            continue
        rho = spearmanr([sim.weights[path][n] for n in names], [learned[path][n] for n in names]).statistic
        if not math.isnan(rho):
            by_depth[catalog.depth(node)].append(float(rho))
    everything = [r for v in by_depth.values() for r in v]
    print(
        f"importance recovery, categories with >= {MIN_SESSIONS} sessions: Spearman rho mean "
        f"{statistics.fmean(everything):.3f}, median {statistics.median(everything):.3f} over {len(everything)} "
        "categories; by depth "
        + ", ".join(
            f"level {d + 1}: {statistics.fmean(v):.3f} (n={len(v)})" for d, v in sorted(by_depth.items())
        )
    )
    return statistics.fmean(everything)


def _lambdamart(model: RankModel, catalog: RankCatalog, sim: Simulation, popularity: Counter[str]) -> Any:
    """LambdaMART on the choice sets of the training log, with shangpin's session features + popularity."""
    import lightgbm as lgb

    n_attr = len(catalog.attributes)
    all_attrs = list(range(n_attr))
    rng = np.random.default_rng(model.seed)
    sessions = group_sessions(sim.events)
    xs: list[np.ndarray] = []
    ys: list[np.ndarray] = []
    groups: list[int] = []
    for index, events in enumerate(sessions.values()):
        ev = session_evidence(events, catalog, model.matcher_, model.query_weight)
        strongest = {
            catalog.row(e.product_id): ACTION_WEIGHTS[e.action]
            for e in events
            if e.product_id and e.action in ACTION_WEIGHTS
        }
        for choice in choices(ev, index, catalog, rng, model.negatives):
            x = features(
                choice.rows,
                all_attrs,
                catalog,
                ev,
                model.priors_,
                model._strength(int(catalog.leaf[choice.chosen])),
                exclude=choice.chosen,
            )
            pop = np.log1p([popularity.get(catalog.ids[r], 0) for r in choice.rows])[:, None]
            xs.append(np.hstack([x, pop]))
            label = np.zeros(len(choice.rows))
            label[0] = 1 + (strongest.get(choice.chosen, 1.0) >= ACTION_WEIGHTS["add_to_cart"])
            ys.append(label)
            groups.append(len(choice.rows))
    ranker = lgb.LGBMRanker(
        objective="lambdarank",
        n_estimators=300,
        learning_rate=0.05,
        num_leaves=31,
        min_child_samples=20,
        verbose=-1,
        n_jobs=2,
    )
    ranker.fit(np.vstack(xs), np.concatenate(ys), group=groups)

    def rank(request: RankRequest) -> list[str]:
        rows = [catalog.row(p) for p in request.candidates]
        known = [r for r in rows if r is not None]
        ev = session_evidence(request.events, catalog, model.matcher_, model.query_weight)
        node = catalog.resolve(request.category)
        leaf = node if node is not None else int(catalog.leaf[known[0]])
        uniform = model.rank_prior == "uniform"
        x = features(
            known, all_attrs, catalog, ev, model.priors_, model._strength(leaf), uniform_prior=uniform
        )
        pop = np.log1p([popularity.get(catalog.ids[r], 0) for r in known])[:, None]
        scores = ranker.predict(np.hstack([x, pop]))
        order = np.argsort(-scores, kind="stable")
        return [catalog.ids[known[i]] for i in order]

    return rank


if __name__ == "__main__":
    main()
