"""The alignment comparison: derived columns by hand, the target rule, clear errors, a real PNG."""
from __future__ import annotations

import math

import pytest

from components.evaluation.compare import COLUMNS, comparison_rows, markdown_table, plot_comparison

DPO = {"preference_before": 0.2, "preference_after": 0.5, "preference_n": 100, "accuracy_before": 0.6,
       "accuracy_after": 0.59, "kl": 1.5, "rm_score": 0.8, "rm_score_before": -0.45, "wall_s": 40.0, "tokens_generated": 0}
PPO = {**DPO, "preference_after": 0.25, "accuracy_after": 0.5, "tokens_generated": 123456, "wall_s": 200.0}


def test_rows_by_hand():
    dpo, ppo = comparison_rows({"dpo": DPO, "ppo": PPO})
    assert list(dpo) == list(COLUMNS)
    # gain 30 points; SE = 100 sqrt((0.2*0.8 + 0.5*0.5) / 100) = 100 sqrt(0.0041) = 6.403
    assert dpo["preference_gain"] == pytest.approx(30.0)
    assert dpo["preference_gain_se"] == pytest.approx(100 * math.sqrt(0.0041))
    assert dpo["gain_in_se"] == pytest.approx(30.0 / (100 * math.sqrt(0.0041)))
    assert dpo["accuracy_change"] == pytest.approx(-1.0) and dpo["meets_target"]
    # ppo: gain 5 pts = 0.86 SE, accuracy -10 pts: misses both halves of the target
    assert not ppo["meets_target"] and ppo["tokens_generated"] == 123456
    table = markdown_table([dpo, ppo])
    assert dpo["rm_score_change"] == pytest.approx(1.25)
    assert "| dpo | +30.0 ± 6.4 | 4.7 | -1.0 | 1.500 | 0.80 (+1.25) | 40 | 0 | yes |" in table
    assert table.count("\n") == 4


def test_a_paired_standard_error_replaces_the_independent_one():
    """Both policies answered the same prompts: the gain's paired error (given as a rate) is the one
    the row uses, and the table says so."""
    dpo, ppo = comparison_rows({"dpo": {**DPO, "preference_gain_se": 0.05}, "ppo": {**PPO, "preference_gain_se": 0.01}})
    assert dpo["paired"] and dpo["preference_gain_se"] == pytest.approx(5.0) and dpo["gain_in_se"] == pytest.approx(6.0)
    # ppo: +5 points at 1 paired s.e. is 5 s.e. (0.86 unpaired): the accuracy drop alone now misses the target
    assert ppo["gain_in_se"] == pytest.approx(5.0) and not ppo["meets_target"]
    assert comparison_rows({"ppo": {**PPO, "accuracy_after": 0.6, "preference_gain_se": 0.01}})[0]["meets_target"]
    assert "| dpo | +30.0 ± 5.0 paired | 6.0 |" in markdown_table([dpo, ppo])
    assert not comparison_rows({"dpo": DPO})[0]["paired"]


def test_bad_results_are_named():
    with pytest.raises(ValueError, match=r"method 'ppo' lacks \['kl'\]"):
        comparison_rows({"dpo": DPO, "ppo": {k: v for k, v in PPO.items() if k != "kl"}})
    with pytest.raises(ValueError, match="method 'dpo': rates must lie in"):
        comparison_rows({"dpo": {**DPO, "accuracy_after": 59.0}})
    with pytest.raises(ValueError, match="method 'dpo': wall_s must be a finite number"):
        comparison_rows({"dpo": {**DPO, "wall_s": float("nan")}})
    with pytest.raises(ValueError, match=r"method 'dpo' lacks \['rm_score_before'\]"):
        comparison_rows({"dpo": {k: v for k, v in DPO.items() if k != "rm_score_before"}})
    with pytest.raises(ValueError, match="method 'dpo': rates must lie in.*preference_gain_se=2.0"):
        comparison_rows({"dpo": {**DPO, "preference_gain_se": 2.0}})
    with pytest.raises(ValueError, match="method 'dpo': preference_gain_se must be a finite number"):
        comparison_rows({"dpo": {**DPO, "preference_gain_se": float("inf")}})
    with pytest.raises(ValueError, match="no method results"):
        comparison_rows({})


def test_plot_is_a_png(tmp_path):
    out = plot_comparison(comparison_rows({"dpo": DPO, "ppo": PPO}), tmp_path / "compare.png")
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    assert list(tmp_path.iterdir()) == [out], "written atomically: no temporary file left"
