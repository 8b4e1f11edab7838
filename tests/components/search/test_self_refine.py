"""Self-refine: every stopping rule, and its compute, against scripted critique and revision."""
from __future__ import annotations

from dataclasses import replace

import pytest

from components.search import Candidate, Compute, get_strategy
from components.rewards import extract_answer

from .fakes import FakeChains, Ledger, answer, queries, tools

GOLD = {"p0": "3", "p1": "6", "p2": "100"}
REVISIONS = {"p0": [], "p1": [answer(4), answer(4)], "p2": [answer(2), answer(3), answer(4), answer(5)]}


class Critic:
    def __init__(self):
        self.critiques, self.revisions = [], []

    def critique(self, prompts, completions, *, seed=0):
        self.critiques += prompts
        return [Candidate("VERDICT: correct" if extract_answer(c) == GOLD[p] else "VERDICT: wrong", 4, "eos")
                for p, c in zip(prompts, completions)]

    def revise(self, prompts, completions, feedbacks, *, seed=0):
        assert all(f == "VERDICT: wrong" for f in feedbacks)
        out = []
        for p in prompts:
            text = REVISIONS[p][sum(1 for q in self.revisions if q == p)]
            self.revisions.append(p)
            out.append(Candidate(text, len(text), "eos"))
        return out


def test_self_refine_stops_on_approval_on_a_fixed_point_and_on_budget():
    led, critic = Ledger(), Critic()
    script = {"p0": [answer(3)], "p1": [answer(5)], "p2": [answer(1)]}
    t = tools(FakeChains(script, led), critique=critic.critique, revise=critic.revise)
    res = get_strategy("self_refine")(queries(3), t, 3)
    assert [r.extras["stopped"] for r in res] == ["approved", "unchanged", "budget"]
    assert [r.answer for r in res] == ["3", "4", "4"]
    assert [r.extras["answers"] for r in res] == [["3"], ["5", "4", "4"], ["1", "2", "3", "4"]]
    assert [r.extras["rounds"] for r in res] == [0, 2, 3]
    L = len(answer(0))  # every scripted solution has one digit
    # initial greedy chain + 4 tokens per critique + each revision's length
    assert res[0].compute == Compute(L + 4, 2, 0)
    assert res[1].compute == Compute(L + 2 * 4 + 2 * L, 5, 0)
    assert res[2].compute == Compute(L + 3 * 4 + 3 * L, 7, 0)
    assert led.calls[0]["temperature"] == 0.0  # y0 is greedy


def test_self_refine_starts_from_a_given_sample_and_can_keep_going():
    led, critic = Ledger(), Critic()
    t = tools(FakeChains({"p1": [answer(5)]}, led), critique=critic.critique, revise=critic.revise)
    q = [replace(queries(2)[1], given=(Candidate(answer(9), 7, "eos"),))]
    res = get_strategy("self_refine")(q, t, 2, stop_on_same_answer=False)
    assert led.sequences == 0  # the given sample is y0: nothing sampled
    assert res[0].extras == {"rounds": 2, "stopped": "budget", "answers": ["9", "4", "4"]}
    with pytest.raises(ValueError, match="self_refine needs a `critique`"):
        get_strategy("self_refine")(q, tools(FakeChains({})), 1)


def test_two_answerless_texts_are_not_the_same_answer():
    revs = iter(["<think>2+2=4 and then", answer(4), answer(4)])
    critique = lambda prompts, completions, *, seed=0: [Candidate("VERDICT: wrong", 3, "eos") for _ in prompts]  # noqa: E731
    revise = lambda prompts, completions, feedbacks, *, seed=0: [Candidate(next(revs), 5, "eos") for _ in prompts]  # noqa: E731
    t = tools(FakeChains({"p0": ["<think>2+2"]}, Ledger()), critique=critique, revise=revise)
    r = get_strategy("self_refine")(queries(1), t, 3)[0]
    assert r.answer == "4" and r.extras["answers"] == [None, None, "4", "4"] and r.extras["stopped"] == "unchanged"
