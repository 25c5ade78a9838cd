"""Attribute importance learned from behaviour, and session re-ranking weighted by it.

Model: in each category node a conditional logit over choice sets (the list a search showed, or sampled
products when the log has no lists),

    P(choose i | shown S) = exp(gamma[pos(i)] + sum_a h_a(i)) / sum_{j in S} exp(...),
    h_a(i) = log(1 + x_a(i) (e^beta_a - 1)),

where gamma absorbs position bias (a top slot is clicked more whatever it holds) and x_a(i) is the probability,
from the rest of the session, that i's value of a is the one the shopper wants (see `features`). A match
multiplies the choice odds by e^beta_a; h_a is that factor averaged over the uncertain match. beta_a is then
how strongly a match on a drives choices beyond position and chance; the importance of a is its positive part,
normalised to sum to 1.

Every level of the category tree gets a model; a node's prior is its parent's fit (Gaussian, precision
`prior_strength`), so a node with few sessions stays close to its parent and one with many speaks for itself.
Updates are incremental: the fitted log-likelihood is kept as a quadratic (Laplace approximation: mean and
Hessian), multiplied by a time-decay factor and combined with the new events' exact log-likelihood, so new
behaviour moves the weights without refitting old events, and old behaviour fades with `half_life_days`.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np
from scipy.optimize import minimize
from scipy.special import ndtr

from shangpin import __version__
from shangpin._progress import track
from shangpin._util import atomic_write
from shangpin.errors import ConfigError, DataError, IncompatibleModelError, NotFittedError
from shangpin.ranking.catalog import MISSING, RankCatalog
from shangpin.ranking.features import (
    POSITION_BUCKETS,
    TASTE_PRIORS,
    Choice,
    Evidence,
    Priors,
    QueryMatcher,
    choices,
    features,
    session_evidence,
    shown_lists,
)
from shangpin.records import Event
from shangpin.stages.base import Params

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
DAY = 86400.0
ROOT_PRECISION = 1.0
"""Precision of the zero-mean prior of top-level nodes (and of the first pass's parent tie under "auto")."""
MAX_COEFFICIENT = 30.0
"""Coefficients are capped here inside exp() so that a degenerate fit cannot overflow."""


@dataclass
class NodeFit:
    """The fitted state of one category node: attributes (global indices), coefficients and curvature."""

    attributes: list[int]
    beta: np.ndarray
    gamma: np.ndarray
    hessian: np.ndarray
    n_choices: float = 0.0
    n_sessions: int = 0
    fixed_weights: np.ndarray | None = None
    """Weights to rank with instead of the learned ones (baselines: equal or known weights)."""
    beta_sd: np.ndarray | None = None
    """Posterior standard deviation of beta (Laplace: the inverse of data curvature plus prior precision)."""

    def to_json(self) -> dict[str, Any]:
        return {
            "attributes": self.attributes,
            "beta": self.beta.tolist(),
            "gamma": self.gamma.tolist(),
            "hessian": self.hessian.tolist(),
            "beta_sd": self.beta_sd.tolist() if self.beta_sd is not None else None,
            "n_choices": self.n_choices,
            "n_sessions": self.n_sessions,
        }

    @classmethod
    def from_json(cls, n: dict[str, Any]) -> NodeFit:
        return cls(
            attributes=[int(a) for a in n["attributes"]],
            beta=np.array(n["beta"], dtype=float),
            gamma=np.array(n["gamma"], dtype=float),
            hessian=np.array(n["hessian"], dtype=float),
            beta_sd=np.array(n["beta_sd"], dtype=float) if n.get("beta_sd") is not None else None,
            n_choices=float(n["n_choices"]),
            n_sessions=int(n["n_sessions"]),
        )

    def positive(self) -> np.ndarray:
        """E[max(beta, 0)] under the Gaussian posterior: an attribute whose coefficient is uncertain keeps some
        weight instead of being cut to zero by a noisy negative estimate."""
        mean = self.beta
        if self.beta_sd is None or not len(mean):
            clipped: np.ndarray = np.clip(mean, 0.0, None)
            return clipped
        sd = np.maximum(self.beta_sd, 1e-9)
        ratio = mean / sd
        out: np.ndarray = mean * ndtr(ratio) + sd * np.exp(-0.5 * ratio**2) / math.sqrt(2 * math.pi)
        return out

    def strengths(self) -> np.ndarray:
        """Evidence strength per attribute for ranking (fixed weights keep the learned total, so a baseline
        differs from the learned model only in how the total is shared)."""
        positive = self.positive()
        if self.fixed_weights is not None:
            scaled: np.ndarray = self.fixed_weights * float(positive.sum())
            return scaled
        return positive

    def point_weights(self) -> np.ndarray:
        """Importance as reported from the conditioned fit: the positive part of the coefficient's estimate,
        normalised to 1 (uniform when nothing helps). Unlike E[max(beta, 0)] it does not credit an attribute
        for being uncertain: a nearly constant attribute has a wide posterior whose expected positive part is
        large whatever its estimate (over nine simulator runs rho rose in eight, docs/BENCHMARKS.md)."""
        return _shares(np.clip(self.beta, 0.0, None))

    def weights(self) -> np.ndarray:
        """Ranking weights: the expected positive part of beta, normalised to 1 (uniform when nothing helps)."""
        if self.fixed_weights is not None:
            return self.fixed_weights
        return _shares(self.positive())


def _shares(values: np.ndarray) -> np.ndarray:
    """Non-negative values normalised to sum to 1; uniform when they are all (near) 0."""
    total = float(values.sum())
    if not len(values):
        return values
    out: np.ndarray = values / total if total > 1e-9 else np.full(len(values), 1.0 / len(values))
    return out


@dataclass
class RankRequest:
    """A session so far and the products to order for it (`base`: optional relevance per candidate)."""

    request_id: str
    candidates: list[str]
    events: list[Event] = field(default_factory=list)
    category: str | None = None
    base: dict[str, float] = field(default_factory=dict)


@dataclass
class Ranking:
    request_id: str
    ranking: list[str]
    scores: dict[str, float]
    explanations: dict[str, dict[str, float]]
    category: str | None


class _ImportanceMemo:
    """One read-out of importance: each category's children, and the weights computed so far."""

    def __init__(self, parent: Sequence[int]) -> None:
        self.children: dict[int, list[int]] = defaultdict(list)
        for node, up in enumerate(parent):
            if up >= 0:
                self.children[up].append(node)
        self.weights: dict[int, dict[int, float]] = {}


class RankModel(Params):
    """Learns per-category attribute importance from a catalog and its behaviour log, and re-ranks sessions.

    Args:
        iterations: fits that alternate "evidence strength per attribute = its coefficient" and "coefficients from
            features computed with that strength" (see `features`); the first uses `initial_strength`.
        initial_strength: evidence strength of one engagement before any coefficient is known.
        query_weight: engagement weight of an attribute value named in a search query.
        prior_strength: precision of the Gaussian that ties a node's coefficients to its parent's (higher = more
            backing off), or "auto": estimated from the data as 1 / tau^2, tau^2 being how far children's
            coefficients spread around their parents' beyond their own standard errors (empirical Bayes), so a
            shop whose categories differ keeps them apart and one whose categories agree pools them.
        half_life_days: behaviour this many days older than the newest event counts half; 0 = no decay.
        negatives: sampled comparison products per choice when the log has no shown lists.
        min_coverage: share of a node's products that must carry an attribute for it to be ranked on.
        choice_model: "multinomial" (default): each engaged product is one choice from the rest of its list, or
            from sampled products of its category when the log has no lists (conditional logit). "binary": each
            shown product is an independent click trial (logistic, position effects as intercepts), the
            position-based click model; better on the 20,000-session fashion benchmark, worse on the demo
            catalog at 3,000 sessions (docs/BENCHMARKS.md). "auto": binary when at least half of the engaged
            products were picked from a logged list, else multinomial.
        rank_prior: the taste prior when ranking a session: "learned" (default): the shop-wide taste that
            training starts from (`taste_prior`), so a session that has said little about an attribute is
            assumed to want what shoppers of its category mostly want; "uniform": equal over the category's
            values, so only the session's own evidence speaks. With the "preference" taste prior, "learned"
            raised NDCG@10 by 0.007-0.07 in every setting measured (two catalogs, four click models,
            docs/BENCHMARKS.md); "uniform" was the default while the taste prior was the plain engagement share,
            which credits popular products' values and ranked worse. Models saved before keep "uniform".
        base_weight: weight of a request's own relevance scores (min-max scaled) next to the preference score.
        gain: g in the gain 2^(g u) - 1 that ranking maximises in expectation, u = sum_a w_a [value matches the
            session's preference] in [0, 1]. 5 is docs/metrics.md's NDCG gain: it favours a candidate likely to
            match everything over one that surely matches half. 0 ranks by expected utility sum_a w_a x_a.
        link: how a product's attribute evidence enters its choice odds: "marginal" (default) averages
            exp(beta_a [value matches]) over the match, which is uncertain with probability x_a: 1 + x_a (e^beta_a - 1);
            "linear" uses exp(beta_a x_a), its first-order form (models trained before this option).
        taste_prior: the shop-wide taste that training's x_a start from (see `features.Priors`): "preference"
            (default): the share of shoppers wanting each value, solved from how much more often it is engaged
            with than the catalog offers it; "relative": that ratio itself; "share": the plain engagement share
            (models trained before this option), which credits a common value with the popularity of its products;
            "uniform": no shop-wide taste (higher importance recovery on the fashion simulator, lower on the demo
            catalog's; docs/BENCHMARKS.md).
        prior_own_out: leave each product's own engagement out of its value's taste prior in training, so that a
            value held by a few popular products does not stand in for their popularity. Off by default: over
            three simulator seeds it raised importance recovery on the fashion catalog (Spearman 0.55 -> 0.67
            under the shifted click model) but lowered it on the demo catalog (0.75 -> 0.71 under the shifted
            one), and NDCG@10 by about 0.002 (docs/BENCHMARKS.md).
        min_strength: floor on the evidence strength of one engagement (the s of `features`), in training and
            ranking. The strength is the attribute's own coefficient, and a weak attribute's small coefficient
            made its x nearly flat; the coefficient fitted on a nearly flat x is then large (a small wobble needs
            a large slope), so the alternating fit swung between the two and over-weighted weak attributes with
            many values (colour: coefficient 0.9 where the simulator's weight was 0). With the floor, x always
            says which values the session engaged with, and the coefficient measures how much that matters.
            The first pass uses `initial_strength`. 2.5 raised importance recovery on the fashion simulator
            from Spearman 0.69 / 0.58 to 0.78 / 0.75 (default / shifted click model) at about the same
            NDCG@10 (docs/BENCHMARKS.md); 0 = no floor.
        condition: read importance (`importance`, `facets`) from one more fit whose session evidence judges
            each engagement against the products the shopper was likely to choose, by position and by the other
            attributes under the ranking fit, instead of the plain result list (`Evidence.condition`), so that a
            value correlated with a wanted one (gold among women's watches) is not read as wanted itself.
            Ranking keeps the plain fit: the correlated proxy predicts clicks, and conditioned features ranked
            worse under the shifted click model (docs/BENCHMARKS.md). That fit's importance is the positive part
            of each estimate (`NodeFit.point_weights`). Costs one more pass of training.
        parent_importance: what `importance` and `facets` report for a category with subcategories:
            "children" (default): its subcategories' importance averaged by their (decayed) choices, plus its own
            fit for products filed at the node itself: what the category's shoppers, taken together, care
            about. "own": the node's own fit over all its subcategories' choices pooled, which weighs an
            attribute by how much it moves choices where it varies within a list, not by how many of the
            category's shoppers care about it. Which one recovers a simulator's hidden weights depends on how
            the simulator defines a parent's: over 24 runs (two catalogs, four click models) Spearman rho was
            0.764 against 0.760; +0.037 (top-level categories +0.12) where a parent's weights are its
            subcategories' mean, -0.007 where they are the centre its subcategories are drawn around
            (docs/BENCHMARKS.md). "children" risks less. Ranking is unchanged: it uses each node's own fit.
        seed: random seed for sampled comparison products.
    """

    name = "rank_attributes"

    def __init__(
        self,
        *,
        iterations: int = 2,
        initial_strength: float = 1.0,
        query_weight: float = 1.0,
        prior_strength: float | str = "auto",
        half_life_days: float = 30.0,
        negatives: int = 20,
        min_coverage: float = 0.2,
        rank_prior: str = "learned",
        choice_model: str = "multinomial",
        base_weight: float = 1.0,
        gain: float = 5.0,
        link: str = "marginal",
        taste_prior: str = "preference",
        prior_own_out: bool = False,
        min_strength: float = 2.5,
        condition: bool = True,
        parent_importance: str = "children",
        seed: int = 13,
    ) -> None:
        self.iterations = iterations
        self.initial_strength = initial_strength
        self.query_weight = query_weight
        self.prior_strength = prior_strength
        self.half_life_days = half_life_days
        self.negatives = negatives
        self.min_coverage = min_coverage
        self.rank_prior = rank_prior
        self.choice_model = choice_model
        self.base_weight = base_weight
        self.gain = gain
        self.link = link
        self.taste_prior = taste_prior
        self.prior_own_out = prior_own_out
        self.min_strength = min_strength
        self.condition = condition
        self.parent_importance = parent_importance
        self.seed = seed

    # Models saved before `gain`, `link`, `taste_prior` and `min_strength` existed: expected utility, linear link,
    # shares, no evidence floor; before the defaults of `parent_importance` and `rank_prior` changed: as they were.
    legacy_params: ClassVar[dict[str, Any]] = {
        "gain": 0.0,
        "link": "linear",
        "taste_prior": "share",
        "min_strength": 0.0,
        "condition": False,
        "parent_importance": "own",
        "rank_prior": "uniform",
    }

    # -- training ----------------------------------------------------------------------------------------------
    CHOICES: dict[str, tuple[str, ...]] = {
        "choice_model": ("multinomial", "binary", "auto"),
        "rank_prior": ("uniform", "learned"),
        "link": ("marginal", "linear"),
        "taste_prior": TASTE_PRIORS,
        "parent_importance": ("children", "own"),
    }

    def _check_params(self) -> None:
        for name, default in self._param_defaults().items():
            value = getattr(self, name)
            number = isinstance(value, int | float) and not isinstance(value, bool)
            if (isinstance(default, bool) and not isinstance(value, bool)) or (
                isinstance(default, int | float) and not isinstance(default, bool) and not number
            ):
                kind = "true or false" if isinstance(default, bool) else "a number"
                raise ConfigError(
                    f"rank parameter {name} = {value!r}; expected {kind} (default {default!r}). "
                    f"Fix the config file or the --set {name}=... override."
                )
        if self.min_strength < 0:
            raise ConfigError(
                f"rank parameter min_strength = {self.min_strength!r}; expected a number >= 0 (0 = no floor)."
            )
        for name, allowed in self.CHOICES.items():
            value = getattr(self, name)
            if value not in allowed:
                raise ConfigError(
                    f"rank parameter {name} = {value!r}; expected one of {', '.join(map(repr, allowed))}. "
                    f"Fix the config file or the --set {name}=... override."
                )

    def fit(self, catalog: RankCatalog, events: Iterable[Event]) -> Self:
        """Learn importance per node from scratch."""
        self._check_params()
        self.catalog_ = catalog
        self.matcher_ = QueryMatcher(catalog)
        self.priors_ = Priors(catalog, mode=self.taste_prior)
        self.nodes_: dict[int, NodeFit] = {}
        self.attribution_: dict[int, NodeFit] = {}
        self.t_ref_ = 0.0
        self.train_info_: dict[str, Any] = {"n_events": 0, "n_sessions": 0, "n_choices": 0, "updates": 0}
        self._learn(events, first=True)
        return self

    def update(self, events: Iterable[Event], catalog: RankCatalog | None = None) -> Self:
        """Fold new events into the fit without revisiting old ones; older behaviour decays by its age.

        Sessions are read within `events` only: a session split across two updates is two sessions.
        """
        self._check_fitted()
        if catalog is not None:
            self._merge_catalog(catalog)
        self._learn(events, first=False)
        return self

    def _learn(self, events: Iterable[Event], *, first: bool) -> None:
        started = time.perf_counter()
        catalog = self.catalog_
        sessions = group_sessions(events)
        n_events = sum(len(s) for s in sessions.values())
        if first and not sessions:
            raise DataError(
                "no behaviour events to learn from; expected events like "
                '{"session_id": "s1", "action": "click", "product_id": "p1", "timestamp": 1700000000}.'
            )
        t_new = max((e.timestamp for s in sessions.values() for e in s), default=self.t_ref_)
        t_new = max(t_new, self.t_ref_)
        decay_old = self._decay(t_new - self.t_ref_) if not first else 1.0
        if not first:
            self.priors_.decay(decay_old)

        rng = np.random.default_rng(self.seed + int(self.train_info_["updates"]))
        evidence: list[Evidence] = []
        all_choices: list[Choice] = []
        listed = engaged = 0
        for events_ in track(sessions.values(), "reading sessions", total=len(sessions)):
            ev = session_evidence(events_, catalog, self.matcher_, self.query_weight)
            evidence.append(ev)
            # Only engagement reaches the shop-wide priors; decay weights by the session's age.
            self.priors_.add_engagement(catalog, ev, self._decay(t_new - events_[-1].timestamp))
            if first:
                listed += sum(1 for shown in ev.shown.values() if shown)
                engaged += len(ev.shown)
        if first:
            self.choice_model_ = self.choice_model
            if self.choice_model == "auto":
                self.choice_model_ = "binary" if engaged and listed >= 0.5 * engaged else "multinomial"
        for index, ev in enumerate(evidence):
            if self.choice_model_ == "binary":
                all_choices.extend(shown_lists(ev, index, catalog))
            else:
                all_choices.extend(choices(ev, index, catalog, rng, self.negatives))
        log.info("rank: %d sessions, %d events, %d choices", len(sessions), n_events, len(all_choices))

        by_node: dict[int, list[int]] = defaultdict(list)
        for k, choice in enumerate(all_choices):
            for node in catalog.lineage(int(catalog.leaf[choice.chosen])):
                by_node[node].append(k)
        weights = np.array([self._decay(t_new - c.timestamp) for c in all_choices])
        sessions_per_node = {n: len({all_choices[k].session for k in ks}) for n, ks in by_node.items()}
        passes = max(self.iterations, 1)
        previous = dict(self.nodes_)
        for iteration in range(passes):
            fitted = self._fit_pass(
                evidence, all_choices, by_node, weights, sessions_per_node, previous, decay_old, iteration + 1
            )
            self.nodes_ = fitted
            if self.prior_strength == "auto" and first and iteration == 0:
                # Estimated once, from the first, loosely tied pass; later passes and updates use it.
                self.tie_ = _between_child_precision(fitted, catalog, self._tie)
        if self.condition:
            # Importance: one more pass on evidence conditioned on the ranking fit (see `condition`).
            for ev in evidence:
                self._condition(ev)
            self.attribution_ = self._fit_pass(
                evidence,
                all_choices,
                by_node,
                weights,
                sessions_per_node,
                self.attribution_,
                decay_old,
                passes + 1,
            )
        else:
            self.attribution_ = {}
        self.t_ref_ = t_new
        info = self.train_info_
        info["n_events"] += n_events
        info["n_sessions"] += len(sessions)
        info["n_choices"] += len(all_choices)
        info["updates"] += 0 if first else 1
        info["seconds"] = round(time.perf_counter() - started, 2)

    def _fit_pass(
        self,
        evidence: list[Evidence],
        all_choices: list[Choice],
        by_node: dict[int, list[int]],
        weights: np.ndarray,
        sessions_per_node: dict[int, int],
        previous: dict[int, NodeFit],
        decay_old: float,
        number: int,
    ) -> dict[int, NodeFit]:
        """One fit of every node: session features at the current evidence strengths, then the choice model
        from the top of the tree down (each node tied to its parent's fresh fit and to its own `previous`
        state, decayed)."""
        catalog = self.catalog_
        n_attr = len(catalog.attributes)
        # Features over every attribute once per choice; each node reads its own columns.
        strengths = {
            leaf: self._strength(leaf) for leaf in {int(catalog.leaf[c.chosen]) for c in all_choices}
        }
        matrices = [
            features(
                c.rows,
                range(n_attr),
                catalog,
                evidence[c.session],
                self.priors_,
                strengths[int(catalog.leaf[c.chosen])],
                exclude=c.chosen if c.labels is None else None,
                own_out=self.prior_own_out,
            )
            for c in track(all_choices, f"session features, pass {number}", total=len(all_choices))
        ]
        fitted: dict[int, NodeFit] = {}
        for node in range(len(catalog.nodes)):  # parents come before children
            attrs = catalog.node_attributes[node]
            prior_beta, prior_gamma = self._parent_prior(fitted.get(catalog.parent[node]), attrs)
            old = previous.get(node)
            if old is not None and old.attributes != attrs:
                old = None  # the node's attribute set changed with the catalog: start it afresh
            members = by_node.get(node, [])
            fit = _fit_node(
                [matrices[k][:, attrs] for k in members],
                [all_choices[k].positions for k in members],
                weights[members] if members else np.zeros(0),
                prior_beta=prior_beta,
                prior_gamma=prior_gamma,
                prior_strength=self._tie(catalog.depth(node))
                if catalog.parent[node] >= 0
                else ROOT_PRECISION,
                old=old,
                old_decay=decay_old,
                labels=[all_choices[k].labels for k in members] if self.choice_model_ == "binary" else None,
                link=self.link,
            )
            fit.attributes = list(attrs)
            fit.n_sessions = (old.n_sessions if old else 0) + sessions_per_node.get(node, 0)
            fitted[node] = fit
        return fitted

    def _tie(self, depth: int) -> float:
        """Precision of the Gaussian tying the coefficients of a node at `depth` (>= 1) to its parent's."""
        if self.prior_strength == "auto":
            ties = getattr(self, "tie_", {})
            return float(ties.get(depth, ties.get(max(ties, default=0), ROOT_PRECISION)))
        return float(self.prior_strength)

    def _parent_prior(self, fit: NodeFit | None, attrs: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        if fit is None:
            return np.zeros(len(attrs)), np.zeros(POSITION_BUCKETS)
        mean = float(fit.beta.mean()) if len(fit.beta) else 0.0
        lookup = dict(zip(fit.attributes, fit.beta.tolist(), strict=True))
        # An attribute the parent does not rank on starts from the parent's average coefficient.
        return np.array([lookup.get(a, mean) for a in attrs]), fit.gamma.copy()

    def _strength(self, leaf: int) -> np.ndarray:
        """Evidence strength per attribute (all of them) in a leaf: the nearest fitted node's expected positive
        coefficient, floored at `min_strength`."""
        out = self._positive(leaf)
        return np.where(np.isnan(out), self.initial_strength, np.clip(out, self.min_strength, None))

    def _positive(self, leaf: int) -> np.ndarray:
        """The nearest fitted node's expected positive coefficient per attribute (all of them; NaN where no
        node on the leaf's path ranks on the attribute)."""
        out = np.full(len(self.catalog_.attributes), np.nan)
        for node in self.catalog_.lineage(leaf):
            fit = self.nodes_.get(node)
            if fit is None:
                continue
            for a, b in zip(fit.attributes, fit.positive().tolist(), strict=True):
                if np.isnan(out[a]):
                    out[a] = b
        return out

    def _condition(self, ev: Evidence) -> None:
        """Condition a session's evidence on the fitted model (see `Evidence.condition`)."""
        if not self.condition or not self.nodes_:
            return

        def gamma(leaf: int) -> np.ndarray:
            fit = next((self.nodes_[n] for n in self.catalog_.lineage(leaf) if n in self.nodes_), None)
            return fit.gamma if fit is not None else np.zeros(POSITION_BUCKETS)

        ev.condition(
            self.catalog_,
            self.priors_,
            self._strength,
            lambda leaf: np.nan_to_num(self._positive(leaf), nan=0.0),
            gamma,
        )

    def _decay(self, seconds: float) -> float:
        if self.half_life_days <= 0:
            return 1.0
        return float(0.5 ** (max(seconds, 0.0) / (self.half_life_days * DAY)))

    def _merge_catalog(self, catalog: RankCatalog) -> None:
        if catalog.attributes != self.catalog_.attributes or catalog.nodes[: len(self.catalog_.nodes)] != (
            self.catalog_.nodes
        ):
            raise DataError(
                "the catalog given to the update has other attributes or categories than the trained one "
                f"(trained: {len(self.catalog_.attributes)} attributes, {len(self.catalog_.nodes)} nodes); "
                "retrain with 'shangpin rank train' to change the catalog's structure."
            )
        self.catalog_ = catalog
        self.matcher_ = QueryMatcher(catalog)

    # -- outputs -----------------------------------------------------------------------------------------------
    def importance(self) -> dict[str, dict[str, float]]:
        """{category path: {attribute: weight}} for every node, weights summing to 1, most important first."""
        self._check_fitted()
        memo = _ImportanceMemo(self.catalog_.parent)
        return {
            path: {name: round(w, 6) for name, w in self._by_weight(node, memo)}
            for node, path in enumerate(self.catalog_.nodes)
        }

    def facets(self, category: str) -> list[tuple[str, float]]:
        """Attributes of a category by importance, most important first (facet order)."""
        self._check_fitted()
        node = self.catalog_.resolve(category)
        if node is None:
            raise DataError(
                f"unknown category {category!r}; expected a path of the trained catalog such as "
                f"{self.catalog_.nodes[0]!r}. List them with 'shangpin rank importance'."
            )
        return self._by_weight(node)

    def _by_weight(self, node: int, memo: _ImportanceMemo | None = None) -> list[tuple[str, float]]:
        names = self.catalog_.attributes
        weights = self._node_importance(node, memo or _ImportanceMemo(self.catalog_.parent))
        return sorted(((names[a], w) for a, w in weights.items()), key=lambda t: -t[1])

    def _node_importance(self, node: int, memo: _ImportanceMemo) -> dict[int, float]:
        """{attribute index: weight} of one node (see `parent_importance`), memoised over a read-out."""
        if node in memo.weights:
            return memo.weights[node]
        fit = self.attribution_.get(node)
        if fit is not None:  # the conditioned fit, read as its point estimate (see `condition`)
            own = dict(zip(fit.attributes, fit.point_weights().tolist(), strict=True))
        else:
            fit = self.nodes_[node]
            own = dict(zip(fit.attributes, fit.weights().tolist(), strict=True))
        children = memo.children.get(node, [])
        if self.parent_importance == "own" or not children:
            memo.weights[node] = own
            return own
        # What the node's shoppers care about: each child's importance, weighted by its (decayed) choices,
        # plus the node's own fit for choices of products filed at the node itself.
        total = dict.fromkeys(own, 0.0)
        mass = 0.0
        for child in children:
            n = self.nodes_[child].n_choices
            for a, w in self._node_importance(child, memo).items():
                if a in total:
                    total[a] += n * w
            mass += n
        rest = self.nodes_[node].n_choices - mass
        if rest > 1e-9 * max(mass, 1.0):
            for a, w in own.items():
                total[a] += rest * w
        z = sum(total.values())
        memo.weights[node] = {a: w / z for a, w in total.items()} if z > 0 else own
        return memo.weights[node]

    def node_stats(self) -> dict[str, dict[str, float]]:
        """Sessions and (decayed) choices behind each node's weights: how much to trust them."""
        self._check_fitted()
        return {
            path: {"sessions": self.nodes_[i].n_sessions, "choices": round(self.nodes_[i].n_choices, 2)}
            for i, path in enumerate(self.catalog_.nodes)
        }

    def rank(self, request: RankRequest) -> Ranking:
        """Order a request's candidates by the preferences its session revealed, weighted by importance."""
        self._check_fitted()
        catalog = self.catalog_
        rows = [catalog.row(pid) for pid in request.candidates]
        node = catalog.resolve(request.category)
        if node is None:
            leaves = [int(catalog.leaf[r]) for r in rows if r is not None]
            node = max(set(leaves), key=leaves.count) if leaves else None
        known = [r for r in rows if r is not None]
        scores = np.zeros(len(rows))
        explanations: dict[str, dict[str, float]] = {pid: {} for pid in request.candidates}
        if node is not None and known:
            fit = self.nodes_[node]
            ev = session_evidence(request.events, catalog, self.matcher_, self.query_weight)
            x = features(
                known,
                fit.attributes,
                catalog,
                ev,
                self.priors_,
                np.maximum(fit.strengths(), self.min_strength),
                uniform_prior=self.rank_prior == "uniform",
            )
            w = fit.weights()
            contrib = _contributions(x, w, self.gain)
            names = [catalog.attributes[a] for a in fit.attributes]
            k = 0
            for i, (pid, r) in enumerate(zip(request.candidates, rows, strict=True)):
                if r is None:
                    continue
                scores[i] = float(contrib[k].sum())
                parts = {
                    names[j]: round(float(contrib[k, j]), 4)
                    for j, a in enumerate(fit.attributes)
                    if catalog.codes[r, a] != MISSING
                }
                explanations[pid] = dict(sorted(parts.items(), key=lambda t: -t[1]))
                k += 1
        if request.base:
            base = np.array([request.base.get(pid, 0.0) for pid in request.candidates], dtype=float)
            span = float(base.max() - base.min())
            if span > 0:
                scores = scores + self.base_weight * (base - base.min()) / span
        order = sorted(range(len(rows)), key=lambda i: (-scores[i], i))
        return Ranking(
            request_id=request.request_id,
            ranking=[request.candidates[i] for i in order],
            scores={request.candidates[i]: round(float(scores[i]), 6) for i in order},
            explanations=explanations,
            category=catalog.nodes[node] if node is not None else None,
        )

    def is_fitted(self) -> bool:
        return hasattr(self, "nodes_")

    def _check_fitted(self) -> None:
        if not self.is_fitted():
            raise NotFittedError(
                "rank_attributes: the ranking model is not trained; train it with "
                "'shangpin rank train --catalog CATALOG.jsonl --events EVENTS.jsonl --model DIR'."
            )

    # -- persistence -------------------------------------------------------------------------------------------
    def save(self, path: Path) -> None:
        """Write the model into folder `path` (meta.json, state.json, catalog.npz)."""
        self._check_fitted()
        path.mkdir(parents=True, exist_ok=True)
        arrays = self.catalog_.to_arrays()
        np.savez(path / "catalog.npz", ids=arrays["ids"], leaf=arrays["leaf"], codes=arrays["codes"])
        nodes = [fit.to_json() for _, fit in sorted(self.nodes_.items())]
        priors = [[leaf, a, list(bucket.items())] for (leaf, a), bucket in self.priors_.engaged.items()]
        state = {
            "catalog": self.catalog_.to_json(),
            "nodes": nodes,
            "attribution": [fit.to_json() for _, fit in sorted(self.attribution_.items())],
            "priors": priors,
            "product_engaged": list(self.priors_.product_engaged.items()) if self.prior_own_out else [],
            "t_ref": self.t_ref_,
            "tie": {str(k): v for k, v in getattr(self, "tie_", {}).items()},
            "choice_model": self.choice_model_,
        }
        with atomic_write(path / "state.json") as fh:
            json.dump(state, fh)
        meta = {
            "kind": self.name,
            "version": FORMAT_VERSION,
            "params": self.get_params(),
            "shangpin": __version__,
            "trained_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "train_info": self.train_info_,
            "n_products": len(self.catalog_),
        }
        with atomic_write(path / "meta.json") as fh:
            json.dump(meta, fh, indent=2)

    @classmethod
    def load(cls, path: Path) -> RankModel:
        meta_path = path / "meta.json"
        if not meta_path.is_file():
            raise NotFittedError(
                f"expected a ranking model at {path} (meta.json, state.json, catalog.npz), found "
                f"{'no such folder' if not path.exists() else 'no meta.json'}; train one with "
                "'shangpin rank train --catalog CATALOG.jsonl --events EVENTS.jsonl --model DIR'."
            )
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if meta.get("version") != FORMAT_VERSION:
            raise IncompatibleModelError(
                f"rank_attributes: the model at {path} was saved in format v{meta.get('version')}, this code "
                f"reads v{FORMAT_VERSION}; retrain it with 'shangpin rank train'."
            )
        model = cls(**{**cls.legacy_params, **meta["params"]})
        state = json.loads((path / "state.json").read_text(encoding="utf-8"))
        with np.load(path / "catalog.npz", allow_pickle=False) as arrays:
            model.catalog_ = RankCatalog.from_saved(arrays, state["catalog"])
        model.matcher_ = QueryMatcher(model.catalog_)
        model.priors_ = Priors(model.catalog_, mode=model.taste_prior)
        for leaf, a, items in state["priors"]:
            model.priors_.engaged[(int(leaf), int(a))] = {int(c): float(v) for c, v in items}
        model.priors_.product_engaged = {int(r): float(v) for r, v in state.get("product_engaged", [])}
        model.nodes_ = {i: NodeFit.from_json(n) for i, n in enumerate(state["nodes"])}
        model.attribution_ = {i: NodeFit.from_json(n) for i, n in enumerate(state.get("attribution") or [])}
        model.t_ref_ = float(state["t_ref"])
        model.choice_model_ = str(state.get("choice_model", "multinomial"))
        model.tie_ = {int(k): float(v) for k, v in (state.get("tie") or {}).items()}
        model.train_info_ = dict(meta["train_info"])
        return model


def group_sessions(events: Iterable[Event]) -> dict[str, list[Event]]:
    """Events by session, each session in time order (stable for equal timestamps)."""
    sessions: dict[str, list[Event]] = defaultdict(list)
    for event in events:
        sessions[event.session_id].append(event)
    for events_ in sessions.values():
        events_.sort(key=lambda e: e.timestamp)
    return dict(sessions)


def _between_child_precision(
    fits: dict[int, NodeFit], catalog: RankCatalog, tie: Callable[[int], float]
) -> dict[int, float]:
    """Per depth of the children: 1 / tau^2, tau^2 being how much sibling categories' coefficients differ
    beyond their sampling noise: E[(b_i - b_j)^2] = 2 tau^2 + se_i^2 + se_j^2 over pairs of siblings.

    Siblings, not child and parent: a parent's fit contains its children's choices, so child-parent gaps
    understate the spread. The fits were shrunk toward their parent with precision `tie(depth)`; that is undone
    first (data precision = 1 / sd^2 - tie), and coefficients with less data precision than the tie are skipped.
    """
    by_parent: dict[tuple[int, int], list[tuple[float, float]]] = defaultdict(list)
    for node, fit in fits.items():
        parent = catalog.parent[node]
        up = fits.get(parent) if parent >= 0 else None
        if up is None or fit.beta_sd is None or fit.n_choices <= 0:
            continue
        t = tie(catalog.depth(node))
        lookup = dict(zip(up.attributes, up.beta.tolist(), strict=True))
        for a, b, sd in zip(fit.attributes, fit.beta.tolist(), fit.beta_sd.tolist(), strict=True):
            data_precision = 1.0 / max(sd, 1e-9) ** 2 - t
            if a in lookup and data_precision > t:
                unshrunk = lookup[a] + (b - lookup[a]) * (data_precision + t) / data_precision
                by_parent[(parent, a)].append((unshrunk, 1.0 / data_precision))
    spread: dict[int, list[float]] = defaultdict(list)
    for (parent, _), values in by_parent.items():
        depth = catalog.depth(parent) + 1
        for i, (bi, vi) in enumerate(values[:30]):
            for bj, vj in values[i + 1 : 30]:
                spread[depth].append(((bi - bj) ** 2 - vi - vj) / 2.0)
    return {
        depth: float(np.clip(1.0 / max(float(np.mean(v)), 1e-3), ROOT_PRECISION, 1e3))
        for depth, v in spread.items()
    }


def _fit_node(
    xs: Sequence[np.ndarray],
    positions: Sequence[Sequence[int]],
    weights: np.ndarray,
    *,
    prior_beta: np.ndarray,
    prior_gamma: np.ndarray,
    prior_strength: float,
    old: NodeFit | None,
    old_decay: float,
    labels: Sequence[list[int] | None] | None = None,
    link: str = "marginal",
) -> NodeFit:
    """MAP choice model for one node: new choices + decayed old quadratic + Gaussian tie to the parent.

    A product's score is gamma[position] + sum_a h_a, h_a = log(1 + x_a (e^beta_a - 1)) under the "marginal"
    link: the choice odds exp(beta_a [value matches]) averaged over the unknown match, which is 1 with
    probability x_a. The "linear" link h_a = beta_a x_a is its first-order form: it reads beta off a secant of
    the curve, which is steeper near x = 0 than near 1, so attributes whose x lie in different ranges are
    measured on different scales.
    """
    n_a = len(prior_beta)
    dim = n_a + POSITION_BUCKETS
    prior_mean = np.concatenate([prior_beta, prior_gamma])
    precision = np.full(dim, prior_strength)
    precision[n_a:] = prior_strength * 0.1  # position effects are shared nuisance: tie them loosely
    if old is not None:
        old_mean = np.concatenate([old.beta, old.gamma])
        old_h = old.hessian * old_decay
    else:
        old_mean = np.zeros(dim)
        old_h = np.zeros((dim, dim))

    x = np.concatenate(xs).astype(float) if xs else np.zeros((0, n_a))
    if xs:
        sizes = np.array([len(v) for v in xs])
        starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        pos = np.concatenate([np.asarray(p, dtype=np.intp) for p in positions])
        chosen = starts  # the chosen product is first in every choice set
        seg = np.repeat(np.arange(len(xs)), sizes)
        w = weights
    marginal = link == "marginal"
    binary = labels is not None and len(x) > 0
    if binary:
        y = np.concatenate([np.asarray(lab, dtype=float) for lab in labels or []])
        w_rows = np.repeat(w, sizes)

    def scores(theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Each row's score and its derivative in beta (rows x attributes)."""
        beta = np.minimum(theta[:n_a], MAX_COEFFICIENT)
        if marginal:
            inner = 1.0 + x * np.expm1(beta)[None, :]
            z = np.log(inner).sum(axis=1) if n_a else np.zeros(len(x))
            d_beta = x * np.exp(beta)[None, :] / inner
        else:
            z, d_beta = x @ beta, x
        return z + theta[n_a:][pos], d_beta

    def objective(theta: np.ndarray) -> tuple[float, np.ndarray]:
        diff = theta - prior_mean
        odiff = theta - old_mean
        value = 0.5 * float(np.sum(precision * diff**2)) + 0.5 * float(odiff @ old_h @ odiff)
        grad = precision * diff + old_h @ odiff
        if not len(x):
            return value, grad
        z, d_beta = scores(theta)
        if binary:
            value += float(np.sum(w_rows * (np.logaddexp(0.0, z) - y * z)))
            resid = w_rows * (_sigmoid(z) - y)
        else:
            zmax = np.maximum.reduceat(z, starts)
            ez = np.exp(z - zmax[seg])
            denom = np.add.reduceat(ez, starts)
            value += float(np.sum(w * (zmax + np.log(denom) - z[chosen])))
            resid = w[seg] * ez / denom[seg]
            resid[chosen] -= w
        grad[:n_a] += d_beta.T @ resid
        grad[n_a:] += np.bincount(pos, weights=resid, minlength=POSITION_BUCKETS)
        return value, grad

    start = np.concatenate([old.beta, old.gamma]) if old is not None else prior_mean
    result = minimize(objective, start, jac=True, method="L-BFGS-B", options={"maxiter": 200})
    theta = result.x
    hessian = old_h.copy()
    n_choices = (old.n_choices * old_decay if old is not None else 0.0) + float(
        weights.sum() if len(x) else 0.0
    )
    if len(x):
        # Fisher information (Gauss-Newton): the score's Jacobian in place of the features.
        z, d_beta = scores(theta)
        jac = np.zeros((len(x), dim))
        jac[:, :n_a] = d_beta
        jac[np.arange(len(pos)), n_a + pos] = 1.0
        if binary:
            p_rows = _sigmoid(z)
            hessian += (jac * (w_rows * p_rows * (1 - p_rows))[:, None]).T @ jac
        else:
            zmax = np.maximum.reduceat(z, starts)
            ez = np.exp(z - zmax[seg])
            p = ez / np.add.reduceat(ez, starts)[seg]
            mean_j = np.add.reduceat(jac * p[:, None], starts)
            hessian += (jac * (w[seg] * p)[:, None]).T @ jac - (mean_j * w[:, None]).T @ mean_j
    try:
        covariance = np.linalg.inv(hessian + np.diag(precision))
        beta_sd = np.sqrt(np.clip(np.diag(covariance)[:n_a], 0.0, None))
    except np.linalg.LinAlgError:
        beta_sd = None
    return NodeFit(
        attributes=[],
        beta=theta[:n_a].copy(),
        gamma=theta[n_a:].copy(),
        hessian=hessian,
        n_choices=n_choices,
        beta_sd=beta_sd,
    )


def _contributions(x: np.ndarray, w: np.ndarray, gain: float) -> np.ndarray:
    """Per candidate and attribute, its share of the certainty-equivalent utility log2 E[2^(g u)] / g.

    u = sum_a w_a [value_a = preferred_a]; with the preferred values independent given the session and
    x_a = P(value_a = preferred_a | session), E[2^(g u)] = prod_a (1 + x_a (2^(g w_a) - 1)), so each attribute
    adds log2(1 + x_a (2^(g w_a) - 1)) / g. Ranking by it ranks by expected gain 2^(g u) - 1, which is what
    NDCG rewards; g -> 0 gives expected utility sum_a w_a x_a (risk-neutral).
    """
    if gain <= 1e-9:
        linear: np.ndarray = x * w[None, :]
        return linear
    out: np.ndarray = np.log2(1.0 + x * np.expm1(gain * math.log(2.0) * w)[None, :]) / gain
    return out


def _sigmoid(z: np.ndarray) -> np.ndarray:
    out: np.ndarray = 0.5 * (1.0 + np.tanh(0.5 * z))
    return out


def ndcg_at_k(ranking: Sequence[str], utility: dict[str, float], k: int = 10) -> float:
    """NDCG@k with gain 2^(5u) - 1 for a utility u in [0, 1] (docs/metrics.md, ranking from behaviour)."""
    gains = [2.0 ** (5.0 * utility.get(pid, 0.0)) - 1.0 for pid in ranking[:k]]
    dcg = sum(g / math.log2(i + 2) for i, g in enumerate(gains))
    ideal = sorted((2.0 ** (5.0 * u) - 1.0 for u in utility.values()), reverse=True)[:k]
    idcg = sum(g / math.log2(i + 2) for i, g in enumerate(ideal))
    return dcg / idcg if idcg > 0 else 0.0
