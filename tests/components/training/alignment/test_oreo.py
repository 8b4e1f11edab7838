"""OREO on the tiny Llama: the soft-Bellman residual falls through each of its two paths
(value model alone, policy alone), in token and step mode; steps are cut where
`split_steps` cuts them; bad trajectories fail with the row and column named."""
from __future__ import annotations

import pytest
import torch

from components.training.alignment.oreo import OREOConfig, encode_trajectories, run_oreo
from tests.components.training.alignment.conftest import collect, same_weights, weights


def trajectories() -> list[dict]:
    rows = []
    for i in range(8):
        a, b = i % 4 + 1, i // 4 + 2
        right = i % 2 == 0
        answer = a + 2 * b if right else a + 2 * b + 1
        rows.append({"prompt": f"{a}+{b}*2", "reward": 1.0 if right else 0.0,
                     "completion": f"<think>{b}*2={2 * b} {a}+{2 * b}={answer}</think><answer>{answer}</answer>"})
    return rows


ROWS = trajectories()


def config(**overrides) -> OREOConfig:
    return OREOConfig(**{**dict(steps=10, batch_size=8, lr=1e-3, critic_lr=1e-2, ckpt_every=100), **overrides})


def test_steps_end_where_split_steps_cuts_and_the_last_one_takes_the_end_of_turn(tiny_tokenizer):
    batch = encode_trajectories(tiny_tokenizer, ROWS[:1], config(mode="step")).batch(torch.tensor([0]), "cpu")
    ids, ends = batch.input_ids[0], batch.token_fields["step_end"][0]
    cuts = ends.nonzero().flatten().tolist()
    texts = [tiny_tokenizer.decode(ids[start + 1 : end + 1]) for start, end in zip([batch.start - 1] + cuts, cuts)]
    assert texts == ["<think>2*2=4 ", "1+4=5", "</think><answer>5</answer><|end|>"]
    assert not (ends & ~batch.completion_mask).any()


@pytest.mark.parametrize("mode", ["token", "step"])
def test_oreo_trains_policy_and_value_model(mode, tiny_model, tiny_tokenizer, tmp_path):
    before = weights(tiny_model)
    logged, log = collect()
    out = run_oreo(tiny_model, tiny_tokenizer, ROWS, config(mode=mode), tmp_path, seed=0, log=log)
    assert not same_weights(before, weights(tiny_model)) and out.critic is not None
    assert logged[1]["bellman_loss"] == pytest.approx(0.5), "V = 0 and pi = pi_ref: residual -R, half the rows R=1"
    assert logged[10]["bellman_loss"] < 0.6 * logged[1]["bellman_loss"]
    assert logged[1]["kl"] == pytest.approx(0.0, abs=1e-6) and logged[10]["kl"] > 0


def test_each_model_lowers_the_residual_on_its_own(tiny_model, tiny_tokenizer, tmp_path):
    """Value-model path only (the policy barely moves), then policy path only (the value model barely moves)."""
    value_only, log_v = collect()
    run_oreo(tiny_model, tiny_tokenizer, ROWS, config(lr=1e-12), tmp_path / "v", seed=0, log=log_v)
    assert value_only[10]["bellman_loss"] < 0.6 * value_only[1]["bellman_loss"]
    assert abs(value_only[10]["log_ratio/mean"]) < 1e-6
    policy_only, log_p = collect()
    run_oreo(tiny_model, tiny_tokenizer, ROWS, config(critic_lr=1e-12, mode="step"), tmp_path / "p", seed=0,
             log=log_p)
    assert policy_only[10]["bellman_loss"] < 0.8 * policy_only[1]["bellman_loss"]
    assert abs(policy_only[10]["values/mean"]) < 1e-6


def test_oreo_resumes_to_the_same_weights(tiny_model, tiny_tokenizer, tmp_path):
    import copy

    from components.training.alignment.value_model import value_model_from

    cfg = config(steps=3, batch_size=3, grad_accum=2)
    critic = value_model_from(tiny_model)
    a, a_critic = copy.deepcopy(tiny_model), copy.deepcopy(critic)
    run_oreo(a, tiny_tokenizer, ROWS, cfg, tmp_path / "a", seed=2, critic=a_critic)
    run_oreo(copy.deepcopy(tiny_model), tiny_tokenizer, ROWS, cfg, tmp_path / "b", seed=2,
             critic=copy.deepcopy(critic), stop_after=1)
    b, b_critic = copy.deepcopy(tiny_model), copy.deepcopy(critic)
    assert run_oreo(b, tiny_tokenizer, ROWS, cfg, tmp_path / "b", seed=2, critic=b_critic).resumed_from == 1
    assert same_weights(weights(a, a_critic), weights(b, b_critic))


def test_bad_trajectories_fail_with_the_row_and_column_named(tiny_model, tiny_tokenizer, tmp_path):
    with pytest.raises(ValueError, match="OREO: no training rows"):
        run_oreo(tiny_model, tiny_tokenizer, [], config(), tmp_path, seed=0)
    with pytest.raises(ValueError, match="OREO: row 1: column 'reward' must be a finite number, got nan"):
        run_oreo(tiny_model, tiny_tokenizer, [ROWS[0], {**ROWS[1], "reward": float("nan")}], config(), tmp_path, seed=0)
    with pytest.raises(ValueError, match="OREO: row 0: column 'completion'"):
        run_oreo(tiny_model, tiny_tokenizer, [{"prompt": "1+1", "reward": 1.0}], config(), tmp_path, seed=0)
    with pytest.raises(ValueError, match="mode"):
        OREOConfig(mode="sentence")
