"""A behaviour simulator: shoppers with hidden preferences and per-category attribute importance.

No public behaviour log carries product attributes, so the ranker is developed and demonstrated on simulated
sessions whose ground truth is known. Every category node gets hidden importance weights (a child's drawn
around its parent's); each user has a preferred value per attribute and personal weights around the
category's. A product's utility for a user is u = sum_a w_a [value_a = preferred_a] in [0, 1]. A session
searches, is shown a list, examines positions with decaying probability (position bias), clicks examined
products with a probability rising with u, sometimes adds to cart and buys. The ranker never reads these
parameters: it sees only the event log, as it would a real shop's.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

import numpy as np

from shangpin.ranking.catalog import MISSING, RankCatalog
from shangpin.ranking.model import RankRequest
from shangpin.records import Event
from shangpin.stages.base import Params

START_TIME = 1_767_225_600.0
"""2026-01-01T00:00:00Z: simulated sessions start from here."""


@dataclass
class Simulation:
    """Simulated events, the hidden weights per category node, and optional held-out requests with utilities."""

    events: list[Event]
    weights: dict[str, dict[str, float]]
    requests: list[RankRequest] = field(default_factory=list)
    utilities: list[dict[str, float]] = field(default_factory=list)

    def add_request(
        self,
        rng: np.random.Generator,
        catalog: RankCatalog,
        request_id: str,
        session_events: list[Event],
        leaf: int,
        rows: np.ndarray,
        candidates: int,
        utility: Callable[[int], float],
    ) -> None:
        """A held-out request from one simulated session: the session up to a random cut after one of its
        engagements (or its first search), `candidates` random products of its leaf (`rows`), and their
        utilities for the session's shopper (the answer key)."""
        engaged = [i for i, e in enumerate(session_events) if e.action != "search"]
        cut = engaged[int(rng.integers(len(engaged)))] + 1 if engaged else 1
        picks = rng.choice(rows, size=min(candidates, len(rows)), replace=False)
        self.requests.append(
            RankRequest(
                request_id=request_id,
                candidates=[catalog.ids[int(i)] for i in picks],
                events=session_events[:cut],
                category=catalog.nodes[leaf],
            )
        )
        self.utilities.append({catalog.ids[int(i)]: round(utility(int(i)), 6) for i in picks})


class Simulator(Params):
    """Generates sessions over a catalog.

    Args:
        sessions: sessions to generate for the event log.
        users: distinct shoppers (each keeps preferences across sessions).
        list_size: products shown per search.
        position_decay: examination probability at position p is p ** -position_decay.
        click_sharpness: slope of the click probability in utility (logistic).
        click_midpoint: utility at which an examined product is clicked half of the time.
        spread: Dirichlet parameter of the top-level categories' weights (below 1: a few attributes dominate).
        concentration: how closely a child's and a user's weights follow the parent's/category's (Dirichlet).
        query_rate: share of searches that name a preferred attribute value.
        requests: held-out sessions turned into ranking requests (their utilities are the answer key).
        candidates: candidates per request.
        seed: random seed.
    """

    def __init__(
        self,
        *,
        sessions: int = 5000,
        users: int = 1000,
        list_size: int = 20,
        position_decay: float = 0.8,
        click_sharpness: float = 10.0,
        click_midpoint: float = 0.55,
        spread: float = 0.5,
        concentration: float = 20.0,
        query_rate: float = 0.5,
        requests: int = 0,
        candidates: int = 100,
        seed: int = 7,
    ) -> None:
        self.sessions = sessions
        self.users = users
        self.list_size = list_size
        self.position_decay = position_decay
        self.click_sharpness = click_sharpness
        self.click_midpoint = click_midpoint
        self.spread = spread
        self.concentration = concentration
        self.query_rate = query_rate
        self.requests = requests
        self.candidates = candidates
        self.seed = seed

    def run(self, catalog: RankCatalog) -> Simulation:
        rng = np.random.default_rng(self.seed)
        world = _World(catalog, self, rng)
        events: list[Event] = []
        for s in range(self.sessions):
            events.extend(world.session(f"s{s}", int(rng.integers(self.users)))[0])
        sim = Simulation(events=events, weights=world.named_weights())
        for r in range(self.requests):
            user = int(rng.integers(self.users))
            session_events, leaf = world.session(f"r{r}", user)
            sim.add_request(
                rng,
                catalog,
                f"r{r}",
                session_events,
                leaf,
                world.leaf_rows[leaf],
                self.candidates,
                partial(world.utility, user, leaf),
            )
        return sim


class _World:
    def __init__(self, catalog: RankCatalog, sim: Simulator, rng: np.random.Generator) -> None:
        self.catalog = catalog
        self.sim = sim
        self.rng = rng
        self.leaf_rows: dict[int, np.ndarray] = {
            int(leaf): catalog.rows_in_leaf(int(leaf)) for leaf in np.unique(catalog.leaf)
        }
        self.leaves = sorted(self.leaf_rows)
        sizes = np.array([len(self.leaf_rows[leaf]) for leaf in self.leaves], dtype=float)
        self.leaf_p = np.sqrt(sizes) / np.sqrt(sizes).sum()
        self.weights: dict[int, np.ndarray] = {}
        for node in range(len(catalog.nodes)):  # parents first
            attrs = catalog.node_attributes[node]
            parent = catalog.parent[node]
            if parent < 0 or not len(attrs):
                alpha = np.full(len(attrs), sim.spread)
            else:
                pw = dict(zip(catalog.node_attributes[parent], self.weights[parent].tolist(), strict=True))
                base = np.array([pw.get(a, 1.0 / len(attrs)) for a in attrs]) + 0.02
                alpha = sim.concentration * base / base.sum()
            self.weights[node] = rng.dirichlet(alpha) if len(attrs) else np.zeros(0)
        # Shop-wide taste: how popular each value is, per leaf and attribute.
        self.taste: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}
        self.user_weights: dict[tuple[int, int], np.ndarray] = {}
        self.prefs: dict[tuple[int, int, int], int] = {}
        self.products_by_value: dict[tuple[int, int, int], list[int]] = defaultdict(list)
        for leaf, rows in self.leaf_rows.items():
            for a in catalog.node_attributes[leaf]:
                codes = catalog.codes[rows, a]
                values, counts = np.unique(codes[codes != MISSING], return_counts=True)
                if not len(values):
                    continue
                p = np.sqrt(counts) * rng.lognormal(0.0, 1.0, size=len(values))
                self.taste[(leaf, a)] = (values, p / p.sum())
                for r, c in zip(rows.tolist(), codes.tolist(), strict=True):
                    if c != MISSING:
                        self.products_by_value[(leaf, a, c)].append(r)

    def named_weights(self) -> dict[str, dict[str, float]]:
        names = self.catalog.attributes
        return {
            path: {
                names[a]: round(float(w), 6)
                for a, w in zip(self.catalog.node_attributes[n], self.weights[n], strict=True)
            }
            for n, path in enumerate(self.catalog.nodes)
        }

    def user_w(self, user: int, leaf: int) -> np.ndarray:
        key = (user, leaf)
        w = self.user_weights.get(key)
        if w is None:
            base = self.weights[leaf] + 1e-3
            w = self.user_weights[key] = self.rng.dirichlet(self.sim.concentration * base / base.sum())
        return w

    def pref(self, user: int, leaf: int, a: int) -> int:
        key = (user, leaf, a)
        code = self.prefs.get(key)
        if code is None:
            values, p = self.taste.get((leaf, a), (np.array([MISSING]), np.array([1.0])))
            code = self.prefs[key] = int(self.rng.choice(values, p=p))
        return code

    def utility(self, user: int, leaf: int, row: int) -> float:
        attrs = self.catalog.node_attributes[leaf]
        w = self.user_w(user, leaf)
        codes = self.catalog.codes[row]
        return float(sum(wa for a, wa in zip(attrs, w, strict=True) if codes[a] == self.pref(user, leaf, a)))

    def session(self, session_id: str, user: int) -> tuple[list[Event], int]:
        rng, sim, catalog = self.rng, self.sim, self.catalog
        leaf = self.leaves[int(rng.choice(len(self.leaves), p=self.leaf_p))]
        rows = self.leaf_rows[leaf]
        attrs = catalog.node_attributes[leaf]
        w = self.user_w(user, leaf)
        t = START_TIME + float(rng.uniform(0, 60 * 86400))
        user_id = f"u{user}"
        path = catalog.nodes[leaf]
        events: list[Event] = []
        seen: set[int] = set()
        for _ in range(1 + min(int(rng.poisson(0.8)), 3)):
            query = path.split(">")[-1].strip()
            boost: list[int] = []
            named = [i for i, a in enumerate(attrs) if a not in catalog.bins]
            if named and rng.random() < sim.query_rate:
                pw = w[named] / w[named].sum() if w[named].sum() > 0 else None
                a = attrs[named[int(rng.choice(len(named), p=pw))]]
                code = self.pref(user, leaf, a)
                if code != MISSING:
                    query = f"{catalog.vocab[a][code]} {query}"
                    boost = self.products_by_value.get((leaf, a, code), [])
            shown = _results(rng, rows, boost, sim.list_size)
            t += float(rng.uniform(2, 10))
            ids = [catalog.ids[r] for r in shown]
            events.append(
                Event(
                    session_id, "search", t, user_id=user_id, category=path, query=query, results=tuple(ids)
                )
            )
            bought = False
            for pos, r in enumerate(shown, 1):
                if r in seen or rng.random() > pos**-sim.position_decay:
                    continue
                u = self.utility(user, leaf, r)
                p_click = 1.0 / (1.0 + math.exp(-sim.click_sharpness * (u - sim.click_midpoint)))
                if rng.random() > p_click:
                    continue
                seen.add(r)
                t += float(rng.uniform(5, 60))
                events.append(Event(session_id, "click", t, catalog.ids[r], user_id, path, position=pos))
                if rng.random() < 0.6 * u * u:
                    t += float(rng.uniform(5, 60))
                    events.append(
                        Event(session_id, "add_to_cart", t, catalog.ids[r], user_id, path, position=pos)
                    )
                    if rng.random() < 0.5:
                        t += float(rng.uniform(5, 60))
                        events.append(
                            Event(session_id, "purchase", t, catalog.ids[r], user_id, path, position=pos)
                        )
                        bought = True
                        break
            if bought:
                break
        return events, leaf


def _results(rng: np.random.Generator, rows: np.ndarray, boost: list[int], size: int) -> list[int]:
    """A search's result list: products naming the query's value first, then others, in random order."""
    first = [int(r) for r in rng.permutation(boost)][: size // 2] if boost else []
    taken = set(first)
    rest = [int(r) for r in rng.permutation(rows)[: size + len(first)] if int(r) not in taken]
    return (first + rest)[:size]
