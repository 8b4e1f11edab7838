"""Compute-optimal scaling: predicted difficulty, the per-bin fit on dev, and its use on a disjoint test split."""
from __future__ import annotations

import math

import pytest

from components.search import Arm, Candidate, Compute, Query, fit_compute_optimal, fit_plan, get_strategy
from components.search.compute_optimal import agreement_difficulty, bin_edges, probe, verifier_difficulty

from .fakes import FakeChains, FakeORM, Ledger, answer, tools

C = lambda text: Candidate(text, len(text), "eos")  # noqa: E731
CHEAP, BIG = Arm("self_consistency", 1), Arm("best_of_n", 8)


def test_difficulty_signals_by_hand():
    samples = [C(answer(5)), C(answer(5)), C(answer(7)), C("none")]
    assert agreement_difficulty(samples, None) == 1 - 2 / 4
    assert agreement_difficulty([C("none")] * 2, None) == 1.0
    assert verifier_difficulty(samples[:2], [0.0, 0.0]) == 0.5


def test_bin_edges_by_hand():
    assert bin_edges([0.0, 0.0, 0.5, 0.5, 0.5], 2) == (0.0,)  # few distinct values: one bin each
    assert bin_edges([0.0, 0.5, 0.5, 0.5, 1.0], 3) == (0.0, 0.5)
    # more distinct values than bins: nearest-rank quantiles at 1/3, 2/3 of [0 0 0 .25 .5 .75]
    assert bin_edges([0.5, 0.0, 0.25, 0.0, 0.75, 0.0], 3) == (0.0, 0.25)
    # a quantile at the largest value is dropped: [0 .1 .2 .9 .9 .9] -> q = .1 and .9 (dropped)
    assert bin_edges([0.0, 0.1, 0.2, 0.9, 0.9, 0.9], 3) == (0.1,)
    assert bin_edges([0.3] * 5, 4) == ()
    with pytest.raises(ValueError):
        bin_edges([], 2)


def test_fit_plan_chooses_per_bin_under_each_level_by_hand():
    difficulty = [0.0, 0.0, 0.75, 0.75]                 # bins: easy {0, 1}, hard {2, 3}
    outcomes = {CHEAP: [True, True, False, False], BIG: [True, True, True, True]}
    costs = {CHEAP: [Compute(0, 0, 0)] * 4, BIG: [Compute(40, 4, 8)] * 4}
    plan = fit_plan(difficulty, outcomes, costs, [2, 4, 8], signal="agreement", probes=4, n_bins=2)
    assert plan.edges == (0.0,)
    # level 2 < 4 probes: left out; level 4 affords only the free arm; level 8 buys best-of-8 for the hard bin
    assert plan.choices == {4: (CHEAP, CHEAP), 8: (CHEAP, BIG)}  # easy bin: a tie at 100 %, the cheaper wins
    hard8 = next(r for r in plan.table if r["level"] == 8 and r["bin"] == 1)
    assert hard8 == {"level": 8, "bin": 1, "arm": "best_of_n@8", "dev_problems": 2, "dev_accuracy": 1.0,
                     "dev_tokens": 40.0, "dev_policy_calls": 8.0}
    # slack: an arm within `slack` of the best accuracy and cheaper wins
    outcomes = {CHEAP: [True, False, False, False], BIG: [True, True, True, True]}
    assert fit_plan(difficulty, outcomes, costs, [8], signal="agreement", probes=4, n_bins=2,
                    slack=0.5).choices == {8: (CHEAP, BIG)}
    with pytest.raises(ValueError, match="no level"):
        fit_plan(difficulty, outcomes, costs, [2], signal="agreement", probes=4)
    with pytest.raises(ValueError, match="all 4 dev problems"):
        fit_plan(difficulty, {CHEAP: [True]}, costs, [8], signal="agreement", probes=4)


def world(n: int, start: int = 0):
    """Even problems are easy (every sample right), odd ones hard (1 right answer in 4, which the ORM likes)."""
    script, golds, table = {}, [], {}
    for i in range(start, start + n):
        gold = str(i)
        script[f"p{i}"] = [answer(gold)] if i % 2 == 0 else [answer(i + 100), answer(i + 200), answer(gold),
                                                             answer(i + 300)]
        table[answer(gold)] = 2.0
        golds.append(gold)
    queries = [Query(prompt=f"p{i}", head=f"H[p{i}]") for i in range(start, start + n)]
    return script, golds, table, queries


def test_probes_are_reused_majority_first():
    script, _, _, qs = world(2)
    led = Ledger()
    probed, difficulty = probe(qs, tools(FakeChains(script, led)), "agreement", 4, [Compute()] * 2)
    assert difficulty == [0.0, 0.75] and led.sequences == 8
    assert all(len(q.given) == 4 for q in probed)
    # the verifier's view: p0's chains all score 2.0 (its table), p1's one right chain scores 2.0, three 0.0
    script, _, table, qs = world(2)
    led, ledger = Ledger(), [Compute()] * 2
    t = tools(FakeChains(script, led), score=FakeORM(table, led))
    _, difficulty = probe(qs, t, "verifier", 4, ledger)
    s2 = 1 / (1 + math.exp(-2.0))
    assert difficulty == pytest.approx([1 - s2, 1 - (s2 + 3 * 0.5) / 4])
    assert [c.verifier_calls for c in ledger] == [4, 4] and led.scored == 8
    with pytest.raises(ValueError, match="agreement.*verifier"):
        probe(qs, t, "entropy", 4, ledger)


def test_fit_on_dev_then_evaluate_on_a_disjoint_test_split():
    dev_script, dev_golds, table, dev = world(8)
    test_script, test_golds, test_table, test = world(8, start=8)
    led = Ledger()
    t = tools(FakeChains({**dev_script, **test_script}, led), score=FakeORM({**table, **test_table}, led))
    plan = fit_compute_optimal(dev, dev_golds, t, [CHEAP, BIG], [4, 8], probes=4, n_bins=2)
    assert plan.choices == {4: (CHEAP, CHEAP), 8: (CHEAP, BIG)}
    assert plan.dev_prompts == {q.prompt for q in dev} and not plan.dev_prompts & {q.prompt for q in test}

    led.tokens = led.sequences = led.scored = 0
    res = get_strategy("compute_optimal")(test, t, 8, plan=plan)
    assert [r.answer for r in res] == test_golds  # easy: the probes' majority; hard: best-of-8 with the ORM
    assert [r.extras["arm"] for r in res] == ["self_consistency@1", "best_of_n@8"] * 4
    easy, hard = res[0], res[1]
    assert easy.compute == Compute(4 * len(answer(8)), 4, 0)  # 4 probes, nothing more
    assert hard.compute.forward_passes == 8 and hard.compute.verifier_calls == 8  # 4 probes + 4 new, all 8 scored
    assert sum(r.compute.generated_tokens for r in res) == led.tokens
    assert sum(r.compute.verifier_calls for r in res) == led.scored

    with pytest.raises(ValueError, match="dev split"):
        get_strategy("compute_optimal")(dev[:1], t, 8, plan=plan)
    with pytest.raises(ValueError, match="not a fitted level; choose one of \\[4, 8\\]"):
        get_strategy("compute_optimal")(test, t, 16, plan=plan)
