"""A process verifier used as an outcome verifier: step scores aggregated per completion."""
from components.search.verifiers import process_outcome


def test_step_scores_are_aggregated_per_completion_and_empty_ones_score_zero():
    seen = []

    def score_steps(prompts, partials):
        seen.append((prompts, partials))
        return [[0.9, 0.5, 0.8][: len(p)] for p in partials]

    completions = ["<think>1+1=2 2+2=4</think><answer>4</answer>", "", "<think>3*3=9</think><answer>9</answer>"]
    prompts = ["a", "b", "c"]
    # steps: "<think>1+1=2 ", "2+2=4", "</think><answer>4</answer>" -> [0.9, 0.5, 0.8]; the other two -> [0.9, 0.5]
    assert process_outcome(score_steps, "last")(prompts, completions) == [0.8, 0.0, 0.5]
    assert process_outcome(score_steps, "min")(prompts, completions) == [0.5, 0.0, 0.5]
    assert seen[0][0] == ["a", "c"], "the empty completion is never sent to the model"
    assert "".join(seen[0][1][0]) == completions[0], "steps cover the whole completion"
