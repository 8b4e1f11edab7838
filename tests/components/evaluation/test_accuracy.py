import math

import pytest

from components.evaluation.accuracy import _summarise, evaluate


def test_summary_by_hand():
    """4 problems, 3 correct: accuracy 0.75, s.e. sqrt(.75*.25/4) = 0.2165; level 1: 2/2, level 2: 1/2."""
    m = _summarise([1.0, 1.0, 0.0, 1.0], [1.0, 0.0, 0.0, 1.0], [10, 20, 30, 40], [1, 1, 2, 2])
    assert m["accuracy"] == 0.75 and m["format_rate"] == 0.5 and m["mean_length"] == 25
    assert math.isclose(m["accuracy_se"], math.sqrt(0.75 * 0.25 / 4))
    assert m["accuracy_level_1"] == 1.0 and m["accuracy_level_2"] == 0.5
    assert m["accuracy_ci_low"] < 0.75 < m["accuracy_ci_high"]


def test_partial_credit_counts_the_same_way_overall_and_per_level():
    """Scores 0.9, 0.6, 0.4, 0.2 (a partial-credit checker): 2 of 4 above one half, overall and at
    level 1 (1 of 2: 0.9 and 0.4), level 2 (1 of 2) -- not the mean scores 0.65 and 0.4."""
    m = _summarise([0.9, 0.6, 0.4, 0.2], [1.0] * 4, [1] * 4, [1, 2, 1, 2])
    assert m["accuracy"] == 0.5 and m["accuracy_level_1"] == 0.5 and m["accuracy_level_2"] == 0.5


def test_evaluate_scores_greedy_completions(tiny_model, tiny_tokenizer):
    rows = [{"prompt": "1+2", "answer": "3", "level": 1}, {"prompt": "2*3", "answer": "6", "level": 1}]
    result = evaluate(tiny_model, tiny_tokenizer, rows, max_new_tokens=8, batch_size=2, table_rows=1)
    assert result.metrics["n"] == 2 and 0 <= result.metrics["accuracy"] <= 1
    assert result.metrics["mean_length"] <= 8
    assert len(result.table) == 1 and result.table[0]["prompt"] == "1+2"
    again = evaluate(tiny_model, tiny_tokenizer, rows, max_new_tokens=8, batch_size=1)
    assert again.table[0]["completion"] == result.table[0]["completion"], "greedy is deterministic"


def test_empty_eval_set_is_an_error(tiny_model, tiny_tokenizer):
    with pytest.raises(ValueError, match="evaluation set is empty"):
        evaluate(tiny_model, tiny_tokenizer, [], max_new_tokens=4, batch_size=1)


class SolvingEngine:
    """A fake engine that answers each rendered prompt with its correct worked solution
    (or, with `shift`, with the solution of another row: a row/text misalignment)."""

    def __init__(self, shift: int = 0):
        self.shift = shift
        self.closed = False

    def close(self):
        self.closed = True

    def generate(self, prompts, params, progress=False):
        from components.data import arithmetic as ar
        from components.generation import Rollout

        def solution(prompt: str) -> str:
            expr = prompt.split("<|user|>")[1].split("<|end|>")[0]
            numbers = [int(x) for x in expr.replace("*", " ").replace("+", " ").replace("-", " ").split()]
            ops = [c for c in expr if c in "+-*"]
            answer, steps = ar.solve(numbers, ops)
            return ar.Problem(expr, answer, steps, 0).solution()

        texts = [solution(prompts[(i + self.shift) % len(prompts)]) for i in range(len(prompts))]
        return Rollout(prompt_ids=[[1]] * len(texts), completion_ids=[[1, 2]] * len(texts), logprobs=[[0.0]] * len(texts),
                       texts=texts, finish_reasons=["eos"] * len(texts), prompt_index=list(range(len(texts))),
                       num_generated_tokens=2 * len(texts), wall_time_s=1.0)


@pytest.mark.parametrize("shift, accuracy", [(0, 1.0), (1, 0.0)])
def test_a_known_correct_completion_scores_as_correct_through_the_same_path(tiny_model, tiny_tokenizer, monkeypatch,
                                                                            shift, accuracy):
    import components.evaluation.accuracy as module
    from components.data import arithmetic as ar

    rows = [{"prompt": p.expression, "answer": str(p.answer), "level": p.level}
            for p in ar.generate(3, 6, [2, 3], heldout=True)]
    engine = SolvingEngine(shift)
    monkeypatch.setattr(module, "make_engine", lambda *a, **k: engine)
    result = evaluate(tiny_model, tiny_tokenizer, rows, max_new_tokens=64, table_rows=6)
    assert engine.closed, "evaluate left the engine it made open"
    assert result.metrics["accuracy"] == accuracy and result.metrics["format_rate"] == 1.0
    assert [r["correct"] for r in result.table] == [accuracy] * 6
    if shift == 0:
        assert all(f"<answer>{r['answer']}</answer>" in r["completion"] for r in result.table)
