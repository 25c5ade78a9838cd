"""What a session reveals: weighted attribute values of the products it engaged with, and the choices it made.

The same feature serves training and ranking. For a product i and an attribute a it is the posterior
probability that the shopper wants i's value v_i of a, given the rest of the session:

    x_a(i) = P(pref_a = v_i | session) = prior_a(v_i) * exp(L_a(v_i)) / sum_v prior_a(v) * exp(L_a(v))

L_a(v) is the conditional-logit evidence of the session's choices: choosing a product with value v from a list
in which a share f(v) of the products had v adds s_a - log(1 + f(v) (e^s_a - 1)) to v and -log(1 + f(w)
(e^s_a - 1)) to every other value w shown, times the engagement weight (view < click < cart < purchase, per
product its strongest action); query words naming v add s_a. So a click on the colour nearly every shown
product had proves little (chance), and one on a rare colour proves much. s_a, the evidence strength of one
choice, is the attribute's own choice coefficient: a click says a lot about a value that drives choices and
little about one that does not. prior_a is the shop-wide taste in i's category. Using this posterior (rather
than raw shares) is regression calibration: the coefficient fitted on E[match | data] is not diluted by how
noisy the evidence is, which differs between a two-valued and a forty-valued attribute. In training the
feature of every product in a choice set leaves out the chosen product and the product itself, so a click
never explains itself.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
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
    """A session's engagement: per product its strongest action's weight, in the order first engaged, with the
    result list it was chosen from (None when it was reached another way), plus values named in queries."""

    product_weight: dict[int, float] = field(default_factory=dict)
    shown: dict[int, list[int] | None] = field(default_factory=dict)
    order: list[tuple[int, float]] = field(default_factory=list)
    """(row, timestamp) of each product's first engagement."""
    queries: list[tuple[int, int]] = field(default_factory=list)
    query_weight: float = 1.0
    lists: list[tuple[list[int], float]] = field(default_factory=list)
    """Every result list the session was shown, with its time."""
    _exposure: dict[tuple[int, int], dict[int, float]] = field(default_factory=dict)
    _attract: dict[int, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    """Per engaged row with a list: log choice odds of each shown product per attribute, and in all (position
    effect plus every attribute)."""
    _logits: dict[tuple[int, float], tuple[dict[int, float], dict[int, dict[int, float]]]] = field(
        default_factory=dict
    )

    def exposure(self, row: int, a: int, catalog: RankCatalog, priors: Priors) -> dict[int, float]:
        """Share of each value of attribute `a` among the products the session saw when it chose `row`
        (the list it was chosen from, else the products of its category)."""
        key = (row, a)
        share = self._exposure.get(key)
        if share is None:
            shown = self.shown.get(row)
            if shown:
                counts: dict[int, float] = defaultdict(float)
                attract = self._attract.get(row)
                if attract is None:
                    weights = [1.0] * len(shown)
                else:  # how likely each shown product was to be chosen for everything but its value of a
                    h, whole = attract
                    weights = np.exp(whole - h[:, a]).tolist()
                for code, weight in zip(catalog.codes[shown, a].tolist(), weights, strict=True):
                    if code != MISSING:
                        counts[code] += weight
            else:
                counts = defaultdict(float, priors.catalog_counts.get((int(catalog.leaf[row]), a), {}))
            total = sum(counts.values()) or 1.0
            share = self._exposure[key] = {code: n / total for code, n in counts.items()}
        return share

    def condition(
        self,
        catalog: RankCatalog,
        priors: Priors,
        strength: Callable[[int], np.ndarray],
        beta: Callable[[int], np.ndarray],
        gamma: Callable[[int], np.ndarray],
    ) -> None:
        """Judge each choice against what else was likely to be chosen, not against the plain list.

        Without this, a click on a women's gold watch from a list half of men's watches counts as evidence
        for gold as much as for "women", because gold is rarer in the whole list than among the women's
        watches the shopper was choosing from; a colour correlated with a strong attribute then looks wanted.
        Here the share f(v) of the conditional-logit evidence for attribute a weights every shown product by
        its choice odds from its position (gamma) and its other attributes (1 + x_b (e^beta_b - 1), x_b from
        the session's plain evidence). `strength`, `beta`, `gamma`: per leaf node, the evidence strength and
        the positive coefficient per attribute (all of them) and the position effects.
        """
        self._attract = {}
        self._exposure.clear()
        self._logits.clear()
        tables: dict[int, list[tuple[int, dict[int, float], dict[int, float], float, float]]] = {}
        # Products chosen from the same list in the same leaf share its odds: computed once per list and leaf.
        done: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}
        exp = math.exp
        for row, shown in self.shown.items():
            if not shown:
                continue
            leaf = int(catalog.leaf[row])
            same = done.get((id(shown), leaf))
            if same is not None:
                self._attract[row] = same
                continue
            parts = tables.get(leaf)
            if parts is None:
                s, b = strength(leaf), beta(leaf)
                parts = tables[leaf] = []
                for a in range(len(catalog.attributes)):
                    if b[a] <= 1e-6:
                        continue
                    total, _ = self.logits(a, float(s[a]), catalog, priors)
                    table = priors.table(leaf, a, strength=float(s[a]))
                    parts.append((a, table, total, _norm(table, total), math.expm1(min(b[a], MAX_EXPONENT))))
            h = np.zeros((len(shown), len(catalog.attributes)))
            codes = catalog.codes[shown]
            for a, table, total, z, grow in parts:
                for j, code in enumerate(codes[:, a].tolist()):
                    if code != MISSING:
                        p = table.get(code, 0.0) * exp(min(total.get(code, 0.0), MAX_EXPONENT) - z)
                        h[j, a] = math.log1p(p * grow)
            g = gamma(leaf)[[position_bucket(p) for p in range(1, len(shown) + 1)]]
            self._attract[row] = done[(id(shown), leaf)] = (h, g + h.sum(axis=1))
        self._exposure.clear()
        self._logits.clear()

    def logits(
        self, a: int, lam: float, catalog: RankCatalog, priors: Priors
    ) -> tuple[dict[int, float], dict[int, dict[int, float]]]:
        """Log-likelihood ratio per value of `a` (all engagement) and each product's own share of it.

        Choosing a product with value v out of a list where a share f(v) of products had v says
        lam - log(1 + f(v) (e^lam - 1)) for v and -log(1 + f(w) (e^lam - 1)) for every other value w shown:
        the conditional-logit evidence, so a click on what nearly every shown product has proves little.
        """
        key = (a, round(lam, 6))
        cached = self._logits.get(key)
        if cached is not None:
            return cached
        grow = math.expm1(min(lam, MAX_EXPONENT))
        total: dict[int, float] = defaultdict(float)
        own: dict[int, dict[int, float]] = {}
        codes = catalog.codes
        for row, weight in self.product_weight.items():
            part: dict[int, float] = {}
            for code, share in self.exposure(row, a, catalog, priors).items():
                part[code] = -weight * math.log1p(share * grow)
            code = int(codes[row, a])
            if code != MISSING:
                part[code] = part.get(code, 0.0) + weight * lam
            own[row] = part
            for code, value in part.items():
                total[code] += value
        for qa, code in self.queries:
            if qa == a:
                total[code] += self.query_weight * lam
        result = (dict(total), own)
        self._logits[key] = result
        return result


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
    """A session's engagement per product (strongest action), the lists products were chosen from, and the
    attribute values its queries named."""
    ev = Evidence(query_weight=query_weight)
    shown: list[int] = []
    for event in events:
        if event.action == "search":
            shown = [r for pid in event.results if (r := catalog.row(pid)) is not None]
            if shown:
                ev.lists.append((shown, event.timestamp))
            if event.query and query_weight > 0:
                ev.queries.extend(matcher.match(event.query))
            continue
        weight = ACTION_WEIGHTS.get(event.action)
        row = catalog.row(event.product_id) if event.product_id else None
        if weight is None or row is None:
            continue
        if row not in ev.product_weight:
            ev.shown[row] = shown if row in shown else None
            ev.order.append((row, event.timestamp))
        ev.product_weight[row] = max(ev.product_weight.get(row, 0.0), weight)
    return ev


TASTE_PRIORS = ("preference", "relative", "share", "uniform")
PREFERENCE_FLOOR = 0.2
"""Share of the "preference" prior spread evenly, so that no value is ruled out before a session speaks."""


class Priors:
    """Shop-wide taste per leaf category and attribute: the prior that x_a starts from.

    `mode` says how it is read off the engagement counts:
    - "preference" (default): the share of shoppers who want each value, q_v. A shopper who wants v multiplies
      the odds of engaging with a product of value v by e^s (s: the attribute's choice coefficient), so value
      v's lift (engagement over what the catalog offers) is (1 + q_v (e^s - 1)) / Z; q is solved from the lifts
      given s, floored by PREFERENCE_FLOOR.
    - "relative": the lifts themselves, normalised (the first-order reading of the same relation).
    - "share": the plain engagement share (models trained before 2026-11-24). It credits the common value of
      a skewed attribute (70 % of shoes are "Casual") with the popularity of its products; every product's x
      for that attribute then mostly repeated that popularity and its coefficient collapsed (docs/BENCHMARKS.md).
    A new shop (no engagement) gets a uniform prior under "preference" and "relative", product shares under
    "share".
    """

    def __init__(
        self, catalog: RankCatalog, smoothing: float | None = None, *, mode: str = "preference"
    ) -> None:
        if mode not in TASTE_PRIORS:
            raise ValueError(f"taste prior mode {mode!r}; expected one of {TASTE_PRIORS}")
        self.mode = mode
        # Pseudo-engagements: 1 per value at lift 1 ("preference", "relative"), 5 in all spread like the products.
        self.smoothing = smoothing if smoothing is not None else (5.0 if mode == "share" else 1.0)
        n_attr = len(catalog.attributes)
        # (leaf, attribute) -> {code: count}; catalog counts and engagement counts.
        self.catalog_counts: dict[tuple[int, int], dict[int, float]] = defaultdict(dict)
        self.engaged: dict[tuple[int, int], dict[int, float]] = defaultdict(dict)
        self.product_engaged: dict[int, float] = {}
        """row -> its own (weighted, decayed) engagement, to leave out of its own value's prior."""
        for leaf, row in zip(catalog.leaf.tolist(), catalog.codes.tolist(), strict=True):
            for a in range(n_attr):
                code = row[a]
                if code != MISSING:
                    bucket = self.catalog_counts[(leaf, a)]
                    bucket[code] = bucket.get(code, 0.0) + 1.0
        self._cache: dict[tuple[int, int, float], dict[int, float]] = {}
        self._uniform_cache: dict[tuple[int, int], dict[int, float]] = {}
        self._own_cache: dict[tuple[int, int, float], tuple[float, ...]] = {}

    def _uniform(self, leaf: int, a: int) -> dict[int, float]:
        key = (leaf, a)
        table = self._uniform_cache.get(key)
        if table is None:
            cat = self.catalog_counts.get(key, {})
            table = self._uniform_cache[key] = {code: 1.0 / len(cat) for code in cat}
        return table

    def add_engagement(self, catalog: RankCatalog, ev: Evidence, decay: float = 1.0) -> None:
        """Count a session's engaged products' values (weighted, decayed by the session's age)."""
        for row, weight in ev.product_weight.items():
            leaf = int(catalog.leaf[row])
            self.product_engaged[row] = self.product_engaged.get(row, 0.0) + weight * decay
            for a, code in enumerate(catalog.codes[row].tolist()):
                if code != MISSING:
                    bucket = self.engaged[(leaf, a)]
                    bucket[code] = bucket.get(code, 0.0) + weight * decay
        self._cache.clear()
        self._own_cache.clear()

    def decay(self, factor: float) -> None:
        for bucket in self.engaged.values():
            for code in bucket:
                bucket[code] *= factor
        for row in self.product_engaged:
            self.product_engaged[row] *= factor
        self._cache.clear()
        self._own_cache.clear()

    def table(self, leaf: int, a: int, *, uniform: bool = False, strength: float = 1.0) -> dict[int, float]:
        """code -> prior probability for one leaf and attribute (`uniform`: equal over the leaf's values).

        `strength` is the attribute's choice coefficient s, which the "preference" reading needs."""
        if uniform or self.mode == "uniform":
            return self._uniform(leaf, a)
        s = self._strength_key(strength)
        key = (leaf, a, s)
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        cat = self.catalog_counts.get((leaf, a), {})
        eng = self.engaged.get((leaf, a), {})
        n_cat = sum(cat.values()) or 1.0
        n_eng = sum(eng.values())
        m = self.smoothing
        if self.mode == "share":  # the plain engagement share, smoothed toward the product share
            table = {code: (eng.get(code, 0.0) + m * n / n_cat) / (n_eng + m) for code, n in cat.items()}
        else:
            # Observed over expected engagement (expected: in proportion to the products), each value starting
            # from m pseudo-engagements at lift 1, so a rare value's few lucky clicks do not make it a favourite.
            lift = {code: _lift(eng.get(code, 0.0), n_eng, n / n_cat, m) for code, n in cat.items()}
            table = _normalised(lift) if self.mode == "relative" else _preference(lift, s)
        self._cache[key] = table
        return table

    def _strength_key(self, strength: float) -> float:
        """The coefficient s as the "preference" reading uses it (clamped, rounded so that tables can be cached);
        0 for the other readings, which do not depend on it."""
        return round(min(max(strength, 0.05), 30.0), 3) if self.mode == "preference" else 0.0

    def own_out(self, leaf: int, a: int, code: int, own: float, strength: float, full: float) -> float:
        """The prior of `code` with `own` engagement (one product's) taken out of its count: a product's own
        clicks must not make its value look wanted, or a value held by few products becomes a stand-in for
        their popularity. The other values' priors and the normaliser stay as in the full table (`full`: this
        value's entry there); "share" and "uniform" priors are returned unchanged."""
        if own <= 0 or self.mode not in ("preference", "relative"):
            return full
        s = self._strength_key(strength)
        key = (leaf, a, s)
        sums = self._own_cache.get(key)
        if sums is None:
            cat = self.catalog_counts.get((leaf, a), {})
            eng = self.engaged.get((leaf, a), {})
            n_cat = sum(cat.values()) or 1.0
            n_eng = sum(eng.values())
            m = self.smoothing
            lifts = [_lift(eng.get(c, 0.0), n_eng, n / n_cat, m) for c, n in cat.items()]
            k, z, q_sum = _preference_scale(lifts, s) if s else (1.0, 0.0, 0.0)
            sums = self._own_cache[key] = (n_cat, n_eng, sum(lifts) or 1.0, float(len(lifts)), k, z, q_sum)
        n_cat, n_eng, lift_sum, n_values, k, z, q_sum = sums
        m = self.smoothing
        n_v = self.catalog_counts.get((leaf, a), {}).get(code, 0.0)
        eng_v = self.engaged.get((leaf, a), {}).get(code, 0.0)
        own_lift = _lift(max(eng_v - own, 0.0), max(n_eng - own, 0.0), n_v / n_cat, m)
        if self.mode == "relative":
            return own_lift / lift_sum
        if q_sum <= 0:
            return full
        q = max(own_lift * z - 1.0, 0.0) / k / q_sum
        return (1.0 - PREFERENCE_FLOOR) * q + PREFERENCE_FLOOR / n_values


def _lift(engaged: float, n_engaged: float, share: float, m: float) -> float:
    """A value's engagement over what its share of the products would draw, from m pseudo-engagements at 1."""
    return (engaged + m) / (n_engaged * share + m)


def _normalised(table: dict[int, float]) -> dict[int, float]:
    total = sum(table.values())
    if total <= 0:
        return {code: 1.0 / len(table) for code in table} if table else {}
    return {code: value / total for code, value in table.items()}


def _preference_scale(lifts: Sequence[float], s: float) -> tuple[float, float, float]:
    """K = e^s - 1, Z = (K + n) / sum(lift) and sum_v max(lift_v Z - 1, 0) / K: q_v is the v-th term over the
    sum (see `_preference`)."""
    k = math.expm1(s)
    z = (k + len(lifts)) / (sum(lifts) or 1.0)
    return k, z, sum(max(v * z - 1.0, 0.0) for v in lifts) / k


def _preference(lift: dict[int, float], s: float) -> dict[int, float]:
    """q from lift_v = (1 + q_v K) / Z with K = e^s - 1 and sum q = 1: Z = (K + n) / sum(lift), negative q cut
    to 0, then PREFERENCE_FLOOR of the mass spread evenly."""
    if not lift:
        return {}
    k, z, _ = _preference_scale(list(lift.values()), s)
    q = _normalised({code: max(value * z - 1.0, 0.0) / k for code, value in lift.items()})
    even = PREFERENCE_FLOOR / len(lift)
    return {code: (1.0 - PREFERENCE_FLOOR) * value + even for code, value in q.items()}


def features(
    rows: Sequence[int],
    attributes: Sequence[int],
    catalog: RankCatalog,
    ev: Evidence,
    priors: Priors,
    strength: Sequence[float] | np.ndarray,
    exclude: int | None = None,
    *,
    uniform_prior: bool = False,
    own_out: bool = False,
) -> np.ndarray:
    """x_a(i) for each row (product) and attribute: (len(rows), len(attributes)) float32.

    `strength` holds s_a per attribute (indexed like `attributes`). `exclude` (the chosen product in
    training) and each product's own engagement are left out of the evidence, so a product is never scored
    by its own clicks. `uniform_prior` takes a uniform taste prior instead of the shop-wide one.
    """
    out = np.zeros((len(rows), len(attributes)), dtype=np.float32)
    if not len(rows):
        return out
    exp = math.exp
    item_codes = catalog.codes[list(rows)].tolist()
    item_leaves = catalog.leaf[list(rows)].tolist()
    engaged = ev.product_weight
    for j, a in enumerate(attributes):
        lam = max(float(strength[j]), 0.0)
        total, own = ev.logits(a, lam, catalog, priors)
        base = _minus(total, own.get(exclude)) if exclude is not None and exclude in own else total
        norms: dict[int, float] = {}
        for i, leaf in enumerate(item_leaves):
            code = item_codes[i][a]
            if code == MISSING:
                continue
            table = priors.table(leaf, a, uniform=uniform_prior, strength=lam)
            row = rows[i]
            if row != exclude and row in engaged:
                logits = _minus(base, own[row])
                z = _norm(table, logits)
            else:
                logits = base
                z = norms[leaf] if leaf in norms else norms.setdefault(leaf, _norm(table, base))
            p = table.get(code, 0.0)
            if own_out and not uniform_prior:
                p = priors.own_out(leaf, a, code, priors.product_engaged.get(row, 0.0), lam, p)
            out[i, j] = p * exp(min(logits.get(code, 0.0), MAX_EXPONENT) - z)
    return out


def _minus(total: dict[int, float], part: dict[int, float] | None) -> dict[int, float]:
    if not part:
        return total
    out = dict(total)
    for code, value in part.items():
        out[code] = out.get(code, 0.0) - value
    return out


def _norm(table: dict[int, float], logits: dict[int, float]) -> float:
    """log sum_v prior(v) exp(logit(v)) (values without evidence have logit 0), shifted by the largest term so
    that a session whose every value carries strong negative evidence does not cancel to 0."""
    covered = 0.0
    top = -math.inf
    for code, value in logits.items():
        weight = table.get(code, 0.0)
        if weight > 0.0:
            covered += weight
            top = max(top, min(value, MAX_EXPONENT))
    rest = max(1.0 - covered, 0.0)  # prior mass of the values with no evidence (logit 0)
    if rest > 1e-12:
        top = max(top, 0.0)
    if top == -math.inf:
        return 0.0
    total = rest * math.exp(-top) if rest > 1e-12 else 0.0
    for code, value in logits.items():
        weight = table.get(code, 0.0)
        if weight > 0.0:
            total += weight * math.exp(min(value, MAX_EXPONENT) - top)
    return top + math.log(total) if total > 0.0 else top


@dataclass
class Choice:
    """One product a session chose from the products it was shown (or from sampled ones)."""

    session: int
    chosen: int
    rows: list[int]
    positions: list[int]
    timestamp: float
    labels: list[int] | None = None
    """Binary click model: 1 for each product of the list the session engaged with from it, else 0."""


def choices(
    ev: Evidence, session: int, catalog: RankCatalog, rng: np.random.Generator, negatives: int
) -> list[Choice]:
    """The choice events of one session.

    A product engaged for the first time is a choice among the products of the result list it was picked
    from that the session had not engaged with yet; without a list (browse logs) it is compared with
    `negatives` random products of its own category.
    """
    out: list[Choice] = []
    seen: set[int] = set()
    for row, timestamp in ev.order:
        shown = ev.shown.get(row)
        if shown:
            positions = {r: p for p, r in enumerate(shown, 1)}
            rows = [row] + [r for r in shown if r != row and r not in seen]
            buckets = [position_bucket(positions[r]) for r in rows]
        else:
            rows = [row, *_sample(catalog, row, seen, rng, negatives)]
            buckets = [position_bucket(None)] * len(rows)
        seen.add(row)
        if len(rows) > 1:
            out.append(Choice(session, row, rows, buckets, timestamp))
    return out


def shown_lists(ev: Evidence, session: int, catalog: RankCatalog) -> list[Choice]:
    """The result lists of one session as independent click trials (the binary click model): each shown
    product is clicked or not, given its position and its match with the rest of the session."""
    out: list[Choice] = []
    for shown, timestamp in ev.lists:
        labels = [1 if ev.shown.get(r) is shown else 0 for r in shown]
        anchor = next((r for r, y in zip(shown, labels, strict=True) if y), shown[0])
        buckets = [position_bucket(p) for p in range(1, len(shown) + 1)]
        out.append(Choice(session, anchor, list(shown), buckets, timestamp, labels))
    return out


def _sample(catalog: RankCatalog, row: int, seen: set[int], rng: np.random.Generator, k: int) -> list[int]:
    same = catalog.rows_in_leaf(int(catalog.leaf[row]))
    if len(same) <= 1:
        return []
    picks = rng.choice(same, size=min(k + len(seen) + 1, len(same)), replace=False).tolist()
    return [r for r in picks if r != row and r not in seen][:k]
