"""A process verifier used as an outcome verifier: step scores aggregated per completion."""
import pytest

from components.search import Candidate, Query, Toolkit, get_strategy
from components.search.base import sigmoid
from components.search.verifiers import process_outcome


def test_step_scores_are_aggregated_per_completion_and_empty_ones_score_zero():
    seen = []

    def score_steps(prompts, partials):
        seen.append((prompts, partials))
        return [[0.9, 0.5, 0.8][: len(p)] for p in partials]

    completions = ["<think>1+1=2 2+2=4</think><answer>4</answer>", "", "<think>3*3=9</think><answer>9</answer>"]
    prompts = ["a", "b", "c"]
    # steps: "<think>1+1=2 ", "2+2=4", "</think><answer>4</answer>" -> [0.9, 0.5, 0.8]; the other two -> [0.9, 0.5]
    probs = lambda agg: [sigmoid(x) for x in process_outcome(score_steps, agg)(prompts, completions)]  # noqa: E731
    assert probs("last") == pytest.approx([0.8, 0.0, 0.5], abs=1e-5)  # scores are logits (the Score contract)
    assert probs("min") == pytest.approx([0.5, 0.0, 0.5], abs=1e-5)
    assert seen[0][0] == ["a", "c"], "the empty completion is never sent to the model"
    assert "".join(seen[0][1][0]) == completions[0], "steps cover the whole completion"


def test_weighted_best_of_n_over_a_prm_weights_votes_by_the_prm_probability():
    sure, wrong = "<think>a </think><answer>7</answer>", "<think>b </think><answer>9</answer>"

    def generate(prefixes, n, **_):
        return [[Candidate(t, 1, "eos") for t in (sure, wrong, wrong)][:n] for _ in prefixes]

    prm = lambda prompts, partials: [[0.99 if "7" in "".join(s) else 0.01 for _ in s] for s in partials]  # noqa: E731
    tools = Toolkit(generate=generate, score=process_outcome(prm, "last"))
    r = get_strategy("weighted_best_of_n")([Query("p", "H")], tools, 3)[0]
    assert r.answer == "7" and r.extras["votes"] == pytest.approx({"7": 0.99, "9": 0.02})
