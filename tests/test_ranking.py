"""Attribute importance from behaviour and session re-ranking (issue 6), on the shipped demo catalog."""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import statistics
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import spearmanr
from typer.testing import CliRunner

from shangpin.cli import app
from shangpin.errors import ConfigError, DataError, NotFittedError
from shangpin.ranking import (
    RankModel,
    RankRequest,
    evaluate_requests,
    load_catalog,
    ndcg_at_k,
    request_from_dict,
)
from shangpin.ranking.catalog import RankCatalog, ancestors, build_catalog
from shangpin.ranking.features import MAX_EXPONENT, PREFERENCE_FLOOR, Evidence, Priors, _norm, _preference
from shangpin.ranking.model import NodeFit, _contributions, _fit_node
from shangpin.ranking.simulate import Simulation, Simulator
from shangpin.records import AttributeValue, CategoryPrediction, Event, Product

ROOT = Path(__file__).resolve().parent.parent
DEMO_CATALOG = ROOT / "demo" / "rank_catalog.jsonl"


@pytest.fixture(scope="module")
def catalog() -> RankCatalog:
    return load_catalog(DEMO_CATALOG)


@pytest.fixture(scope="module")
def simulation(catalog: RankCatalog) -> Simulation:
    return Simulator(sessions=2500, requests=200, seed=3).run(catalog)


@pytest.fixture(scope="module")
def model(catalog: RankCatalog, simulation: Simulation) -> RankModel:
    return RankModel().fit(catalog, simulation.events)


def _product(pid: str, path: str, **attrs: str | None) -> Product:
    return Product(
        product_id=pid,
        title=pid,
        category=CategoryPrediction(path=path),
        attributes={k: (AttributeValue(k, v) if v is not None else None) for k, v in attrs.items()},
    )


def test_catalog_has_every_level_and_bins_numbers() -> None:
    products = [
        _product(f"p{i}", "Shoes > Running" if i % 2 else "Shoes > Boots", colour=c, price=str(10 + i * 3))
        for i, c in enumerate(["Red", "red", "Blue", None] * 5)
    ]
    cat = build_catalog(products)
    assert cat.nodes == ["Shoes", "Shoes > Boots", "Shoes > Running"]
    assert cat.parent == [-1, 0, 0]
    assert ancestors("A > B > C") == ["A", "A > B", "A > B > C"]
    colour = cat.attributes.index("colour")
    assert cat.vocab[colour] == ["Red", "Blue"]  # "red" is the same value
    assert cat.codes[3, colour] == -1  # known absent counts as missing
    price = cat.attributes.index("price")
    assert price in cat.bins and len(cat.vocab[price]) <= 5  # 20 prices -> quantile bins
    assert cat.resolve("Shoes > Running > Trail") == cat.node("Shoes > Running")


def test_catalog_errors_name_the_problem() -> None:
    with pytest.raises(DataError, match='has no "category"'):
        build_catalog([Product(product_id="x", title="x")])
    with pytest.raises(DataError, match='none of the 1 products has "attributes"'):
        build_catalog([_product("x", "A")])


def test_importance_every_level_sums_to_one(model: RankModel, catalog: RankCatalog) -> None:
    importance = model.importance()
    assert set(importance) == set(catalog.nodes)
    assert "Apparel & Accessories" in importance and "Apparel & Accessories > Clothing" in importance
    for weights in importance.values():
        assert math.isclose(sum(weights.values()), 1.0, abs_tol=1e-4)
        assert all(w >= 0 for w in weights.values())
    facets = model.facets("Apparel & Accessories > Shoes")
    assert [w for _, w in facets] == sorted((w for _, w in facets), reverse=True)


def test_learned_weights_follow_hidden_weights(model: RankModel, simulation: Simulation) -> None:
    learned = model.importance()
    stats = model.node_stats()
    rhos = []
    for path, hidden in simulation.weights.items():
        if stats[path]["sessions"] < 200:
            continue
        names = list(hidden)
        rhos.append(spearmanr([hidden[n] for n in names], [learned[path][n] for n in names]).statistic)
    assert len(rhos) >= 3
    assert statistics.fmean(rhos) > 0.5, rhos


def test_evidence_strength_has_a_floor(
    model: RankModel, catalog: RankCatalog, simulation: Simulation
) -> None:
    leaf = int(catalog.leaf[0])
    fitted = [a for node in catalog.lineage(leaf) for a in model.nodes_[node].attributes]
    assert model.min_strength == 2.5
    assert (model._strength(leaf)[fitted] >= 2.5).all()
    # Without the floor a weak attribute's evidence is as weak as its coefficient.
    unfloored = RankModel(min_strength=0.0).fit(catalog, simulation.events)
    assert (unfloored._strength(leaf)[fitted] < 2.5).any()


def test_ranking_beats_random_and_equal_weights_are_worse(model: RankModel, simulation: Simulation) -> None:
    pairs = list(zip(simulation.requests, simulation.utilities, strict=True))
    learned = statistics.fmean(ndcg_at_k(model.rank(r).ranking, u) for r, u in pairs)
    rng = np.random.default_rng(0)
    random_ = statistics.fmean(ndcg_at_k(list(rng.permutation(r.candidates)), u) for r, u in pairs)
    assert learned > random_ + 0.1, (learned, random_)
    metrics = evaluate_requests(model, simulation.requests, {r.request_id: u for r, u in pairs})
    assert metrics["ndcg_at_10"] == pytest.approx(100 * learned, abs=0.01)
    assert metrics["requests"] == len(pairs)


def test_ranking_starts_from_the_shops_taste(model: RankModel, simulation: Simulation) -> None:
    """A session that has said little about an attribute is assumed to want what the category's shoppers mostly
    want: on simulated shoppers whose tastes follow their category's, that ranks better than a uniform prior."""
    assert model.rank_prior == "learned"
    uniform = copy.copy(model)
    uniform.rank_prior = "uniform"
    pairs = list(zip(simulation.requests, simulation.utilities, strict=True))
    learned = statistics.fmean(ndcg_at_k(model.rank(r).ranking, u) for r, u in pairs)
    flat = statistics.fmean(ndcg_at_k(uniform.rank(r).ranking, u) for r, u in pairs)
    assert learned > flat + 0.01, (learned, flat)


def test_rank_explains_and_uses_session(model: RankModel, catalog: RankCatalog) -> None:
    shoes = [
        pid
        for pid, leaf in zip(catalog.ids, catalog.leaf, strict=True)
        if catalog.nodes[leaf].endswith("Shoes")
    ]
    liked = shoes[0]
    events = [Event("s", "click", 1.0, liked), Event("s", "purchase", 2.0, liked)]
    request = RankRequest("q", candidates=[*shoes[1:40], "unknown-product"], events=events)
    result = model.rank(request)
    assert result.category == "Apparel & Accessories > Shoes"  # inferred from the candidates
    assert sorted(result.ranking) == sorted(request.candidates)
    assert result.ranking[-1] == "unknown-product" and result.explanations["unknown-product"] == {}
    top = result.ranking[0]
    assert math.isclose(sum(result.explanations[top].values()), result.scores[top], abs_tol=1e-3)
    # The best candidate shares more attribute values with the purchased product than the worst known one.
    row = catalog.row
    shared = [
        int((catalog.codes[row(p)] == catalog.codes[row(liked)]).sum()) for p in (top, result.ranking[-2])
    ]
    assert shared[0] > shared[1]


def test_base_relevance_orders_a_session_without_events(model: RankModel, catalog: RankCatalog) -> None:
    ids = catalog.ids[:5]
    request = RankRequest("q", candidates=ids, base={pid: float(i) for i, pid in enumerate(ids)})
    assert model.rank(request).ranking == list(reversed(ids))


def test_update_matches_full_fit_and_decays(catalog: RankCatalog, simulation: Simulation) -> None:
    events = simulation.events
    sessions = sorted({e.session_id for e in events})
    first = {s for s in sessions[: len(sessions) // 2]}
    full = RankModel(half_life_days=0).fit(catalog, events).importance()
    part = RankModel(half_life_days=0).fit(catalog, [e for e in events if e.session_id in first])
    part.update([e for e in events if e.session_id not in first])
    top = "Apparel & Accessories"
    diffs = [abs(full[top][a] - w) for a, w in part.importance()[top].items()]
    assert max(diffs) < 0.1, (full[top], part.importance()[top])
    assert part.train_info_["updates"] == 1 and part.train_info_["n_sessions"] == len(sessions)


def test_importance_reads_conditioned_evidence_and_ranking_does_not(
    model: RankModel, catalog: RankCatalog, simulation: Simulation
) -> None:
    assert model.condition and set(model.attribution_) == set(model.nodes_)
    plain = RankModel(condition=False).fit(catalog, simulation.events)
    assert plain.attribution_ == {}
    # The ranking fit and the rankings are the same with or without the conditioned pass ...
    for node, fit in model.nodes_.items():
        np.testing.assert_allclose(fit.beta, plain.nodes_[node].beta)
    for request in simulation.requests[:20]:
        assert model.rank(request).ranking == plain.rank(request).ranking
    # ... while importance and facet order come from the conditioned fit.
    assert model.importance() != plain.importance()
    node = catalog.node("Apparel & Accessories > Shoes")
    assert node is not None
    conditioned = dict(
        zip(model.attribution_[node].attributes, model.attribution_[node].point_weights(), strict=True)
    )
    assert [name for name, _ in model.facets("Apparel & Accessories > Shoes")] == [
        catalog.attributes[a] for a in sorted(conditioned, key=lambda a: -conditioned[a])
    ]


def test_parent_importance_is_its_subcategories_weighted_by_choices(
    model: RankModel, catalog: RankCatalog
) -> None:
    assert model.parent_importance == "children"
    importance = model.importance()
    names = catalog.attributes

    def own(node: int) -> dict[str, float]:
        fit = model.attribution_[node]
        return {names[a]: w for a, w in zip(fit.attributes, fit.point_weights().tolist(), strict=True)}

    kids = {p: [n for n, q in enumerate(catalog.parent) if q == p] for p in range(len(catalog.nodes))}
    parents = [p for p, ks in kids.items() if ks]
    assert parents
    for node, path in enumerate(catalog.nodes):
        if not kids[node]:  # a leaf reports its own conditioned fit
            assert importance[path] == pytest.approx(own(node), abs=1e-6)
    for parent in parents:
        expected = dict.fromkeys(importance[catalog.nodes[parent]], 0.0)
        mass = 0.0
        for child in kids[parent]:
            n = model.nodes_[child].n_choices
            for name, w in importance[catalog.nodes[child]].items():
                if name in expected:
                    expected[name] += n * w
            mass += n
        rest = model.nodes_[parent].n_choices - mass
        for name, w in own(parent).items():
            expected[name] += max(rest, 0.0) * w
        z = sum(expected.values())
        assert importance[catalog.nodes[parent]] == pytest.approx(
            {k: v / z for k, v in expected.items()}, abs=1e-5
        )
    # "own" reads every node, parents too, from its own pooled fit; rankings do not depend on the read-out.
    pooled = copy.copy(model)
    pooled.parent_importance = "own"
    for parent in parents:
        assert pooled.importance()[catalog.nodes[parent]] == pytest.approx(own(parent), abs=1e-6)
    assert pooled.importance() != importance


def test_save_load_roundtrip(model: RankModel, simulation: Simulation, tmp_path: Path) -> None:
    model.save(tmp_path / "rank")
    loaded = RankModel.load(tmp_path / "rank")
    assert loaded.get_params() == model.get_params()
    assert loaded.importance() == model.importance()
    for request in simulation.requests[:20]:
        assert loaded.rank(request).ranking == model.rank(request).ranking


def test_model_saved_before_the_new_options_ranks_as_before(
    catalog: RankCatalog, simulation: Simulation, tmp_path: Path
) -> None:
    old = RankModel(gain=0.0, link="linear", taste_prior="share", rank_prior="uniform").fit(
        catalog, simulation.events
    )
    old.save(tmp_path / "rank")
    meta_path = tmp_path / "rank" / "meta.json"
    meta = json.loads(meta_path.read_text())
    for name in ("gain", "link", "taste_prior", "parent_importance", "rank_prior"):
        del meta["params"][name]  # as written before these options existed
    meta_path.write_text(json.dumps(meta))
    loaded = RankModel.load(tmp_path / "rank")
    assert (loaded.gain, loaded.link, loaded.taste_prior) == (0.0, "linear", "share")
    assert (loaded.parent_importance, loaded.rank_prior) == ("own", "uniform")  # read and ranked as they were
    assert loaded.priors_.mode == "share"
    for request in simulation.requests[:20]:
        assert loaded.rank(request).ranking == old.rank(request).ranking


def test_not_fitted_and_missing_model(tmp_path: Path) -> None:
    with pytest.raises(NotFittedError, match="shangpin rank train"):
        RankModel().importance()
    with pytest.raises(NotFittedError, match="no such folder"):
        RankModel.load(tmp_path / "nothing")


def test_weights_are_expected_positive_coefficients() -> None:
    fit = NodeFit([0, 1], np.array([2.0, -1.0]), np.zeros(13), np.zeros((15, 15)))
    assert fit.weights().tolist() == [1.0, 0.0]  # no uncertainty known: the positive part
    fit.beta_sd = np.array([0.01, 2.0])
    weights = fit.weights()
    assert 0.0 < weights[1] < weights[0]  # an uncertain negative estimate keeps a little weight
    assert math.isclose(weights.sum(), 1.0)
    # Reported importance (from the conditioned fit) is the estimate's positive part: uncertainty earns nothing.
    assert fit.point_weights().tolist() == [1.0, 0.0]
    fit.beta = np.array([0.3, 0.1])
    fit.beta_sd = np.array([0.05, 3.0])  # a nearly constant attribute: wide posterior
    assert fit.weights()[1] > fit.weights()[0]
    assert fit.point_weights() == pytest.approx([0.75, 0.25])
    assert NodeFit(
        [0, 1], np.array([-1.0, -2.0]), np.zeros(13), np.zeros((15, 15))
    ).point_weights().tolist() == [
        0.5,
        0.5,
    ]
    fit.fixed_weights = np.array([0.5, 0.5])
    assert np.allclose(fit.strengths(), 0.5 * fit.positive().sum())


def test_contributions_rank_by_expected_gain() -> None:
    w = np.array([0.5, 0.5])
    sure_half = np.array([[1.0, 0.0]])  # surely matches one attribute, surely not the other
    maybe_both = np.array([[0.5, 0.5]])  # the same expected utility, a quarter chance of a full match
    # Risk-neutral (gain 0): expected utility, a tie.
    assert _contributions(sure_half, w, 0.0).sum() == pytest.approx(_contributions(maybe_both, w, 0.0).sum())
    # NDCG's gain 2^(5u) - 1 rewards the full match: log2 E[2^(5u)] / 5 = log2(1 + 0.5 (2^2.5 - 1)) * 2 / 5.
    assert _contributions(sure_half, w, 5.0).sum() == pytest.approx(0.5)
    assert _contributions(maybe_both, w, 5.0).sum() == pytest.approx(
        2 * math.log2(1 + 0.5 * (2**2.5 - 1)) / 5
    )
    assert _contributions(maybe_both, w, 5.0).sum() > 0.5
    # A small gain tends to expected utility; contributions stay in [0, w_a].
    x = np.array([[0.2, 0.9], [0.0, 1.0]])
    assert np.allclose(_contributions(x, w, 1e-6), x * w, atol=1e-6)
    assert (_contributions(x, w, 5.0) <= w + 1e-12).all() and (_contributions(x, w, 5.0) >= 0).all()


def test_marginal_link_recovers_coefficients_of_uncertain_matches() -> None:
    # Choices made on true matches m ~ Bernoulli(x), odds e^(beta m); the model sees only x.
    rng = np.random.default_rng(0)
    beta = np.array([2.0, 0.5])
    xs, positions = [], []
    for _ in range(3000):
        x = rng.uniform(size=(8, 2))
        m = rng.uniform(size=x.shape) < x
        p = np.exp(m @ beta)
        chosen = int(rng.choice(8, p=p / p.sum()))
        order = [chosen, *[i for i in range(8) if i != chosen]]
        xs.append(x[order])
        positions.append([12] * 8)
    fits = {
        link: _fit_node(
            xs,
            positions,
            np.ones(len(xs)),
            prior_beta=np.zeros(2),
            prior_gamma=np.zeros(13),
            prior_strength=1e-3,
            old=None,
            old_decay=1.0,
            link=link,
        )
        for link in ("marginal", "linear")
    }
    assert np.allclose(fits["marginal"].beta, beta, atol=0.3), fits["marginal"].beta
    assert fits["marginal"].beta_sd is not None and (fits["marginal"].beta_sd < 0.15).all()
    # The first-order link reads the strong coefficient off a secant of the log curve: too low here.
    assert fits["linear"].beta[0] < beta[0] - 0.2, fits["linear"].beta


def test_taste_prior_divides_out_how_common_a_value_is(catalog: RankCatalog) -> None:
    priors = Priors(catalog)
    leaf = int(catalog.leaf[0])
    a = next(a for a in catalog.node_attributes[leaf] if len(priors.catalog_counts[(leaf, a)]) > 2)
    counts = priors.catalog_counts[(leaf, a)]
    assert priors.table(leaf, a) == pytest.approx({c: 1 / len(counts) for c in counts})  # a new shop
    # Engagement in proportion to the catalog says nothing about taste: the prior stays uniform.
    rows = catalog.rows_in_leaf(leaf)
    priors.add_engagement(catalog, Evidence(product_weight={int(r): 1.0 for r in rows}))
    assert priors.table(leaf, a) == pytest.approx({c: 1 / len(counts) for c in counts})
    # The rarest value engaged with three times over its share comes out on top.
    rare = min(counts, key=lambda c: counts[c])
    picked = [int(r) for r in rows if catalog.codes[r, a] == rare]
    priors.add_engagement(catalog, Evidence(product_weight={r: 1.0 for r in picked}), decay=2.0)
    table = priors.table(leaf, a)
    assert max(table, key=lambda c: table[c]) == rare
    assert math.isclose(sum(table.values()), 1.0)


@pytest.mark.parametrize("mode", ["preference", "relative"])
def test_own_engagement_can_be_left_out_of_a_products_prior(
    catalog: RankCatalog, simulation: Simulation, mode: str
) -> None:
    priors = Priors(catalog, mode=mode)
    leaf = int(catalog.leaf[0])
    a = next(a for a in catalog.node_attributes[leaf] if len(priors.catalog_counts[(leaf, a)]) > 2)
    rows = [int(r) for r in catalog.rows_in_leaf(leaf)]
    priors.add_engagement(catalog, Evidence(product_weight={r: 1.0 for r in rows}))
    star = rows[0]  # one product clicked far more than the rest lifts its value's prior
    priors.add_engagement(catalog, Evidence(product_weight={star: 2.0}), decay=10.0)
    code = int(catalog.codes[star, a])
    full = priors.table(leaf, a, strength=2.0)[code]
    assert priors.product_engaged[star] == pytest.approx(21.0)
    assert priors.own_out(leaf, a, code, 0.0, 2.0, full) == full
    alone = priors.own_out(leaf, a, code, priors.product_engaged[star], 2.0, full)
    assert alone < full
    if mode == "relative":  # its own clicks out, the value is back at lift 1 among values at lift 1
        assert alone == pytest.approx(1 / len(priors.catalog_counts[(leaf, a)]), rel=0.05)
    if mode == "preference":
        fitted = RankModel(prior_own_out=True).fit(catalog, simulation.events)
        assert all(math.isclose(sum(w.values()), 1.0, abs_tol=1e-4) for w in fitted.importance().values())


def test_conditioned_evidence_discounts_what_other_attributes_and_position_explain() -> None:
    # Men's watches are all black; women's are half gold. A shopper who wants women's watches clicks a gold one.
    specs = [("Men", "Black")] * 4 + [("Women", "Gold"), ("Women", "Black")] * 2
    cat = build_catalog(
        [_product(f"w{i}", "Watches", gender=g, colour=c) for i, (g, c) in enumerate(specs)], min_coverage=0.0
    )
    priors = Priors(cat, mode="uniform")
    gender, colour = cat.attributes.index("gender"), cat.attributes.index("colour")
    gold, women = cat.value_code(colour, "Gold"), cat.value_code(gender, "Women")
    shown = list(range(len(specs)))
    first_gold = next(r for r in shown if cat.codes[r, colour] == gold)
    other_women = [r for r in shown if cat.codes[r, gender] == women and r != first_gold]

    def session(clicked: list[int]) -> Evidence:
        ev = Evidence()
        for r in clicked:
            ev.product_weight[r], ev.shown[r] = 1.0, shown
            ev.order.append((r, 0.0))
        ev.lists.append((shown, 0.0))
        return ev

    strength = np.full(len(cat.attributes), 2.0)
    beta = np.zeros(len(cat.attributes))
    beta[gender] = 3.0
    flat = np.zeros(13)
    ev = session([first_gold, other_women[0]])
    plain = ev.logits(colour, 2.0, cat, priors)[0][gold]
    # Gold is 2 of 8 shown, but 2 of the 4 women's watches the shopper was choosing among: weaker evidence.
    ev.condition(cat, priors, lambda leaf: strength, lambda leaf: beta, lambda leaf: flat)
    conditioned = ev.logits(colour, 2.0, cat, priors)[0][gold]
    assert conditioned < plain
    # Gender itself carries no weight in its own exposure: its evidence is only discounted by position here.
    assert ev.logits(gender, 2.0, cat, priors)[0][women] == pytest.approx(
        session([first_gold, other_women[0]]).logits(gender, 2.0, cat, priors)[0][women]
    )
    # Position: a click on the top slot, where every shopper looks, proves less than the same click lower down.
    top_heavy = np.zeros(13)
    top_heavy[shown.index(first_gold)] = 3.0
    ev_top = session([first_gold])
    ev_top.condition(
        cat, priors, lambda leaf: strength, lambda leaf: np.zeros(len(cat.attributes)), lambda leaf: top_heavy
    )
    assert (
        ev_top.logits(colour, 2.0, cat, priors)[0][gold]
        < session([first_gold]).logits(colour, 2.0, cat, priors)[0][gold]
    )


def test_posterior_normaliser_survives_strong_evidence_against_every_value() -> None:
    table = {0: 0.25, 1: 0.25, 2: 0.5}
    # Strong evidence against the two values with evidence; value 2 has none (logit 0).
    assert _norm(table, {0: -900.0, 1: -800.0}) == pytest.approx(math.log(0.5))
    # Against every value: the log-normaliser follows the least unlikely one instead of cancelling to 0.
    assert _norm(table, {0: -900.0, 1: -800.0, 2: -850.0}) == pytest.approx(math.log(0.25) - 800.0)
    # Ordinary evidence: log of sum_v prior(v) e^logit(v).
    expected = math.log(0.25 * math.e**2 + 0.25 + 0.5 * math.exp(-1.0))
    assert _norm(table, {0: 2.0, 2: -1.0}) == pytest.approx(expected)
    assert _norm(table, {0: 1e6}) == pytest.approx(math.log(0.25) + MAX_EXPONENT)


def test_preference_prior_inverts_the_lift_of_wanted_values() -> None:
    # Shoppers want value 0, 1, 2 with shares q; wanting v multiplies v's engagement odds by e^s.
    q = {0: 0.6, 1: 0.3, 2: 0.1}
    offered = {0: 0.5, 1: 0.3, 2: 0.2}
    s = 1.5
    k = math.expm1(s)
    z = 1 + k * sum(offered[v] * q[v] for v in q)
    lift = {v: (1 + q[v] * k) / z for v in q}
    expected = {v: (1 - PREFERENCE_FLOOR) * q[v] + PREFERENCE_FLOOR / 3 for v in q}
    assert _preference(lift, s) == pytest.approx(expected)
    # The lift is scale-free: a constant factor (normalisation) does not change the answer.
    assert _preference({v: 3 * x for v, x in lift.items()}, s) == pytest.approx(expected)


def test_misspelt_choice_is_refused(catalog: RankCatalog, simulation: Simulation) -> None:
    with pytest.raises(ConfigError, match=r"choice_model = 'binray'; expected one of 'multinomial'"):
        RankModel(choice_model="binray").fit(catalog, simulation.events)
    with pytest.raises(ConfigError, match=r"min_strength = 'abc'; expected a number \(default 2.5\)"):
        RankModel(min_strength="abc").fit(catalog, simulation.events)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"prior_own_out = 'yes'; expected true or false"):
        RankModel(prior_own_out="yes").fit(catalog, simulation.events)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"min_strength = -1; expected a number >= 0"):
        RankModel(min_strength=-1).fit(catalog, simulation.events)


def test_request_parsing_errors() -> None:
    ok = request_from_dict(
        {
            "id": 7,
            "candidates": ["a", {"id": "b", "score": 0.5}],
            "session_events": [{"action": "click", "product_id": "a", "timestamp": 3}],
        },
        "req.jsonl:1",
    )
    assert ok.request_id == "7" and ok.base == {"b": 0.5} and ok.events[0].session_id == "7"
    untimed = request_from_dict(
        {
            "id": "u",
            "candidates": ["a"],
            "session_events": [
                {"action": "click", "product_id": "b"},
                {"action": "click", "product_id": "a"},
            ],
        },
        "req.jsonl:5",
    )
    assert [e.product_id for e in untimed.events] == ["b", "a"]  # no timestamps: the listed order
    with pytest.raises(DataError, match=r"req.jsonl:2: \"candidates\" must be a list"):
        request_from_dict({"id": "x", "candidates": "a,b"}, "req.jsonl:2")
    with pytest.raises(DataError, match='needs an "id"'):
        request_from_dict({"candidates": []}, "req.jsonl:3")
    with pytest.raises(DataError, match=r"candidates\[0\].score must be a number"):
        request_from_dict({"id": "x", "candidates": [{"id": "a", "score": "high"}]}, "req.jsonl:4")


def test_cli_rank_end_to_end(tmp_path: Path) -> None:
    runner = CliRunner()
    events, requests, model_dir = tmp_path / "events.jsonl", tmp_path / "req.jsonl", tmp_path / "model"
    result = runner.invoke(
        app,
        [
            "simulate",
            "--catalog",
            str(DEMO_CATALOG),
            "--out",
            str(events),
            "--requests",
            str(requests),
            "--set",
            "sessions=800",
            "--set",
            "requests=30",
        ],
    )
    assert result.exit_code == 0, result.output
    hidden = json.loads((tmp_path / "events.weights.json").read_text())
    assert "Apparel & Accessories > Shoes" in hidden
    result = runner.invoke(
        app,
        ["rank", "train", "--catalog", str(DEMO_CATALOG), "--events", str(events), "--model", str(model_dir)],
    )
    assert result.exit_code == 0, result.output
    out = tmp_path / "importance.json"
    result = runner.invoke(app, ["rank", "importance", "--model", str(model_dir), "--out", str(out)])
    assert result.exit_code == 0, result.output
    importance = json.loads(out.read_text())
    assert set(hidden) == set(importance)
    assert all(math.isclose(sum(w.values()), 1.0, abs_tol=1e-4) for w in importance.values())
    answers = tmp_path / "answers.jsonl"
    result = runner.invoke(
        app,
        ["rank", "predict", "--model", str(model_dir), "--requests", str(requests), "--out", str(answers)],
    )
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in answers.read_text().splitlines()]
    sent = [json.loads(line) for line in requests.read_text().splitlines()]
    assert [a["id"] for a in lines] == [r["id"] for r in sent]
    for answer, request in zip(lines, sent, strict=True):
        assert sorted(answer["ranking"]) == sorted(request["candidates"])
        assert set(answer["explanations"]) == set(request["candidates"])
    result = runner.invoke(
        app,
        [
            "rank",
            "evaluate",
            "--model",
            str(model_dir),
            "--requests",
            str(requests),
            "--answers",
            str(tmp_path / "req.answers.jsonl"),
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    assert 0 < json.loads(result.stdout.strip().splitlines()[-1])["ndcg_at_10"] <= 100


def test_cli_rank_bad_request_line(tmp_path: Path, model: RankModel) -> None:
    model.save(tmp_path / "model" / "rank_attributes")
    requests = tmp_path / "req.jsonl"
    requests.write_text('{"id": "a", "candidates": []}\n{"id": "b", "candidates": 5}\n', encoding="utf-8")
    result = CliRunner().invoke(
        app,
        [
            "rank",
            "predict",
            "--model",
            str(tmp_path / "model"),
            "--requests",
            str(requests),
            "--out",
            str(tmp_path / "o.jsonl"),
        ],
    )
    assert result.exit_code != 0
    assert isinstance(result.exception, DataError)
    assert "req.jsonl:2" in str(result.exception)


def test_train_and_update_from_the_event_database(tmp_path: Path, simulation: Simulation) -> None:
    from shangpin.storage.events import EventStore

    url = f"sqlite:///{tmp_path / 'events.db'}"
    sessions = sorted({e.session_id for e in simulation.events})
    first = set(sessions[:1000])
    later = [
        dataclasses.replace(e, timestamp=e.timestamp + 90 * 86400)
        for e in simulation.events
        if e.session_id not in first
    ]
    with EventStore(url, salt=b"s" * 32) as store:
        store.add(e for e in simulation.events if e.session_id in first)
    model_dir = tmp_path / "model"
    runner = CliRunner()
    result = runner.invoke(
        app, ["rank", "train", "--catalog", str(DEMO_CATALOG), "--db", url, "--model", str(model_dir)]
    )
    assert result.exit_code == 0, result.output
    assert "on 1000 sessions" in result.output
    with EventStore(url, salt=b"s" * 32) as store:
        store.add(later)
    result = runner.invoke(app, ["rank", "update", "--db", url, "--model", str(model_dir)])
    assert result.exit_code == 0, result.output
    assert f"{len(sessions)} sessions so far, update 1" in result.output  # only the new events were read
    result = runner.invoke(app, ["rank", "train", "--catalog", str(DEMO_CATALOG), "--model", str(model_dir)])
    assert result.exit_code != 0 and "found neither" in str(result.exception)


def test_parent_tie_is_estimated_from_sibling_spread() -> None:
    from shangpin.ranking.model import _between_child_precision

    products = [_product(f"p{i}", f"Top > C{i % 40}", colour="Red" if i % 3 else "Blue") for i in range(200)]
    cat = build_catalog(products)
    rng = np.random.default_rng(0)
    top = cat.node("Top")
    assert top is not None
    fits = {
        top: NodeFit(
            [0], np.array([1.0]), np.zeros(13), np.zeros((14, 14)), n_choices=100.0, beta_sd=np.array([0.01])
        )
    }
    for node in range(len(cat.nodes)):
        if node != top:  # children: the parent's coefficient plus a spread of 0.5, measured with noise 0.05
            beta = 1.0 + rng.normal(0, 0.5) + rng.normal(0, 0.05)
            fits[node] = NodeFit(
                [0],
                np.array([beta]),
                np.zeros(13),
                np.zeros((14, 14)),
                n_choices=10.0,
                beta_sd=np.array([0.05]),
            )
    ties = _between_child_precision(fits, cat, lambda depth: 0.0)
    assert set(ties) == {1}
    assert 2.0 < ties[1] < 8.0  # 1 / 0.5^2 = 4


def test_log_without_engagement_gives_uniform_weights(catalog: RankCatalog) -> None:
    searches = [
        Event(f"s{i}", "search", float(i), query="shoes", results=tuple(catalog.ids[:10])) for i in range(5)
    ]
    model = RankModel().fit(catalog, searches)
    for weights in model.importance().values():
        if weights:
            assert max(weights.values()) - min(weights.values()) < 1e-6
    result = model.rank(RankRequest("q", candidates=["nope", "nada"]))
    assert result.ranking == ["nope", "nada"] and result.category is None
    with pytest.raises(DataError, match="no behaviour events"):
        RankModel().fit(catalog, [])


def test_choice_model_follows_the_log(catalog: RankCatalog, simulation: Simulation, model: RankModel) -> None:
    assert model.choice_model_ == "multinomial"  # the default
    auto = RankModel(choice_model="auto").fit(catalog, simulation.events)
    assert auto.choice_model_ == "binary"  # simulated sessions pick products from logged result lists
    explicit = RankModel(choice_model="binary").fit(catalog, simulation.events)
    assert explicit.importance() == auto.importance() != model.importance()
    browse = [e for e in simulation.events if e.action != "search"][:3000]  # no lists: compare with samples
    browsing = RankModel(choice_model="auto").fit(catalog, browse)
    assert browsing.choice_model_ == "multinomial" and browsing.train_info_["n_choices"] > 0
