"""TRPO for language models: the KL-constrained natural-gradient step (Schulman et al. 2015,
Appendix C) over the policy's trainable parameters as one flat vector.

One iteration, top to bottom in `trpo_iteration`:
  1. prompts from the seeded stream, G = `samples_per_prompt` completions each, scored with
     the injected reward model plus rule rewards (as in PPO);
  2. group-relative advantages (`advantage`, default GRPO's standardised reward); groups whose
     rewards are all equal carry no signal and are dropped (if all are, no update);
  3. no-grad forwards keep pi_old's full next-token distributions on the completion tokens;
  4. `trpo_step` on theta = the trainable parameters, flattened:
        surrogate L(theta) = token-mean( exp(logp_theta - logp_old) * A )
        KL(theta)          = token-mean( sum_v p_old(v) (log p_old(v) - log p_theta(v)) )
     (the exact KL over the vocabulary, whose Hessian at theta_old is the Fisher matrix);
     conjugate gradient with Fisher-vector products (double backward) of the KL on a seeded
     `fisher_fraction` of the rows (the paper's App. C.1 subsampling), step to the trust
     region's edge, backtracking line search; the accepted vector is written into the model
     through `Trainer.update`, so checkpoints, resume and logging stay the Trainer's.

Choices and departures:
* Advantages are group-relative, not GAE with a critic: a sequence-level reward-model score
  with G samples per prompt gives a baseline without a second model, and keeps the trust
  region on the policy alone (a critic would need its own optimiser and step).
* Forwards at theta go through `torch.func.functional_call` with the flat vector's views as
  the trainable parameters (frozen ones stay the module's), under the MATH attention kernel
  because the fused CPU/flash kernels have no double backward. The whole kept batch is one
  batch: memory grows with rows x completion tokens x vocabulary (pi_old's distributions)
  plus a double-backward graph; LoRA keeps theta small.
* The AdamW optimizer the Trainer builds is never stepped (its learning rate is 0).
* A reference model is used only to log KL(pi || pi_ref); it is not in the objective.
"""
from __future__ import annotations

import math
from contextlib import closing
from pathlib import Path
from types import SimpleNamespace

import torch
from torch.func import functional_call
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.utils import parameters_to_vector, vector_to_parameters

from components.algorithms import get_advantage_estimator, masked_mean, trpo_step, zero_variance_groups
from components.seeds import derive_seed
from components.training.alignment.base import AlignmentResult, TokenCount, result
from components.training.alignment.online import OnlineRun, reward_metrics, sample_and_score
from components.training.configs import TRPOConfig
from components.training.grpo import frozen_reference, reference_logprobs
from components.training.loop import Log, Progress, Trainer, no_log, no_progress
from components.training.rollout_batch import RolloutBatch, batch_logprobs, completion_logits

def run_trpo(policy, tokenizer, data: list[dict], cfg: TRPOConfig, ckpt_dir: str | Path, seed: int, *,
             reference=None, reward_fn=None, critic=None, replay=None, log: Log = no_log, progress: Progress = no_progress,
             stop_after: int | None = None) -> AlignmentResult:
    """Train `policy` with TRPO on prompt rows; resumable (critic: unused)."""
    run = OnlineRun.build(policy, tokenizer, data, cfg, seed, reward_fn, "TRPO")
    reference = frozen_reference(policy, reference, 1.0)  # before resuming: the initial policy
    counter = TokenCount(progress)
    trainer = Trainer({"policy": policy}, optimizer_free(cfg), ckpt_dir, log=log, progress=counter,
                      require_update=True, what="TRPO")
    with closing(run):
        loop = trainer.run(lambda it: trpo_iteration(it, run, trainer, reference), stop_after=stop_after,
                           after_resume=lambda: run.engine.update_weights(policy))
    return result(loop, tokens_generated=counter.total)


def optimizer_free(cfg: TRPOConfig) -> SimpleNamespace:
    """The Trainer's settings for a method that writes its parameters through `Trainer.update`:
    the loop fields of `cfg`; the AdamW fields are fixed (lr 0) because AdamW never steps."""
    return SimpleNamespace(steps=cfg.steps, ckpt_every=cfg.ckpt_every, log_every=cfg.log_every, lr=0.0,
                           weight_decay=0.0, warmup_steps=0, schedule="constant", max_grad_norm=math.inf)


def trpo_iteration(it: int, run: OnlineRun, trainer: Trainer, reference) -> dict:
    cfg, policy = run.cfg, run.policy
    sampled = sample_and_score(run, it)
    metrics = reward_metrics(sampled)
    rewards = torch.tensor(sampled.scores.total, dtype=torch.float32)
    advantages = get_advantage_estimator(cfg.advantage)(rewards, cfg.samples_per_prompt)
    keep_group = ~zero_variance_groups(rewards, cfg.samples_per_prompt)
    keep = keep_group.repeat_interleave(cfg.samples_per_prompt).nonzero().flatten().tolist()
    metrics["groups_kept_frac"] = float(keep_group.float().mean())
    if not keep:  # nothing to learn from this batch; the iteration still counts
        return metrics
    batch = RolloutBatch.from_rollout(sampled.rollout, keep, advantages[keep], run.pad_id, run.device)
    metrics.update(kl_to_reference(policy, reference, batch, cfg))
    fisher_rows = fisher_subsample(len(batch), cfg.fisher_fraction, derive_seed(run.seed, "fisher", it))
    metrics.update(trainer.update(lambda: trpo_update(policy, batch, fisher_rows, cfg)))
    run.engine.update_weights(policy)
    return metrics


def kl_to_reference(policy, reference, batch: RolloutBatch, cfg) -> dict:
    """Token-mean and per-sequence k1 estimates of KL(pi || pi_ref) on the sampled batch."""
    logp = batch_logprobs(policy, batch, cfg.temperature, len(batch))
    ref = reference_logprobs(policy, reference, batch, cfg.temperature, len(batch))
    log_ratio = torch.where(batch.completion_mask, logp - ref, 0.0)
    return {"kl": masked_mean(log_ratio, batch.completion_mask), "kl_seq": log_ratio.sum(-1).mean()}


def fisher_subsample(n: int, fraction: float, seed: int) -> torch.Tensor:
    """ceil(fraction * n) row indices, a seeded random choice (all rows when fraction == 1)."""
    k = max(1, math.ceil(fraction * n))
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:k].sort().values


def trpo_update(policy, batch: RolloutBatch, fisher_rows: torch.Tensor, cfg: TRPOConfig) -> tuple[bool, dict]:
    """One `trpo_step` over the trainable parameters; writes the accepted vector into `policy`."""
    named = [(n, p) for n, p in policy.named_parameters() if p.requires_grad]
    params = [p for _, p in named]
    with sdpa_kernel([SDPBackend.MATH]):
        surrogate, kl = batch_objectives(policy, named, batch, cfg.temperature)
        fisher_kl = kl if len(fisher_rows) == len(batch) else batch_objectives(
            policy, named, batch.select(fisher_rows), cfg.temperature)[1]
        flat = parameters_to_vector(params).detach()
        new, info = trpo_step(flat, surrogate, kl, cfg.max_kl, cfg.cg_iters, cfg.backtrack_ratio,
                              cfg.max_backtracks, cfg.damping, fisher_kl_fn=fisher_kl)
    if info.accepted:
        vector_to_parameters(new, params)
    return info.accepted, {"trpo/accepted": float(info.accepted), "trpo/kl": info.kl,
                           "trpo/improvement": info.improvement, "trpo/backtracks": info.n_backtracks}


def batch_objectives(policy, named, batch: RolloutBatch, temperature: float):
    """(surrogate(theta), kl(theta)) on `batch`, with pi_old = the policy now (one no-grad forward)."""
    mask = batch.completion_mask[:, batch.start:]
    adv = batch.advantages[:, None]
    tokens = batch.input_ids[:, batch.start:, None]
    old_logq = torch.log_softmax(completion_logits(policy, batch, temperature).float(), -1)
    old_logp = old_logq.gather(-1, tokens).squeeze(-1)
    logq_at = _memo(lambda theta: torch.log_softmax(
        completion_logits(_AtParams(policy, named, theta), batch, temperature).float(), -1))

    def surrogate(theta):
        # L = token-mean( pi_theta(a|s) / pi_old(a|s) * A )
        ratio = torch.exp(logq_at(theta).gather(-1, tokens).squeeze(-1) - old_logp)
        return masked_mean(ratio * adv, mask)

    def kl(theta):
        # KL(pi_old || pi_theta) per token, exact over the vocabulary, token mean
        return masked_mean((old_logq.exp() * (old_logq - logq_at(theta))).sum(-1), mask)

    return surrogate, kl


class _AtParams:
    """`module` called with the trainable parameters replaced by views of the flat vector `theta`."""

    def __init__(self, module, named, theta):
        self.module, views, offset = module, {}, 0
        for name, p in named:
            views[name] = theta[offset : offset + p.numel()].view_as(p)
            offset += p.numel()
        self.views = views

    def __call__(self, **kwargs):
        return functional_call(self.module, self.views, args=(), kwargs=kwargs)


def _memo(fn):
    """fn(theta), recomputed only when called with another tensor object (the line search asks
    the surrogate and the KL of the same candidate: one forward serves both)."""
    last: dict = {}

    def call(theta):
        if last.get("theta") is not theta:
            last["theta"], last["out"] = theta, fn(theta)
        return last["out"]

    return call
