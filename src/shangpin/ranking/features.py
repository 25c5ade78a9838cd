"""What a session reveals: weighted attribute values of the products it engaged with, and the choices it made.

The same feature serves training and ranking. For a product i and an attribute a it is the posterior
probability that the shopper wants i's value v_i of a, given what the session engaged with:

    x_a(i) = P(pref_a = v_i | session) = prior_a(v_i) * exp(s_a * c_a(v_i)) / sum_v prior_a(v) * exp(s_a * c_a(v))

where c_a(v) is the engagement (view < click < cart < purchase, per product its strongest action, plus query
words naming v) with products whose value of a is v, prior_a the shop-wide taste in i's category and s_a the
evidence strength of one engagement, which is the attribute's own choice coefficient: a click says a lot
about a value that drives choices and little about one that does not. Using the posterior instead of raw
shares is regression calibration: the coefficient fitted on E[match | data] is not diluted by how noisy the
evidence is, which differs between a two-valued and a forty-valued attribute. In training the feature of
every product in a choice set leaves out the chosen product and the product itself, so a click never explains
itself; what remains is agreement between a session's choices beyond chance.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from shangpin.ranking.catalog import MISSING, RankCatalog
from shangpin.records import Event

ACTION_WEIGHTS: dict[str, float] = {"view": 0.5, "click": 1.0, "add_to_cart": 1.5, "purchase": 2.0}
"""Engagement weight of each action: a purchase says more about a preference than a glance. A product counts
with its strongest action only: the click, cart and purchase of one product are one choice, not three."""
MAX_EXPONENT = 50.0
POSITION_BUCKETS = 13
"""Positions 1-10 each, 11-20, 21+, and "unknown" (a product reached without a shown list)."""
_WORD = re.compile(r"\w+")
MAX_QUERY_NGRAM = 4


def position_bucket(position: int | None) -> int:
    if position is None or position < 1:
        return POSITION_BUCKETS - 1
    if position <= 10:
        return position - 1
    return 10 if position <= 20 else 11


def phrase(text: str) -> str:
    """Case- and punctuation-folded words, the form in which query words meet attribute values."""
    return " ".join(_WORD.findall(text.casefold()))


@dataclass
class Evidence:
    """A session's engagement: weight per catalog row, and per attribute the weight per value code."""

    product_weight: dict[int, float] = field(default_factory=dict)
    counts: dict[int, dict[int, float]] = field(default_factory=lambda: defaultdict(dict))
    totals: dict[int, float] = field(default_factory=lambda: defaultdict(float))


class QueryMatcher:
    """Finds attribute values named in a query ("red nike running shoes" -> colour=Red, brand=Nike)."""

    def __init__(self, catalog: RankCatalog) -> None:
        self._phrases: dict[str, list[tuple[int, int]]] = defaultdict(list)
        for a, values in enumerate(catalog.vocab):
            if a in catalog.bins:
                continue
            for code, value in enumerate(values):
                key = phrase(value)
                if key:
                    self._phrases[key].append((a, code))

    def match(self, query: str) -> list[tuple[int, int]]:
        words = _WORD.findall(query.casefold())
        found: list[tuple[int, int]] = []
        for n in range(1, MAX_QUERY_NGRAM + 1):
            for i in range(len(words) - n + 1):
                found.extend(self._phrases.get(" ".join(words[i : i + n]), ()))
        return found


def session_evidence(
    events: Iterable[Event], catalog: RankCatalog, matcher: QueryMatcher, query_weight: float
) -> Evidence:
    """Sum a session's engagement per product (strongest action) and per attribute value."""
    ev = Evidence()
    for event in events:
        if event.action == "search":
            if event.query and query_weight > 0:
                for a, code in matcher.match(event.query):
                    _add(ev, a, code, query_weight)
            continue
        weight = ACTION_WEIGHTS.get(event.action)
        row = catalog.row(event.product_id) if event.product_id else None
        if weight is not None and row is not None:
            ev.product_weight[row] = max(ev.product_weight.get(row, 0.0), weight)
    for row, weight in ev.product_weight.items():
        for a, code in enumerate(catalog.codes[row].tolist()):
            if code != MISSING:
                _add(ev, a, code, weight)
    return ev


def _add(ev: Evidence, a: int, code: int, weight: float) -> None:
    counts = ev.counts[a]
    counts[code] = counts.get(code, 0.0) + weight
    ev.totals[a] += weight


class Priors:
    """Shop-wide preference per leaf category: the share of engagement each attribute value received,
    smoothed toward the value's share of the leaf's products (which is all a new shop has)."""

    def __init__(self, catalog: RankCatalog, smoothing: float = 5.0) -> None:
        self.smoothing = smoothing
        n_attr = len(catalog.attributes)
        # (leaf, attribute) -> {code: count}; catalog counts and engagement counts.
        self.catalog_counts: dict[tuple[int, int], dict[int, float]] = defaultdict(dict)
        self.engaged: dict[tuple[int, int], dict[int, float]] = defaultdict(dict)
        for leaf, row in zip(catalog.leaf.tolist(), catalog.codes.tolist(), strict=True):
            for a in range(n_attr):
                code = row[a]
                if code != MISSING:
                    bucket = self.catalog_counts[(leaf, a)]
                    bucket[code] = bucket.get(code, 0.0) + 1.0
        self._cache: dict[tuple[int, int], dict[int, float]] = {}
        self._uniform_cache: dict[tuple[int, int], dict[int, float]] = {}
        self.uniform = False

    def _uniform(self, leaf: int, a: int) -> dict[int, float]:
        key = (leaf, a)
        table = self._uniform_cache.get(key)
        if table is None:
            cat = self.catalog_counts.get(key, {})
            table = self._uniform_cache[key] = {code: 1.0 / len(cat) for code in cat}
        return table

    def add_engagement(self, catalog: RankCatalog, ev: Evidence, decay: float = 1.0) -> None:
        for row, weight in ev.product_weight.items():
            leaf = int(catalog.leaf[row])
            for a, code in enumerate(catalog.codes[row].tolist()):
                if code != MISSING:
                    bucket = self.engaged[(leaf, a)]
                    bucket[code] = bucket.get(code, 0.0) + weight * decay
        self._cache.clear()

    def decay(self, factor: float) -> None:
        for bucket in self.engaged.values():
            for code in bucket:
                bucket[code] *= factor
        self._cache.clear()

    def table(self, leaf: int, a: int) -> dict[int, float]:
        """code -> prior probability for one leaf and attribute."""
        if self.uniform:
            return self._uniform(leaf, a)
        key = (leaf, a)
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        cat = self.catalog_counts.get(key, {})
        eng = self.engaged.get(key, {})
        n_cat = sum(cat.values()) or 1.0
        n_eng = sum(eng.values())
        m = self.smoothing
        table = {code: (eng.get(code, 0.0) + m * cat.get(code, 0.0) / n_cat) / (n_eng + m) for code in cat}
        self._cache[key] = table
        return table


def features(
    rows: Sequence[int],
    attributes: Sequence[int],
    catalog: RankCatalog,
    ev: Evidence,
    priors: Priors,
    strength: Sequence[float],
    exclude: int | None = None,
) -> np.ndarray:
    """x_a(i) for each row (product) and attribute: (len(rows), len(attributes)) float32.

    `strength` holds s_a per attribute (indexed like `attributes`). `exclude` (the chosen product in
    training) and each product's own engagement are left out of the counts, so a product is never scored by
    its own clicks.
    """
    out = np.zeros((len(rows), len(attributes)), dtype=np.float32)
    codes = catalog.codes
    leaves = catalog.leaf
    exp = math.exp
    ex_weight = ev.product_weight.get(exclude, 0.0) if exclude is not None else 0.0
    item_codes = codes[list(rows)].tolist() if len(rows) else []
    item_leaves = leaves[list(rows)].tolist() if len(rows) else []
    own_weights = [0.0 if r == exclude else ev.product_weight.get(r, 0.0) for r in rows]
    for j, a in enumerate(attributes):
        lam = max(float(strength[j]), 0.0)
        counts = ev.counts.get(a, {})
        if exclude is not None and ex_weight and codes[exclude, a] != MISSING:
            counts = dict(counts)
            ex_code = int(codes[exclude, a])
            counts[ex_code] = counts.get(ex_code, 0.0) - ex_weight
        norms: dict[int, float] = {}
        for i, leaf in enumerate(item_leaves):
            code = item_codes[i][a]
            if code == MISSING:
                continue
            table = priors.table(leaf, a)
            z = norms.get(leaf)
            if z is None:
                z = 1.0 + sum(
                    table.get(v, 0.0) * (exp(min(lam * c, MAX_EXPONENT)) - 1.0) for v, c in counts.items() if c > 0
                )
                norms[leaf] = z
            c = max(counts.get(code, 0.0), 0.0)
            p = table.get(code, 0.0)
            own = own_weights[i]
            if own:
                reduced = max(c - own, 0.0)
                z -= p * (exp(min(lam * c, MAX_EXPONENT)) - exp(min(lam * reduced, MAX_EXPONENT)))
                c = reduced
            out[i, j] = p * exp(min(lam * c, MAX_EXPONENT)) / z if z > 0 else 0.0
    return out


@dataclass
class Choice:
    """One product a session chose from the products it was shown (or from sampled ones)."""

    session: int
    chosen: int
    rows: list[int]
    positions: list[int]
    timestamp: float


def choices(
    events: Sequence[Event], session: int, catalog: RankCatalog, rng: np.random.Generator, negatives: int
) -> list[Choice]:
    """The choice events of one session (events in time order).

    A product engaged for the first time is a choice among the products of the latest search's result list
    that the session had not engaged with yet; without a list (browse logs) it is compared with `negatives`
    random products of its own category.
    """
    out: list[Choice] = []
    shown: list[int] = []
    shown_pos: dict[int, int] = {}
    seen: set[int] = set()
    for event in events:
        if event.action == "search":
            shown = [r for pid in event.results if (r := catalog.row(pid)) is not None]
            shown_pos = {r: p for p, pid in enumerate(event.results, 1) if (r := catalog.row(pid)) is not None}
            continue
        if event.action not in ACTION_WEIGHTS or not event.product_id:
            continue
        row = catalog.row(event.product_id)
        if row is None or row in seen:
            continue
        if row in shown_pos:
            rows = [row] + [r for r in shown if r != row and r not in seen]
            positions = [position_bucket(shown_pos[r]) for r in rows]
        else:
            rows = [row, *_sample(catalog, row, seen, rng, negatives)]
            bucket = position_bucket(None)
            positions = [bucket] * len(rows)
        seen.add(row)
        if len(rows) > 1:
            out.append(Choice(session, row, rows, positions, event.timestamp))
    return out


def _sample(catalog: RankCatalog, row: int, seen: set[int], rng: np.random.Generator, k: int) -> list[int]:
    same = np.flatnonzero(catalog.leaf == catalog.leaf[row])
    if len(same) <= 1:
        return []
    picks = rng.choice(same, size=min(k + len(seen) + 1, len(same)), replace=False).tolist()
    return [r for r in picks if r != row and r not in seen][:k]
