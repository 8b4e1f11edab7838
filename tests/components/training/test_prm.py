"""Process reward model: Monte-Carlo step labels from a fake engine are exactly the hand-computed ones,
labels are seeded, training moves step scores toward their labels, runs resume exactly, bad data fails."""
from __future__ import annotations

import pytest
import torch

from components.config import LoraConfig
from components.data import arithmetic as ar
from components.data.prompts import render_prompt
from components.generation import Rollout, make_engine
from components.modeling.models import save_model
from components.modeling.reward_models import load_reward_model
from components.seeds import derive_seed
from components.training.prm import (
    PRMConfig, encode_solutions, evaluate_solutions, parse_solutions, prm_gate, run_prm)
from components.training.prm_labels import label_steps

pytestmark = pytest.mark.usefixtures("single_thread")


class FakeEngine:
    """Answers every prompt with the n continuations listed for it; records its calls."""

    def __init__(self, table: dict[str, list[str]]):
        self.table, self.calls = table, []

    def generate(self, prompts, params, progress=False):
        self.calls.append((list(prompts), params))
        texts = [t for p in prompts for t in self.table[p]]
        assert all(len(self.table[p]) == params.n for p in prompts)
        n = params.n
        return Rollout(prompt_ids=[[0]] * len(texts), completion_ids=[[1] * len(t) for t in texts],
                       logprobs=[[0.0] * len(t) for t in texts], texts=texts, finish_reasons=["eos"] * len(texts),
                       prompt_index=[i // n for i in range(len(texts))], num_generated_tokens=sum(map(len, texts)),
                       wall_time_s=1.0)

    def update_weights(self, model):
        pass


S1 = "<think>2*3=6 1+6=7</think><answer>7</answer>"   # right
S2 = "<think>2*3=5 1+5=6</think><answer>6</answer>"   # wrong from the first step
S3 = "<think>4-1=3</think><answer>3</answer>"          # right, sampled twice


def fake_table(tok) -> dict[str, list[str]]:
    h1, h2 = render_prompt(tok, "1+2*3"), render_prompt(tok, "4-1")
    return {
        h1: [S1, S2], h2: [S3, S3],
        h1 + "<think>2*3=6 ": ["1+6=7</think><answer>7</answer>", "1+6=8</think><answer>8</answer>", "no",
                               "1+6=7</think><answer>7</answer>"],                       # 2 of 4 right
        h1 + "<think>2*3=6 1+6=7": ["</think><answer>7</answer>"] * 3 + ["</think><answer>9</answer>"],  # 3 of 4
        h1 + "<think>2*3=5 ": ["1+5=6</think><answer>6</answer>"] * 3 + ["1+6=7</think><answer>7</answer>"],  # 1
        h1 + "<think>2*3=5 1+5=6": ["</think><answer>6</answer>"] * 4,                     # 0 of 4
        h2 + "<think>4-1=3": ["</think><answer>3</answer>", "x", "y", "z"],                # 1 of 4
    }


ROWS = [{"prompt": "1+2*3", "answer": "7"}, {"prompt": "4-1", "answer": "3"}]


@pytest.mark.parametrize("rule, expected", [
    ("hard", [[1, 1, 1], [1, 0, 0], [1, 1], [1, 1]]),
    ("soft", [[0.5, 0.75, 1], [0.25, 0, 0], [0.25, 1], [0.25, 1]]),
])
def test_monte_carlo_labels_by_hand(tiny_tokenizer, rule, expected):
    """Steps of S1: '<think>2*3=6 ' -> 2/4 continuations right, '1+6=7' -> 3/4, the final step -> S1 is
    right (1). S2: 1/4, 0/4, wrong (0). S3: 1/4, right. The last step is labelled by the solution itself."""
    engine = FakeEngine(fake_table(tiny_tokenizer))
    cfg = PRMConfig(label=rule, solutions_per_prompt=2, rollouts_per_step=4)
    labelled, stats = label_steps(engine, tiny_tokenizer, ROWS, cfg, seed=11)
    assert [r["labels"] for r in labelled] == expected
    assert [r["completion"] for r in labelled] == [S1, S2, S3, S3]
    assert [r["correct"] for r in labelled] == [True, False, True, True]
    assert labelled[0]["steps"] == ["<think>2*3=6 ", "1+6=7", "</think><answer>7</answer>"]
    (sol_prompts, sol_params), (roll_prompts, roll_params) = engine.calls  # one call each, all prefixes batched
    assert sol_params.n == 2 and sol_params.seed == derive_seed(11, "prm", "solutions")
    assert roll_params.n == 4 and roll_params.seed == derive_seed(11, "prm", "rollouts")
    assert len(roll_prompts) == 5, "the prefix S3 shares with its duplicate is rolled out once"
    assert (stats.solutions, stats.solutions_correct, stats.steps, stats.rollout_prefixes, stats.rollouts) == \
        (4, 3, 10, 5, 20)


def test_labels_from_the_real_engine_are_seeded(tiny_model, tiny_tokenizer):
    rows = [{"prompt": p.expression, "answer": str(p.answer)} for p in ar.generate(3, 4, [1], heldout=False)]
    cfg = PRMConfig(solutions_per_prompt=2, rollouts_per_step=2, max_new_tokens=12)
    engine = make_engine("transformers", tiny_model, tiny_tokenizer)
    first, stats = label_steps(engine, tiny_tokenizer, rows, cfg, seed=0)
    again, _ = label_steps(engine, tiny_tokenizer, rows, cfg, seed=0)
    other, _ = label_steps(engine, tiny_tokenizer, rows, cfg, seed=1)
    assert first == again and first != other
    assert stats.rollouts == stats.rollout_prefixes * 2 and stats.tokens > 0


def test_a_raising_verifier_is_named(tiny_tokenizer):
    engine = FakeEngine(fake_table(tiny_tokenizer))
    bad = [ROWS[0], {"prompt": "4-1", "answer": "three"}]
    with pytest.raises(ValueError, match="verifier 'exact_int' failed while labelling steps: gold answer 'three'"):
        label_steps(engine, tiny_tokenizer, bad, PRMConfig(solutions_per_prompt=2, rollouts_per_step=4), seed=0)
    with pytest.raises(ValueError, match=r"rows\[0\]: expected columns 'prompt' and 'answer'"):
        label_steps(engine, tiny_tokenizer, [{"prompt": "1+1"}], PRMConfig(), seed=0)


def marked_solutions(n: int) -> list[dict]:
    """Known-truth step labels: a step written with ':' instead of '=' is an error, and every step from
    the first error on is labelled 0 (the solution is then also wrong); all other steps are 1."""
    out = []
    for k, p in enumerate(ar.generate(5, n, [2, 3], heldout=False)):
        bad_from = k % (len(p.steps) + 1)  # == len(steps): no error
        steps = [s.replace("=", ":") if j == bad_from else s for j, s in enumerate(p.steps)]
        completion = f"<think>{' '.join(steps)}</think><answer>{p.answer}</answer>"
        labels = [float(j < bad_from) for j in range(len(steps))] + [float(bad_from == len(steps))]
        out.append({"prompt": p.expression, "completion": completion, "labels": labels,
                    "correct": bad_from == len(steps)})
    return out


@pytest.fixture()
def base_dir(tmp_path, tiny_model, tiny_tokenizer):
    save_model(tiny_model, tiny_tokenizer, tmp_path / "base")
    return str(tmp_path / "base")


def prm(base_dir, tok, **kw):
    return load_reward_model(base_dir, "process", pad_token_id=tok.pad_token_id, **kw)


def config(**overrides) -> PRMConfig:
    return PRMConfig(**{**dict(steps=40, batch_size=16, lr=3e-3, ckpt_every=100, log_every=5), **overrides})


def test_prm_scores_move_toward_the_step_labels(base_dir, tiny_tokenizer, tmp_path):
    rows = marked_solutions(160)
    model = prm(base_dir, tiny_tokenizer)
    cfg = config()
    held, _ = encode_solutions(tiny_tokenizer, parse_solutions(rows[:40], cfg.sep), cfg, "rows")
    before = evaluate_solutions(model, held)
    result = run_prm(model, tiny_tokenizer, rows[40:], cfg, tmp_path, seed=0, heldout_rows=rows[:40])
    after = result.heldout
    assert after == evaluate_solutions(model, held)
    assert after["step_accuracy"] >= 0.9 and after["brier"] < before["brier"] / 2, (before, after)
    assert after["score_correct"] > after["score_incorrect"] + 0.3
    assert "ece" in after and after["steps"] == sum(len(r["labels"]) for r in rows[:40])
    assert prm_gate(after, config(min_step_accuracy=0.85)).passed
    gate = prm_gate(after, config(min_step_accuracy=1.0))
    assert gate.passed == (after["step_accuracy"] >= 1.0) and "heldout/step_accuracy" in gate.message


def test_killed_lora_run_resumes_to_the_same_weights(base_dir, tiny_tokenizer, tmp_path):
    rows, lora = marked_solutions(48), LoraConfig(r=2, alpha=4)
    cfg = config(steps=5, batch_size=8, grad_accum=2, warmup_steps=2, ckpt_every=2, finetune="lora", lora=lora)
    straight = prm(base_dir, tiny_tokenizer, finetune="lora", lora=lora)
    run_prm(straight, tiny_tokenizer, rows, cfg, tmp_path / "a", seed=2)
    first = run_prm(prm(base_dir, tiny_tokenizer, finetune="lora", lora=lora), tiny_tokenizer, rows, cfg,
                    tmp_path / "b", seed=2, stop_after=2)
    assert first.resumed_from == 0 and first.heldout == {}
    torch.manual_seed(321)
    restarted = prm(base_dir, tiny_tokenizer, finetune="lora", lora=lora)
    second = run_prm(restarted, tiny_tokenizer, rows, cfg, tmp_path / "b", seed=2)
    assert second.resumed_from == 2
    a, b = dict(straight.named_parameters()), dict(restarted.named_parameters())
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any("score" in k and not torch.equal(a[k], p) for k, p in
               prm(base_dir, tiny_tokenizer, finetune="lora", lora=lora).named_parameters()), "the head trained"


def test_bad_labelled_rows_fail_clearly(base_dir, tiny_tokenizer, tmp_path):
    model, rows = prm(base_dir, tiny_tokenizer), marked_solutions(8)
    with pytest.raises(ValueError, match="rows: no labelled solutions"):
        run_prm(model, tiny_tokenizer, [], config(), tmp_path, seed=0)
    short = {**rows[2], "labels": rows[2]["labels"][:-1]}
    with pytest.raises(ValueError, match=r"rows\[2\]: column 'labels' needs one label per step \(\d steps"):
        run_prm(model, tiny_tokenizer, [*rows[:2], short, *rows[3:]], config(), tmp_path, seed=0)
    with pytest.raises(ValueError, match=r"rows\[0\]: column 'labels' must hold numbers in \[0, 1\]"):
        run_prm(model, tiny_tokenizer, [{**rows[0], "labels": [2.0] * len(rows[0]["labels"])}, *rows[1:]],
                config(), tmp_path, seed=0)
    with pytest.raises(ValueError, match=r"rows\[1\]: missing column\(s\) \['completion'\]"):
        run_prm(model, tiny_tokenizer, [rows[0], {"prompt": "x", "labels": [1.0]}], config(), tmp_path, seed=0)
    with pytest.raises(ValueError, match="unknown step label rule 'mean'; valid names: hard, soft"):
        PRMConfig(label="mean")
