"""Greedy / CoT, self-consistency, best-of-N and weighted best-of-N against scripted fakes."""
from __future__ import annotations

from dataclasses import replace

import pytest

from components.search import Candidate, Compute, get_strategy

from .fakes import FakeChains, FakeORM, Ledger, answer, queries, tools

A5, A5b, A5c, A7, NONE = answer(5), answer(5) + " ", answer(5) + "  ", answer(7), "no answer here"


def run(name, script, budget, table=None, n=1, **kw):
    led = Ledger()
    t = tools(FakeChains(script, led), score=FakeORM(table or {}, led), **kw)
    return get_strategy(name)(queries(n), t, budget), led


def test_greedy_and_cot():
    led = Ledger()
    t = tools(FakeChains({"p0": [A5, A7], "p1": [A7]}, led), max_new_tokens=40)
    res = get_strategy("greedy")(queries(2), t, 1)
    assert [r.answer for r in res] == ["5", "7"] and res[0].compute == Compute(len(A5), 1, 0)
    assert led.calls[0]["temperature"] == 0.0 and led.calls[0]["prefixes"] == ["H[p0]", "H[p1]"]
    res = get_strategy("cot")(queries(1), t, 1, prefix="<think>")
    assert led.calls[-1]["prefixes"] == ["H[p0]<think>"]
    assert res[0].completion == "<think>" + A5 and res[0].compute.generated_tokens == len(A5)  # prefill not counted
    with pytest.raises(ValueError, match="budget must be 1"):
        get_strategy("greedy")(queries(1), t, 4)


def test_self_consistency_votes_and_breaks_ties_by_first_sample():
    # the fake samples at a seeded offset into the script; budget = script length sees each once
    res, led = run("self_consistency", {"p0": [A7, A5, NONE, A5b]}, 4)
    assert res[0].answer == "5" and res[0].extras["votes"] == {"7": 1, "5": 2}
    assert res[0].compute == Compute(sum(map(len, [A7, A5, NONE, A5b])), 4, 0) == Compute(led.tokens, 4, 0)
    # a 1-1 tie: the answer of the first sample in sampling order wins, every time
    res, led = run("self_consistency", {"p0": [A7, A5]}, 2)
    first = FakeChains({"p0": [A7, A5]})(["H[p0]"], 2, max_new_tokens=99, temperature=0.8,
                                         seed=led.calls[0]["seed"])[0][0]
    assert res[0].answer == ("5" if first.text == A5 else "7") and res[0].completion == first.text
    assert run("self_consistency", {"p0": [A7, A5]}, 2)[0][0].answer == res[0].answer
    res, _ = run("self_consistency", {"p0": [NONE]}, 3)
    assert res[0].answer is None and res[0].completion == NONE


def test_best_of_n_picks_the_top_score():
    script = {"p0": [A7, A5, A5b, NONE], "p1": [A5, A7]}
    table = {A7: 0.2, A5: 1.5, A5b: -1.0, NONE: 3.0}
    res, led = run("best_of_n", script, 4, table, n=2)
    assert res[0].completion == NONE and res[0].answer is None  # the verifier, not the answer, decides
    assert res[1].answer == "5" and res[1].extras["score"] == 1.5
    assert res[0].compute == Compute(sum(map(len, script["p0"])), 4, 4)
    assert sum(r.compute.verifier_calls for r in res) == led.scored == 8
    assert sum(r.compute.generated_tokens for r in res) == led.tokens


def test_best_of_n_ties_go_to_the_earliest_sample():
    res, led = run("best_of_n", {"p0": [A5, A7, A5b]}, 3, {A5: 1.0, A7: 1.0, A5b: 1.0})
    first = FakeChains({"p0": [A5, A7, A5b]})(["H[p0]"], 3, max_new_tokens=99, temperature=0.8,
                                              seed=led.calls[0]["seed"])[0]
    assert res[0].extras["index"] == 0 and res[0].completion == first[0].text
    again, _ = run("best_of_n", {"p0": [A5, A7, A5b]}, 3, {A5: 1.0, A7: 1.0, A5b: 1.0})
    assert again[0].completion == res[0].completion


def test_weighted_best_of_n_sums_sigmoid_weights_per_answer():
    # three 5s at logit 1 (3 x 0.731 = 2.19) beat one 7 at logit 3 (0.953): weighted says 5, best-of-N says 7
    script = {"p0": [A5, A5b, A5c, A7]}
    table = {A5: 1.0, A5b: 1.0, A5c: 1.0, A7: 3.0}
    wres, _ = run("weighted_best_of_n", script, 4, table)
    bres, _ = run("best_of_n", script, 4, table)
    assert wres[0].answer == "5" and bres[0].answer == "7"
    assert wres[0].extras["votes"]["5"] == pytest.approx(3 / (1 + 2.718281828459045 ** -1.0))
    # three 5s at logit -2 (3 x 0.119 = 0.358) lose to one 7 at logit 2 (0.881): the verifier outweighs the count
    table = {A5: -2.0, A5b: -2.0, A5c: -2.0, A7: 2.0}
    wres, _ = run("weighted_best_of_n", script, 4, table)
    sres, _ = run("self_consistency", script, 4)
    assert wres[0].answer == "7" and sres[0].answer == "5"
    res, _ = run("weighted_best_of_n", {"p0": [NONE]}, 2, {})
    assert res[0].answer is None and res[0].extras["votes"] == {}


def test_given_samples_are_reused_and_not_charged_again():
    given = (Candidate(A7, 5, "eos"), Candidate(A7, 5, "eos"))
    led = Ledger()
    t = tools(FakeChains({"p0": [A5]}, led), score=FakeORM({}, led))
    q = [replace(queries(1)[0], given=given)]
    res = get_strategy("self_consistency")(q, t, 3)
    assert res[0].answer == "7" and res[0].compute == Compute(len(A5), 1, 0) and led.sequences == 1
    res = get_strategy("best_of_n")(q, t, 2)  # budget <= given: nothing new is sampled, both are scored
    assert res[0].compute == Compute(0, 0, 2) and led.sequences == 1
