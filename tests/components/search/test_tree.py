"""Step-level tree searches (beam, MCTS, tree and graph of thoughts) against fake policies and PRMs."""
from __future__ import annotations

import math

import pytest

from components.search import Candidate, get_strategy
from components.search.mcts import backprop, select, uct
from components.search.tree import Node

from .fakes import FakeORM, FakePRM, FakeSteps, Ledger, ScriptedSteps, TablePRM, queries, tools


def step_kit(n_choices=3, **kw):
    led = Ledger()
    t = tools(FakeSteps(3, led, choices=n_choices), score_steps=FakePRM(led), score=FakeORM({}, led),
              max_new_tokens=64, step_tokens=32, **kw)
    return t, led


def owner(prefix: str) -> int:
    return int(prefix.split("]")[0][3:])


def assert_exact_accounting(results, led):
    assert sum(r.compute.generated_tokens for r in results) == led.tokens
    assert sum(r.compute.forward_passes for r in results) == led.sequences
    assert sum(r.compute.verifier_calls for r in results) == led.scored


# -- beam search ------------------------------------------------------------------------


def test_beam_search_respects_width_and_budget_and_follows_the_prm():
    t, led = step_kit(n_choices=2)
    res = get_strategy("beam_search")(queries(4), t, 8, width=2)
    assert [r.answer for r in res] == ["0"] * 4  # the PRM leads every beam to the all-0 path
    step_calls = [c for c in led.calls if c["stop"]]
    assert step_calls[0]["n"] == 8 and len(step_calls[0]["prefixes"]) == 4  # round 0: N samples from each root
    for call in step_calls[1:]:
        assert call["n"] == 8 // 2
        per_problem = [owner(p) for p in call["prefixes"]]
        assert max(per_problem.count(i) for i in range(4)) <= 2  # at most `width` beams per problem
    assert all(r.extras["finished"] <= 2 for r in res)
    assert_exact_accounting(res, led)


def test_beam_search_lookahead_scores_the_rollout_tip_and_counts_it():
    t, led = step_kit()
    plain = get_strategy("beam_search")(queries(2), t, 4, width=2)
    plain_tokens = led.tokens
    t, led = step_kit()
    ahead = get_strategy("beam_search")(queries(2), t, 4, width=2, lookahead=1)
    look = [c for c in led.calls if c["n"] == 1 and c["temperature"] == 0.0 and c["stop"]]
    assert look, "lookahead rolls out greedily, one step at a time"
    assert led.tokens > plain_tokens and sum(r.compute.generated_tokens for r in plain) == plain_tokens
    assert_exact_accounting(ahead, led)


def test_width_is_clamped_to_the_budget():
    t, led = step_kit()
    res = get_strategy("beam_search")(queries(1), t, 1, width=4)
    assert all(c["n"] == 1 and len(c["prefixes"]) <= 1 for c in led.calls)
    assert res[0].extras["finished"] == 1


# -- MCTS -------------------------------------------------------------------------------


def test_uct_select_and_backprop_by_hand():
    root = Node(owner=0, visits=4, value_sum=2.0)
    a = Node(owner=0, parent=root, visits=3, value_sum=1.5)
    b = Node(owner=0, parent=root, visits=1, value_sum=0.4)
    root.children = [a, b]
    assert uct(a, 4, 1.0) == pytest.approx(0.5 + math.sqrt(math.log(4) / 3))
    assert uct(b, 4, 1.0) == pytest.approx(0.4 + math.sqrt(math.log(4) / 1))
    assert select(root, 1.0) is b and select(root, 0.0) is a  # exploration on / off
    assert uct(Node(owner=0), 4, 1.0) == math.inf
    backprop(b, 2, 1.2)
    assert (b.visits, b.value_sum, root.visits, root.value_sum) == (3, pytest.approx(1.6), 6, pytest.approx(3.2))


@pytest.mark.parametrize("evaluation", ["prm", "rollout"])
def test_mcts_respects_the_simulation_budget(evaluation):
    t, led = step_kit()
    sims, k = 5, 2
    res = get_strategy("mcts")(queries(3), t, sims, expand_k=k, evaluation=evaluation)
    expand_calls = [c for c in led.calls if c["stop"]]
    assert len(expand_calls) <= sims and all(c["n"] == k for c in expand_calls)
    for i, r in enumerate(res):
        expansions = sum(1 for c in expand_calls for p in c["prefixes"] if owner(p) == i)
        assert expansions <= sims
        assert r.extras["tree_size"] == 1 + k * expansions
        assert r.extras["root_visits"] == k * expansions + (sims - expansions)  # a finished leaf counts once
        assert r.answer is not None
    assert_exact_accounting(res, led)


def test_mcts_finds_the_step_the_prm_prefers():
    # root -> "a " (0.9) or "b " (0.2); each continues to an answer; UCT concentrates on "a "
    table = {"": ["a ", "b "], "a ": ["</think><answer>1</answer>"], "b ": ["</think><answer>2</answer>"]}
    scores = {"a ": 0.9, "b ": 0.2, "</think><answer>1</answer>": 0.9, "</think><answer>2</answer>": 0.2}
    led = Ledger()
    t = tools(ScriptedSteps(table, led), score_steps=TablePRM(scores, led), max_new_tokens=64, step_tokens=32)
    res = get_strategy("mcts")(queries(1), t, 6, expand_k=2, c_uct=0.5)
    assert res[0].answer == "1"
    assert_exact_accounting(res, led)


# -- tree and graph of thoughts ---------------------------------------------------------


def test_tot_bfs_keeps_its_breadth():
    t, led = step_kit()
    res = get_strategy("tot_bfs")(queries(3), t, 2, proposals=3)
    for call in led.calls:
        assert call["n"] == 3
        assert max([owner(p) for p in call["prefixes"]].count(i) for i in range(3)) <= 2
    assert all(r.answer is not None and r.extras["finished"] <= 2 for r in res)
    assert_exact_accounting(res, led)


def test_tot_dfs_prunes_below_threshold_and_backtracks():
    # "a " looks best but both its children are pruned (0.1 < 0.5): DFS backtracks to "b "
    table = {"": ["a ", "b "], "a ": ["x ", "y "], "b ": ["</think><answer>7</answer>"],
             "a x ": ["</think><answer>3</answer>"]}
    scores = {"a ": 0.9, "b ": 0.8, "x ": 0.1, "y ": 0.1, "</think><answer>7</answer>": 0.9}
    led = Ledger()
    t = tools(ScriptedSteps(table, led), score_steps=TablePRM(scores, led), max_new_tokens=64, step_tokens=32)
    res = get_strategy("tot_dfs")(queries(1), t, 5, proposals=2, threshold=0.5)
    expanded = [p.split("]", 1)[1] for c in led.calls for p in c["prefixes"]]
    assert expanded == ["", "a ", "b "]  # root, the best child, then back to its sibling
    assert res[0].answer == "7" and res[0].extras == {"expansions": 3, "pruned": 2, "found": True}
    assert_exact_accounting(res, led)
    # budget: one expansion only, no solution reached -> the best evaluated state is completed greedily
    led = Ledger()
    t = tools(ScriptedSteps(table, led), score_steps=TablePRM(scores, led), max_new_tokens=64, step_tokens=32)
    res = get_strategy("tot_dfs")(queries(1), t, 1, proposals=2, threshold=0.5)
    assert res[0].extras["expansions"] == 1 and not res[0].extras["found"]
    assert led.calls[-1]["temperature"] == 0.0 and not led.calls[-1]["stop"]


def test_graph_of_thoughts_merges_and_refines():
    t, led = step_kit()
    merged, critiqued = [], []

    def merge(prompts, groups, *, seed=0):
        merged.extend(groups)
        return [Candidate("<think>s00 s10 ", 15, "stop") for _ in groups]

    def critique(prompts, completions, *, seed=0):
        critiqued.extend(completions)
        return [Candidate("VERDICT: wrong", 3, "eos") for _ in prompts]

    def revise(prompts, completions, feedbacks, *, seed=0):
        return [Candidate("<think>s00 s10 s20 </think><answer>0</answer>", 9, "eos") for _ in prompts]

    t = tools(t.generate, score_steps=t.score_steps, merge=merge, critique=critique, revise=revise,
              max_new_tokens=64, step_tokens=32)
    res = get_strategy("graph_of_thoughts")(queries(2), t, 2, proposals=2, merge=2, refine_rounds=1)
    assert merged and all(len(g) == 2 for g in merged)
    assert len(critiqued) == 2
    assert [r.answer for r in res] == ["0", "0"]  # the revision scores 0.95 at its last step: kept
    merges = len(merged)
    assert sum(r.compute.forward_passes for r in res) == led.sequences + merges + 2 * 2
    assert sum(r.compute.generated_tokens for r in res) == led.tokens + 15 * merges + (3 + 9) * 2
    assert sum(r.extras["merged"] for r in res[:1]) == merges
    with pytest.raises(ValueError, match="needs a `merge`"):
        get_strategy("graph_of_thoughts")(queries(1), tools(t.generate, score_steps=t.score_steps), 2)
