"""Every strategy family end to end on the tiny Llama, its tiny ORM / PRM, and prompted feedback."""
from __future__ import annotations

import pytest

from components.generation import PrefixCache, TransformersEngine
from components.search import Arm, SearchConfig, Toolkit, fit_compute_optimal, get_strategy
from components.search.policy import PolicyFeedback, PolicyGenerator, make_queries
from components.search.verifiers import OutcomeVerifier, ProcessVerifier

pytestmark = pytest.mark.usefixtures("single_thread")
PROMPTS = ["7+3*4", "1+2", "9-3*2"]


@pytest.fixture()
def kit(tiny_model, tiny_tokenizer, tiny_orm, tiny_prm):
    gen = PolicyGenerator(TransformersEngine(tiny_model, tiny_tokenizer), prefix_cache=PrefixCache())
    fb = PolicyFeedback(gen, tiny_tokenizer, max_new_tokens=12)
    cfg = SearchConfig(max_new_tokens=16, step_tokens=6, max_steps=3, temperature=1.0, seed=0)
    tools = Toolkit(generate=gen, score=OutcomeVerifier(tiny_orm, tiny_tokenizer),
                    score_steps=ProcessVerifier(tiny_prm, tiny_tokenizer), critique=fb.critique, revise=fb.revise,
                    merge=fb.merge, cfg=cfg)
    return tools, gen, make_queries(tiny_tokenizer, PROMPTS)


def check(results, gen, n=len(PROMPTS)):
    assert len(results) == n
    assert all(isinstance(r.completion, str) and r.compute.forward_passes >= 1 for r in results)
    assert sum(r.compute.generated_tokens for r in results) == gen.generated_tokens  # every sampled token counted


@pytest.mark.parametrize("name,budget,options", [
    ("greedy", 1, {}), ("cot", 1, {}), ("self_consistency", 3, {}), ("best_of_n", 3, {}),
    ("weighted_best_of_n", 3, {}),
])
def test_sampling_strategies(kit, name, budget, options):
    tools, gen, qs = kit
    res = get_strategy(name)(qs, tools, budget, **options)
    check(res, gen)
    if name in ("best_of_n", "weighted_best_of_n"):
        assert all(r.compute.verifier_calls == budget for r in res)


@pytest.mark.parametrize("name,budget,options", [
    ("beam_search", 4, {"width": 2, "lookahead": 1}), ("mcts", 3, {"expand_k": 2}),
    ("mcts", 2, {"expand_k": 2, "evaluation": "rollout"}), ("tot_bfs", 2, {}), ("tot_dfs", 3, {"threshold": 0.3}),
    ("graph_of_thoughts", 2, {"refine_rounds": 1}),
])
def test_tree_strategies(kit, name, budget, options):
    tools, gen, qs = kit
    res = get_strategy(name)(qs, tools, budget, **options)
    check(res, gen)
    assert all(r.compute.verifier_calls >= 1 for r in res)
    assert gen.cached_tokens > 0  # the frontier reused its parents' keys and values


def test_self_refine_and_compute_optimal(kit, tiny_tokenizer):
    tools, gen, qs = kit
    res = get_strategy("self_refine")(qs, tools, 2)
    check(res, gen)
    assert all(r.extras["stopped"] in ("approved", "unchanged", "budget") for r in res)
    dev = make_queries(tiny_tokenizer, ["2+2", "3*3", "8-1", "5+4"])
    arms = [Arm("self_consistency", 2), Arm("best_of_n", 4), Arm("self_refine", 1)]
    plan = fit_compute_optimal(dev, ["4", "9", "7", "9"], tools, arms, [2, 4, 8], probes=2, n_bins=2)
    assert set(plan.choices) <= {2, 4, 8} and plan.choices
    before = gen.generated_tokens
    res = get_strategy("compute_optimal")(qs, tools, max(plan.choices), plan=plan)
    assert sum(r.compute.generated_tokens for r in res) == gen.generated_tokens - before
    assert all(r.extras["arm"] in {a.label for a in arms} for r in res)
