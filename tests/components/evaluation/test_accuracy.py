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
