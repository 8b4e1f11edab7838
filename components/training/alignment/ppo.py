"""PPO for RLHF (Schulman et al. 2017; Ziegler et al. 2019; Ouyang et al. 2022, InstructGPT
§3.5): a policy, a frozen reference, a frozen reward model and a trainable critic.

One iteration, top to bottom in `ppo_iteration`:
  1. `prompts_per_step` prompts from a seeded stream, `samples_per_prompt` completions each
     from the rollout engine (seed derived from (seed, iteration));
  2. scores: the injected reward model (``reward_model`` in `rewards`) plus any rule rewards;
  3. no-grad forwards over the batch: old-policy log-probs, reference log-probs, old values;
  4. per-token rewards r_t = -kl_coef * KL_t + [t = last] * score (`kl_penalty_rewards`),
     GAE advantages and returns (`gae_advantages`), advantages whitened over the batch;
  5. `ppo_epochs` seeded shuffles of the batch cut into minibatches; each optimizer step
     minimises the clipped policy loss + the clipped value loss. Policy and critic are two
     parameter groups of one Trainer (own learning rates, own gradient clipping), so the
     usual value-loss coefficient would be a no-op under Adam and is left out.

Where this departs from the textbook:
* A fixed KL coefficient (no adaptive KL controller, Ziegler et al. §2.2) and no PPO-ptx
  pretraining term (InstructGPT Eq. 2).
* The value of the state in which token t is generated is the critic's head at t - 1 (see
  `value_model`); the value after the last token is 0 (the episode ends).
* Scores are used as the reward model gives them (its scale is the stage's choice); the
  advantages are whitened.
* Log-probs are those of softmax(logits / temperature), the distribution sampled from.
* Without a `critic`, one is built from the policy's backbone with a zero head; without a
  `reference`, the frozen initial policy serves (a peft policy's base, adapters off).
"""
from __future__ import annotations

from contextlib import closing
from pathlib import Path

import torch
import torch.nn.functional as F

from components.algorithms import (
    gae_advantages,
    kl_penalty_rewards,
    masked_mean,
    masked_var,
    ppo_policy_loss,
    value_loss,
    whiten,
)
from components.training.alignment.base import AlignmentResult, TokenCount, result
from components.training.alignment.online import OnlineRun, reward_metrics, sample_and_score
from components.training.alignment.value_model import batch_values, completion_values, value_model_from
from components.training.configs import PPOConfig
from components.training.grpo import frozen_reference, minibatch_plan, optimise, reference_logprobs
from components.training.loop import Log, Progress, Trainer, no_log, no_progress
from components.training.rollout_batch import RolloutBatch, batch_logprobs, completion_logprobs

def run_ppo(policy, tokenizer, data: list[dict], cfg: PPOConfig, ckpt_dir: str | Path, seed: int, *,
            reference=None, reward_fn=None, critic=None, replay=None, log: Log = no_log, progress: Progress = no_progress,
            stop_after: int | None = None) -> AlignmentResult:
    """Train `policy` (and `critic`) with PPO on prompt rows ``{"prompt", ...}``; resumable.
    The result's `critic` is the trained value model."""
    run = OnlineRun.build(policy, tokenizer, data, cfg, seed, reward_fn, "PPO")
    reference = frozen_reference(policy, reference, 1.0)  # before resuming: the initial policy
    critic = critic if critic is not None else value_model_from(policy)
    counter = TokenCount(progress)
    trainer = Trainer({"policy": policy, "critic": critic}, cfg, ckpt_dir, log=log, progress=counter,
                      lrs={"critic": cfg.critic_lr}, require_update=True, what="PPO")
    with closing(run):
        loop = trainer.run(lambda it: ppo_iteration(it, run, trainer, critic, reference),
                           stop_after=stop_after, after_resume=lambda: run.engine.update_weights(policy))
    return result(loop, tokens_generated=counter.total, critic=critic)


def ppo_iteration(it: int, run: OnlineRun, trainer: Trainer, critic, reference) -> dict:
    """Sample, score, shape rewards, estimate advantages, optimise; returns the metrics."""
    cfg, policy = run.cfg, run.policy
    sampled = sample_and_score(run, it)
    metrics = reward_metrics(sampled)
    n = len(sampled.rollout)
    batch = RolloutBatch.from_rollout(sampled.rollout, list(range(n)), torch.zeros(n), run.pad_id, run.device)
    metrics.update(prepare(batch, torch.tensor(sampled.scores.total), policy, critic, reference, cfg))
    plan = minibatch_plan(n, cfg, run.seed, it)
    metrics.update(optimise(trainer, batch, plan, lambda mb: ppo_loss(policy, critic, mb, cfg),
                            token_weighted=cfg.loss_agg == "token-mean"))
    run.engine.update_weights(policy)
    return metrics


def prepare(batch: RolloutBatch, scores: torch.Tensor, policy, critic, reference, cfg: PPOConfig) -> dict:
    """Fill old log-probs and the token fields (advantages, returns, old values); returns KL stats."""
    chunk, s = cfg.minibatch_size, batch.start
    batch.old_logp = batch_logprobs(policy, batch, cfg.temperature, chunk)
    ref_logp = reference_logprobs(policy, reference, batch, cfg.temperature, chunk)
    values = batch_values(critic, batch, chunk)
    mask = batch.completion_mask[:, s:]
    old, ref = batch.old_logp[:, s:], ref_logp[:, s:]
    # r_t = -kl_coef * k(logp_t, ref_logp_t) + [t = last] * score
    rewards = kl_penalty_rewards(scores.to(old.device), old, ref, mask, cfg.kl_coef, cfg.kl_estimator)
    advantages, returns = gae_advantages(rewards, values[:, s:], mask, cfg.gamma, cfg.lam)
    if cfg.whiten_advantages:
        advantages = whiten(advantages, mask)
    batch.token_fields = {"advantages": F.pad(advantages, (s, 0)), "returns": F.pad(returns, (s, 0)),
                          "values": values}
    log_ratio = torch.where(mask, old - ref, 0.0)
    return {"kl": masked_mean(log_ratio, mask), "kl_seq": log_ratio.sum(-1).mean(),
            "values/mean": masked_mean(values[:, s:], mask), "returns/mean": masked_mean(returns, mask),
            "values/explained_variance": explained_variance(values[:, s:], returns, mask)}


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """1 - Var(R - V) / Var(R) over the masked tokens of fresh rollouts, before the critic
    trains on them: 1 is a perfect critic, 0 no better than a constant. Shapes: [B, T] -> scalar."""
    var = masked_var(returns, mask)
    return 1.0 - masked_var(returns - values, mask) / var.clamp(min=1e-8)


def ppo_loss(policy, critic, mb: RolloutBatch, cfg: PPOConfig) -> tuple[torch.Tensor, dict]:
    """Clipped policy loss + clipped value loss on one micro-batch (one forward of each model)."""
    s = mb.start
    mask = mb.completion_mask[:, s:]
    field = {k: v[:, s:] for k, v in mb.token_fields.items()}
    logp, entropy = completion_logprobs(policy, mb, cfg.temperature, with_entropy=True)
    p_loss, p_stats = ppo_policy_loss(logp, mb.old_logp[:, s:], field["advantages"], mask, cfg.clip_range,
                                      loss_agg=cfg.loss_agg)
    v_loss, v_stats = value_loss(completion_values(critic, mb), field["values"], field["returns"], mask,
                                 cfg.value_clip_range, cfg.loss_agg)
    return p_loss + v_loss, {"policy_loss": p_loss.detach(), "value_loss": v_loss.detach(),
                             "entropy": masked_mean(entropy, mask), **p_stats, **v_stats}
