"""A second, structurally different behaviour simulator, so that the ranker is not judged on one family alone.

`shangpin.ranking.simulate.Simulator` draws a child category's weights around its parent's, a shopper's preferred
value per leaf category, random result lists and independent logistic clicks. This one differs in each:

- every leaf category draws its importance independently (Dirichlet 0.6); a parent's hidden weights are the
  traffic-weighted mean of its leaves' (what its shoppers, taken together, care about);
- a shopper has one preferred value per attribute across the whole shop ("black", "women") drawn from the
  catalog's value frequencies, and uses the category's weights with a little personal noise;
- result lists are ordered by a latent product popularity (plus query boosts), so position and popularity are
  confounded, as in a shop whose search engine already ranks by sales;
- clicks follow a cascade: the shopper scans down, clicks with probability 0.03 + 0.9 u^1.5, stops after a click
  with probability 0.35 and abandons an unclicked position with probability 0.12.

It writes the same `Simulation` (events, hidden weights per node, held-out requests with utilities).
"""

from __future__ import annotations

from collections import defaultdict
from functools import partial

import numpy as np

from shangpin.ranking.catalog import MISSING, RankCatalog
from shangpin.ranking.simulate import START_TIME, Simulation
from shangpin.records import Event


def cascade_simulation(
    catalog: RankCatalog, *, sessions: int, requests: int, seed: int, users: int = 2000, list_size: int = 20
) -> Simulation:
    rng = np.random.default_rng(seed)
    leaf_rows = {int(leaf): catalog.rows_in_leaf(int(leaf)) for leaf in np.unique(catalog.leaf)}
    leaves = sorted(leaf_rows)
    sizes = np.array([len(leaf_rows[leaf]) for leaf in leaves], dtype=float)
    traffic = sizes**0.7 / (sizes**0.7).sum()
    leaf_w = {
        leaf: rng.dirichlet(np.full(len(catalog.node_attributes[leaf]), 0.6))
        for leaf in leaves
        if catalog.node_attributes[leaf]
    }
    # Parents: traffic-weighted mean of their leaves' weights over the parent's attributes.
    weights: dict[str, dict[str, float]] = {}
    for node, path in enumerate(catalog.nodes):
        attrs = catalog.node_attributes[node]
        total = np.zeros(len(attrs))
        for leaf, t in zip(leaves, traffic, strict=True):
            if leaf in leaf_w and node in catalog.lineage(leaf):
                lw = dict(zip(catalog.node_attributes[leaf], leaf_w[leaf].tolist(), strict=True))
                total += t * np.array([lw.get(a, 0.0) for a in attrs])
        if total.sum() > 0:
            total /= total.sum()
        weights[path] = {catalog.attributes[a]: round(float(w), 6) for a, w in zip(attrs, total, strict=True)}
    # Shop-wide preferences per user and attribute, from the catalog's value frequencies.
    n_attr = len(catalog.attributes)
    value_p: list[tuple[np.ndarray, np.ndarray]] = []
    for a in range(n_attr):
        codes = catalog.codes[:, a]
        values, counts = np.unique(codes[codes != MISSING], return_counts=True)
        p = counts * rng.lognormal(0.0, 0.5, size=len(values)) if len(values) else counts
        value_p.append((values, p / p.sum() if len(values) else p))
    prefs = np.full((users, n_attr), MISSING, dtype=np.int64)
    for a, (values, p) in enumerate(value_p):
        if len(values):
            prefs[:, a] = rng.choice(values, size=users, p=p)
    popularity = rng.lognormal(0.0, 1.0, size=len(catalog))
    user_w: dict[tuple[int, int], np.ndarray] = {}
    by_value: dict[tuple[int, int, int], list[int]] = defaultdict(list)
    for leaf, rows in leaf_rows.items():
        for a in catalog.node_attributes[leaf]:
            for r in rows.tolist():
                c = int(catalog.codes[r, a])
                if c != MISSING:
                    by_value[(leaf, a, c)].append(r)

    def w_of(user: int, leaf: int) -> np.ndarray:
        key = (user, leaf)
        if key not in user_w:
            user_w[key] = rng.dirichlet(60.0 * (leaf_w[leaf] + 1e-3) / (leaf_w[leaf] + 1e-3).sum())
        return user_w[key]

    def utility(user: int, leaf: int, row: int) -> float:
        attrs = catalog.node_attributes[leaf]
        match = catalog.codes[row, attrs] == prefs[user, attrs]
        return float(np.dot(w_of(user, leaf), match))

    def session(session_id: str, user: int) -> tuple[list[Event], int]:
        leaf = leaves[int(rng.choice(len(leaves), p=traffic))]
        while leaf not in leaf_w:
            leaf = leaves[int(rng.choice(len(leaves), p=traffic))]
        rows = leaf_rows[leaf]
        attrs = catalog.node_attributes[leaf]
        path = catalog.nodes[leaf]
        t = START_TIME + float(rng.uniform(0, 60 * 86400))
        events: list[Event] = []
        seen: set[int] = set()
        for _ in range(1 + min(int(rng.poisson(0.6)), 2)):
            query = path.split(">")[-1].strip()
            score = np.log(popularity[rows]) + rng.normal(0.0, 0.7, size=len(rows))
            if rng.random() < 0.4:
                w = w_of(user, leaf)
                a = attrs[int(rng.choice(len(attrs), p=w))]
                code = int(prefs[user, a])
                if code != MISSING and a not in catalog.bins and by_value.get((leaf, a, code)):
                    query = f"{catalog.vocab[a][code]} {query}"
                    score = score + 3.0 * (catalog.codes[rows, a] == code)
            shown = rows[np.argsort(-score)[:list_size]].tolist()
            t += float(rng.uniform(2, 10))
            events.append(
                Event(
                    session_id,
                    "search",
                    t,
                    user_id=f"u{user}",
                    category=path,
                    query=query,
                    results=tuple(catalog.ids[r] for r in shown),
                )
            )
            done = False
            for pos, r in enumerate(shown, 1):
                if r in seen:
                    continue
                u = utility(user, leaf, r)
                if rng.random() < 0.03 + 0.9 * u**1.5:
                    seen.add(r)
                    t += float(rng.uniform(5, 60))
                    events.append(
                        Event(session_id, "click", t, catalog.ids[r], f"u{user}", path, position=pos)
                    )
                    if rng.random() < 0.5 * u:
                        t += float(rng.uniform(5, 60))
                        events.append(
                            Event(
                                session_id, "add_to_cart", t, catalog.ids[r], f"u{user}", path, position=pos
                            )
                        )
                        if rng.random() < 0.5:
                            t += float(rng.uniform(5, 60))
                            events.append(
                                Event(
                                    session_id, "purchase", t, catalog.ids[r], f"u{user}", path, position=pos
                                )
                            )
                            done = True
                            break
                    if rng.random() < 0.35:
                        done = True
                        break
                elif rng.random() < 0.12:
                    break
            if done:
                break
        return events, leaf

    events: list[Event] = []
    for s in range(sessions):
        events.extend(session(f"s{s}", int(rng.integers(users)))[0])
    sim = Simulation(events=events, weights=weights)
    for q in range(requests):
        user = int(rng.integers(users))
        session_events, leaf = session(f"r{q}", user)
        sim.add_request(
            rng,
            catalog,
            f"r{q}",
            session_events,
            leaf,
            leaf_rows[leaf],
            100,
            partial(utility, user, leaf),
        )
    return sim
