"""Shared search types, the registries, and the checked model calls."""
from __future__ import annotations

import math

import pytest

from components.search import AGGREGATIONS, STRATEGIES, Candidate, Compute, SearchConfig, get_aggregation, \
    get_strategy, total
from components.search.base import check_budget, sigmoid
from components.search.calls import draw, sample, score, score_steps

from .fakes import FakeChains, Ledger, queries, tools


def test_compute_adds_exactly():
    a, b = Compute(10, 2, 1), Compute(5, 1, 3)
    assert a + b == Compute(15, 3, 4)
    assert total([a, b, Compute()]) == Compute(15, 3, 4) and total([]) == Compute()


def test_registries_resolve_and_name_the_choices():
    for name, fn in STRATEGIES.items():
        assert get_strategy(name) is fn
    with pytest.raises(ValueError, match="beam_search.*best_of_n"):
        get_strategy("nope")
    assert sorted(AGGREGATIONS) == ["last", "min", "prod"]
    scores = [0.9, 0.5, 0.8]
    assert get_aggregation("last")(scores) == 0.8
    assert get_aggregation("min")(scores) == 0.5
    assert get_aggregation("prod")(scores) == pytest.approx(0.36)  # 0.9 * 0.5 * 0.8
    with pytest.raises(ValueError, match="last.*min.*prod"):
        get_aggregation("mean")
    with pytest.raises(ValueError, match="at least one"):
        get_aggregation("min")([])


def test_budget_sigmoid_and_config_bounds():
    assert check_budget("x", 3) == 3
    for bad in (0, -1, 2.0, True):
        with pytest.raises(ValueError, match="x: budget"):
            check_budget("x", bad)
    assert sigmoid(0.0) == 0.5 and sigmoid(-800.0) == 0.0 and sigmoid(800.0) == 1.0
    assert sigmoid(2.0) == pytest.approx(1 / (1 + math.exp(-2.0)))
    with pytest.raises(ValueError):
        SearchConfig(step_sep="")
    with pytest.raises(ValueError):
        SearchConfig(temperature=-1.0)
    with pytest.raises(ValueError):
        SearchConfig(bogus=1)


def test_toolkit_seeds_and_missing_callables():
    t = tools(FakeChains({}), seed=3)
    assert t.seed("a", 1) == t.seed("a", 1) != t.seed("a", 2)
    assert t.seed("a", 1) != tools(FakeChains({}), seed=4).seed("a", 1)
    with pytest.raises(ValueError, match="best_of_n needs a `score`"):
        get_strategy("best_of_n")(queries(1), t, 2)
    with pytest.raises(ValueError, match="beam_search needs a `score_steps`"):
        get_strategy("beam_search")(queries(1), t, 2)


def test_calls_charge_owners_and_reject_malformed_replies():
    ledger = [Compute()] * 2
    gen = FakeChains({"p0": ["abc"], "p1": ["de"]})
    out = sample(tools(gen), ["H[p0]", "H[p1]", "H[p0]"], [0, 1, 0], ledger, 2, max_new_tokens=9, temperature=0.0)
    assert [[c.text for c in g] for g in out] == [["abc"] * 2, ["de"] * 2, ["abc"] * 2]
    assert ledger == [Compute(12, 4, 0), Compute(4, 2, 0)]
    assert sample(tools(gen), [], [], ledger, 2, max_new_tokens=9, temperature=0.0) == []

    short = lambda prefixes, n, **kw: [[Candidate("x", 1, "eos")] * (n - 1) for _ in prefixes]  # noqa: E731
    with pytest.raises(ValueError, match="1 candidates for prefix 0, asked for 2"):
        sample(tools(short), ["H[p0]"], [0], ledger, 2, max_new_tokens=9, temperature=0.0)
    t = tools(gen, score=lambda p, c: [1.0], score_steps=lambda p, s: [[0.5]])
    with pytest.raises(ValueError, match="score: returned 1 results for 2"):
        score(t, "x", ["p0", "p0"], ["a", "b"], [0, 0], ledger)
    with pytest.raises(ValueError, match="partial 0 has 2 steps but got 1 scores"):
        score_steps(t, "x", ["p0"], [["a ", "b"]], [0], ledger)
    nan = tools(gen, score=lambda p, c: [float("nan")] * len(c))
    with pytest.raises(ValueError, match="non-finite"):
        score(nan, "x", ["p0"], ["a"], [0], ledger)


def test_draw_reuses_given_samples_and_charges_only_new_ones():
    from dataclasses import replace

    led = Ledger()
    gen = FakeChains({"p0": ["aa", "bbb"], "p1": ["c"]}, led)
    given = (Candidate("zzzz", 4, "eos"),)
    qs = [replace(queries(2)[0], given=given), queries(2)[1]]
    ledger = [Compute()] * 2
    got = draw(qs, tools(gen), 3, ledger, "t")
    assert got[0][0] == given[0] and len(got[0]) == len(got[1]) == 3
    assert len(led.calls) == 2  # one call per distinct shortfall (2 and 3 samples)
    assert ledger[0] == Compute(sum(c.num_tokens for c in got[0][1:]), 2, 0)
    assert ledger[1] == Compute(3, 3, 0)
