"""TTS evaluation: the grid, per-cell summaries, the plot, the disagreement table, the frontier, the split."""
from __future__ import annotations

import json

import pytest

from components.algorithms.metrics import accuracy_ci
from components.evaluation.tts import Cell, frontier, plot_accuracy_vs_tokens, run_grid, split_dev_test, summarise, \
    write_outputs
from tests.components.search.fakes import FakeChains, FakeORM, Ledger, answer, queries, tools


def kit():
    led = Ledger()
    script = {"p0": [answer(0)], "p1": [answer(5), answer(1), answer(9)], "p2": [answer(7), answer(2)]}
    return tools(FakeChains(script, led), score=FakeORM({answer(1): 3.0, answer(2): 3.0}, led)), led


def test_grid_grades_each_cell_and_summarises_compute():
    t, led = kit()
    golds = ["0", "1", "2"]
    logged = []
    cells = [Cell("greedy", 1), Cell("best_of_n", 3), Cell("best_of_n", 1, name="bon-1")]
    out = run_grid(queries(3), golds, t, cells, log=lambda m, s: logged.append((s, m)))
    assert [c.correct for c in out[:2]] == [[True, False, False], [True, True, True]]
    rows = summarise(out)
    greedy = rows[0]
    ci = accuracy_ci(1, 3)
    assert (greedy["accuracy"], greedy["ci_low"], greedy["ci_high"]) == (1 / 3, ci.low, ci.high)
    assert greedy["tokens"] == sum(len(answer(d)) for d in (0, 5, 7)) / 3 and greedy["forward_passes"] == 1.0
    assert rows[1]["forward_passes"] == 3.0 and rows[1]["verifier_calls"] == 3.0
    assert rows[2]["strategy"] == "bon-1"
    assert [s for s, _ in logged] == [0, 1, 2] and "tts/best_of_n/accuracy" in logged[1][1]
    with pytest.raises(ValueError, match="one gold answer each"):
        run_grid(queries(3), golds[:2], t, cells)


def row(strategy, budget, acc, tokens):
    return {"strategy": strategy, "budget": budget, "accuracy": acc, "tokens": tokens, "ci_low": acc - 0.05,
            "ci_high": acc + 0.05}


def test_frontier_by_hand():
    rows = [row("best_of_n", 1, 0.50, 40), row("best_of_n", 4, 0.70, 160), row("best_of_n", 16, 0.70, 640),
            row("best_of_n", 8, 0.68, 320), row("compute_optimal", 4, 0.66, 90), row("compute_optimal", 8, 0.71, 150),
            row("compute_optimal", 16, 0.72, 300)]
    f = frontier(rows)
    # best-of-N's best accuracy 0.70 first at N=4 (160 tokens); compute-optimal reaches >= 0.70 at 150 tokens
    assert (f["accuracy"], f["baseline_budget"], f["baseline_tokens"]) == (0.70, 4, 160)
    assert (f["target_budget"], f["target_tokens"], f["ratio"]) == (8, 150, 160 / 150)
    never = frontier(rows[:4] + [row("compute_optimal", 4, 0.6, 10)])
    assert never["ratio"] is None and never["target_best_accuracy"] == 0.6
    with pytest.raises(ValueError, match="compute_optimal"):
        frontier(rows[:4])


def test_plot_and_outputs_are_written(tmp_path):
    t, _ = kit()
    out = run_grid(queries(3), ["0", "1", "2"], t, [Cell("greedy", 1), Cell("best_of_n", 2), Cell("best_of_n", 3)])
    paths = write_outputs(tmp_path / "tts", out, queries(3), ["0", "1", "2"], extra={"frontier": {"ratio": 1.0}})
    assert paths["plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and paths["plot"].stat().st_size > 5000
    summary = json.loads(paths["summary"].read_text())
    assert len(summary["rows"]) == 3 and summary["frontier"] == {"ratio": 1.0}
    table = [json.loads(x) for x in paths["disagreements"].read_text().splitlines()]
    assert table and all(len(set(r["answers"].values())) > 1 for r in table)
    assert {r["prompt"] for r in table} <= {"p1", "p2"}  # p0 is answered 0 by every cell
    assert plot_accuracy_vs_tokens([], tmp_path / "empty.png").exists()


def test_split_is_disjoint_deterministic_and_checked():
    rows = [{"prompt": f"{i}+{i}", "answer": str(2 * i)} for i in range(200)]
    dev, test = split_dev_test(rows, 0.5, seed=1)
    assert not {r["prompt"] for r in dev} & {r["prompt"] for r in test} and len(dev) + len(test) == 200
    assert 60 < len(dev) < 140
    assert split_dev_test(rows, 0.5, seed=1) == (dev, test) and split_dev_test(rows, 0.5, seed=2) != (dev, test)
    with pytest.raises(ValueError, match="dev_fraction"):
        split_dev_test(rows, 1.0)
    with pytest.raises(ValueError, match="empty split"):
        split_dev_test(rows[:1], 0.5)


class ChatTok:
    """Renders a prompt as the fakes' head "H[prompt]"."""

    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=True):
        return f"H[{messages[-1]['content']}]"


def test_evaluate_tts_fits_on_dev_and_evaluates_the_grid_on_test(tmp_path):
    from components.evaluation.tts_config import CellSpec, ComputeOptimalConfig, TTSConfig
    from components.evaluation.tts_eval import evaluate_tts

    n = 40
    script = {f"p{i}": [answer(i)] if i % 2 == 0 else [answer(i + 100), answer(i)] for i in range(n)}
    led = Ledger()
    t = tools(FakeChains(script, led), score=FakeORM({answer(i): 2.0 for i in range(n)}, led))
    rows = [{"prompt": f"p{i}", "answer": str(i)} for i in range(n)]
    co = ComputeOptimalConfig(probes=2, bins=2, levels=[2, 4],
                              arms=[CellSpec(strategy="self_consistency", budgets=[1]),
                                    CellSpec(strategy="best_of_n", budgets=[4])])
    cfg = TTSConfig(cells=[CellSpec(strategy="best_of_n", budgets=[1, 4])], compute_optimal=co)
    out = evaluate_tts(rows, t, ChatTok(), cfg, tmp_path)
    names = [(r["strategy"], r["budget"]) for r in out["rows"]]
    assert names == [("best_of_n", 1), ("best_of_n", 4), ("compute_optimal", 2), ("compute_optimal", 4)]
    test_n = out["rows"][0]["n"]
    assert 0 < test_n < n and json.loads(out["paths"]["summary"].read_text())["test"] == test_n
    co4 = out["rows"][-1]
    assert co4["accuracy"] == 1.0 and out["frontier"]["accuracy"] == 1.0  # best-of-4 with the ORM is always right
    assert out["frontier"]["target_budget"] == 4 and out["frontier"]["ratio"] > 1.0  # easy halves cost 2 samples
    with pytest.raises(ValueError, match="own section"):
        CellSpec(strategy="compute_optimal", budgets=[4])
    with pytest.raises(ValueError, match="budgets"):
        CellSpec(strategy="greedy", budgets=[0])
