"""PPO, GRPO with a reward model, and TRPO on the tiny Llama with a fake reward model that
likes digits: each raises the mean reward and moves its own objective; PPO resumes to the
same policy and critic; a reward model that raises is scored 0 and counted, not fatal."""
from __future__ import annotations

import copy

import pytest
import torch

from components.config import RewardItem
from components.training.loop import NoUpdateError
from components.training.alignment.grpo_rm import GRPORMConfig, run_grpo_rm
from components.training.alignment.ppo import PPOConfig, explained_variance, run_ppo
from components.training.alignment.trpo import TRPOConfig, run_trpo
from components.training.alignment.value_model import value_model_from
from tests.components.training.alignment.conftest import PROMPTS, collect, digit_share, same_weights, weights


def mean(logged: dict, key: str, steps) -> float:
    return sum(logged[s][key] for s in steps) / len(steps)


def broken_rm(prompts, completions):
    raise RuntimeError("reward model crashed")


def ppo_config(**overrides) -> PPOConfig:
    base = dict(steps=15, prompts_per_step=8, samples_per_prompt=4, max_new_tokens=8, lr=1e-2, critic_lr=1e-2,
                ppo_epochs=2, minibatch_size=16, ckpt_every=100)
    return PPOConfig(**{**base, **overrides})


# --------------------------------------------------------------------------- PPO


def test_ppo_raises_the_reward_and_its_critic_learns_the_returns(tiny_model, tiny_tokenizer, tmp_path):
    before = weights(tiny_model)
    logged, log = collect()
    out = run_ppo(tiny_model, tiny_tokenizer, PROMPTS, ppo_config(), tmp_path, seed=0, reward_fn=digit_share, log=log)
    assert not same_weights(before, weights(tiny_model)) and out.critic is not None
    assert mean(logged, "reward/mean", [13, 14, 15]) > mean(logged, "reward/mean", [1, 2, 3]) + 0.3
    # the value loss relative to the returns' variance (1 - explained variance) on FRESH rollouts,
    # before the critic trains on them: 1 with the zero head at the start, lower once it learned
    assert logged[1]["values/explained_variance"] == pytest.approx(0.0, abs=1e-6)
    assert mean(logged, "values/explained_variance", [13, 14, 15]) > 0.1
    assert abs(logged[1]["kl"]) < 1e-6 and logged[15]["kl"] > 0.01, "KL to the reference grows from 0"
    assert out.tokens_generated == sum(logged[s]["tokens"] for s in logged) > 0
    for key in ("policy_loss", "value_loss", "clip_fraction", "approx_kl", "value_clip_fraction", "entropy",
                "grad_norm/policy", "grad_norm/critic", "kl_seq", "reward/reward_model", "lr"):
        assert key in logged[1], key


def test_ppo_resumes_to_the_same_policy_and_critic(tiny_model, tiny_tokenizer, tmp_path):
    cfg = ppo_config(steps=4, ppo_epochs=2, minibatch_size=8, grad_accum=2, warmup_steps=2, schedule="cosine",
                     lr=3e-3, critic_lr=3e-3)
    critic = value_model_from(tiny_model)
    straight, straight_critic = copy.deepcopy(tiny_model), copy.deepcopy(critic)
    run_ppo(straight, tiny_tokenizer, PROMPTS, cfg, tmp_path / "a", seed=5, reward_fn=digit_share,
            critic=straight_critic)
    first = run_ppo(copy.deepcopy(tiny_model), tiny_tokenizer, PROMPTS, cfg, tmp_path / "b", seed=5,
                    reward_fn=digit_share, critic=copy.deepcopy(critic), stop_after=2)
    assert first.resumed_from == 0
    torch.manual_seed(999)
    restarted, restarted_critic = copy.deepcopy(tiny_model), copy.deepcopy(critic)
    second = run_ppo(restarted, tiny_tokenizer, PROMPTS, cfg, tmp_path / "b", seed=5, reward_fn=digit_share,
                     critic=restarted_critic)
    assert second.resumed_from == 2
    assert same_weights(weights(straight, straight_critic), weights(restarted, restarted_critic))
    assert not same_weights(weights(straight, straight_critic), weights(tiny_model, critic))


def test_a_raising_reward_model_is_scored_zero_and_counted(tiny_model, tiny_tokenizer, tmp_path):
    logged, log = collect()
    overlong = RewardItem(name="overlong", kwargs={"max_length": 8, "cache_length": 6})  # a rule reward with signal
    cfg = ppo_config(steps=2, rewards=[RewardItem(name="reward_model"), overlong], reward_timeout_s=5.0)
    before = weights(tiny_model)
    run_ppo(tiny_model, tiny_tokenizer, PROMPTS, cfg, tmp_path, seed=0, reward_fn=broken_rm, log=log)
    assert [logged[s]["reward/failures/reward_model"] for s in (1, 2)] == [32, 32]
    assert logged[2]["reward/reward_model"] == 0.0 and logged[2]["reward/failures/overlong"] == 0
    assert logged[2]["reward/overlong"] < 0 and not same_weights(before, weights(tiny_model))
    # alone, a reward model that always fails gives no signal at all: the run fails closed
    with pytest.raises(NoUpdateError, match="PPO: the trainable weights did not move"):
        run_ppo(tiny_model, tiny_tokenizer, PROMPTS, ppo_config(steps=2, reward_timeout_s=5.0), tmp_path / "alone",
                seed=0, reward_fn=broken_rm)


def test_online_methods_check_their_inputs(tiny_model, tiny_tokenizer, tmp_path):
    with pytest.raises(ValueError, match="PPO: no training rows"):
        run_ppo(tiny_model, tiny_tokenizer, [], ppo_config(), tmp_path, seed=0, reward_fn=digit_share)
    with pytest.raises(ValueError, match="PPO: row 1: column 'prompt'"):
        run_ppo(tiny_model, tiny_tokenizer, [PROMPTS[0], {"prompt": " "}], ppo_config(), tmp_path, seed=0,
                reward_fn=digit_share)
    with pytest.raises(ValueError, match="TRPO: rewards name 'reward_model' but no reward_fn"):
        run_trpo(tiny_model, tiny_tokenizer, PROMPTS, TRPOConfig(), tmp_path, seed=0)
    with pytest.raises(ValueError, match="GRPO-RM: a reward_fn .* is required"):
        run_grpo_rm(tiny_model, tiny_tokenizer, PROMPTS, GRPORMConfig(), tmp_path, seed=0)
    with pytest.raises(ValueError, match="rewards must name 'reward_model'"):
        GRPORMConfig(rewards=[RewardItem(name="exact_int")])
    with pytest.raises(ValueError, match="unknown KL estimator 'k4'"):
        PPOConfig(kl_estimator="k4")


def test_explained_variance_by_hand():
    returns = torch.tensor([[1.0, 3.0, 0.0]])
    mask = torch.tensor([[True, True, False]])
    # Var(R) = 1 over the two valid tokens; V = R - [0.5, -0.5] leaves Var(R - V) = 0.25
    assert explained_variance(returns - torch.tensor([[0.5, -0.5, 9.0]]), returns, mask) == pytest.approx(0.75)
    assert explained_variance(torch.zeros(1, 3), returns, mask) == pytest.approx(0.0)


# --------------------------------------------------------------------------- GRPO with a reward model


def test_grpo_rm_raises_the_reward_models_score(tiny_model, tiny_tokenizer, tmp_path):
    before = weights(tiny_model)
    logged, log = collect()
    cfg = GRPORMConfig(steps=10, prompts_per_step=4, group_size=8, max_new_tokens=8, lr=1e-2, beta=0.0,
                       minibatch_size=32, ckpt_every=100,
                       rewards=[RewardItem(name="exact_int", weight=0.0), RewardItem(name="reward_model")])
    out = run_grpo_rm(tiny_model, tiny_tokenizer, PROMPTS, cfg, tmp_path, seed=0, reward_fn=digit_share, log=log)
    assert not same_weights(before, weights(tiny_model))
    assert mean(logged, "reward/reward_model", [8, 9, 10]) > mean(logged, "reward/reward_model", [1, 2, 3]) + 0.15
    assert "reward/exact_int" in logged[1] and logged[1]["reward/failures/reward_model"] == 0
    assert out.tokens_generated == sum(logged[s]["tokens"] for s in logged)


# --------------------------------------------------------------------------- TRPO


def test_trpo_steps_improve_the_surrogate_inside_the_trust_region(tiny_model, tiny_tokenizer, tmp_path):
    before = weights(tiny_model)
    logged, log = collect()
    cfg = TRPOConfig(steps=10, prompts_per_step=4, samples_per_prompt=8, max_new_tokens=8, max_kl=0.05,
                     ckpt_every=100)
    out = run_trpo(tiny_model, tiny_tokenizer, PROMPTS, cfg, tmp_path, seed=0, reward_fn=digit_share, log=log)
    assert not same_weights(before, weights(tiny_model)) and out.updates == 10
    for s in range(1, 11):
        assert logged[s]["trpo/accepted"] == 1.0
        assert 0 < logged[s]["trpo/kl"] <= cfg.max_kl and logged[s]["trpo/improvement"] > 0
    assert mean(logged, "reward/mean", [8, 9, 10]) > mean(logged, "reward/mean", [1, 2, 3]) + 0.05
    assert abs(logged[1]["kl"]) < 1e-6 and logged[10]["kl"] > 0, "KL to the reference grows from 0"


def test_trpo_resumes_to_the_same_weights(tiny_model, tiny_tokenizer, tmp_path):
    cfg = TRPOConfig(steps=3, prompts_per_step=2, samples_per_prompt=4, max_new_tokens=6, ckpt_every=100)
    straight = copy.deepcopy(tiny_model)
    run_trpo(straight, tiny_tokenizer, PROMPTS, cfg, tmp_path / "a", seed=1, reward_fn=digit_share)
    run_trpo(copy.deepcopy(tiny_model), tiny_tokenizer, PROMPTS, cfg, tmp_path / "b", seed=1, reward_fn=digit_share,
             stop_after=1)
    restarted = copy.deepcopy(tiny_model)
    assert run_trpo(restarted, tiny_tokenizer, PROMPTS, cfg, tmp_path / "b", seed=1,
                    reward_fn=digit_share).resumed_from == 1
    assert same_weights(weights(straight), weights(restarted))
