"""OREO: offline policy and value learning from verified and failed trajectories (Wang et al.
2024, "Offline Reinforcement Learning for LLM Multi-Step Reasoning").

Rows are trajectories ``{"prompt", "completion", "reward"}`` (the stage samples the policy
and scores each completion with the verifier / reward model). Each optimizer step takes
`grad_accum` micro-batches of `batch_size` trajectories from a seeded per-epoch shuffle and
minimises, with one forward of the policy, the reference and the value model each:

    L = L_pi + alpha * KL(pi || pi_ref) + L_V

(logged as ``bellman_loss``: at the current parameters L_pi and L_V are the same number, the
mean squared soft-Bellman residual; their stop-gradients send one to the policy and the
other to the value model; plus ``kl``)

* L_V and L_pi are the soft-Bellman-consistency losses of `components.algorithms.oreo`
  (``oreo_value_loss`` / ``oreo_policy_loss``; their stop-gradients make each one train only
  its own model), over tokens (`mode="token"`) or reasoning steps (`mode="step"`: steps as
  `components.data.steps.split_steps` cuts the completion; the final step runs to the
  response's last token, end-of-turn included);
* the regulariser the paper adds to the policy objective, here the exact per-token reverse
  KL over the vocabulary on the dataset's states (`distill_loss(..., "reverse-kl")`),
  aggregated like the other two terms.

Choices and departures:
* The reference is `reference` if given, else the frozen initial policy (a peft policy's
  base, adapters off); its logits are recomputed per micro-batch (no-grad) rather than
  cached, because the KL term needs whole distributions, too large to keep for a dataset.
* The value model (`critic`; default: the policy's backbone with a zero head) is a plain
  `AutoModelForTokenClassification`; `value_model.save_value_model` writes it for
  step-level search at test time (value of a state = head output at the prefix's last token).
* Policy and value model are two parameter groups of one Trainer (own learning rates, own
  clipping); the paper trains them jointly on the same batches as well.
"""
from __future__ import annotations

from pathlib import Path

import torch

from components.algorithms import distill_loss, masked_mean, oreo_policy_loss, oreo_value_loss, token_logprobs
from components.data.steps import step_ends
from components.training.alignment.base import AlignmentResult, check_rows, result
from components.training.alignment.sequences import EncodedRows, encode_rows, micro_batches
from components.training.alignment.value_model import completion_values, value_model_from
from components.training.configs import OREOConfig
from components.training.grpo import frozen_reference
from components.training.loop import Log, Progress, Trainer, no_log, no_progress
from components.training.rollout_batch import RolloutBatch, completion_logits

TRAJECTORY_COLUMNS = {"prompt": str, "completion": str, "reward": float}

def run_oreo(policy, tokenizer, data: list[dict], cfg: OREOConfig, ckpt_dir: str | Path, seed: int, *,
             reference=None, reward_fn=None, critic=None, replay=None, log: Log = no_log, progress: Progress = no_progress,
             stop_after: int | None = None) -> AlignmentResult:
    """Train `policy` and its value model with OREO; resumable (reward_fn: unused).
    The result's `critic` is the trained value model."""
    check_rows(data, TRAJECTORY_COLUMNS, "OREO")
    device = next(policy.parameters()).device
    rows = encode_trajectories(tokenizer, data, cfg)
    rewards = torch.tensor([float(r["reward"]) for r in data], device=device)
    reference = frozen_reference(policy, reference, 1.0)  # before resuming: the initial policy
    critic = critic if critic is not None else value_model_from(policy)
    trainer = Trainer({"policy": policy, "critic": critic}, cfg, ckpt_dir, log=log, progress=progress,
                      lrs={"critic": cfg.critic_lr}, require_update=True, what="OREO")

    def iteration(it: int) -> dict:
        micro = micro_batches(len(data), cfg.batch_size, cfg.grad_accum, seed, it)
        return trainer.step([lambda idx=idx: oreo_loss(policy, critic, reference, rows.batch(idx, device),
                                                       rewards[idx.to(device)], cfg) for idx in micro])

    return result(trainer.run(iteration, stop_after=stop_after), critic=critic)


def encode_trajectories(tokenizer, rows: list[dict], cfg: OREOConfig) -> EncodedRows:
    """Encoded trajectories with the marks their actions need (`ACTION_MARKS[cfg.mode]`)."""
    encoded = encode_rows(tokenizer, rows, "completion", cfg.max_length, cfg.system_prompt, "OREO")
    encoded.marks.update(ACTION_MARKS[cfg.mode](tokenizer, rows, encoded, cfg))
    return encoded


def token_marks(tokenizer, rows: list[dict], encoded: EncodedRows, cfg: OREOConfig) -> dict:
    """Every token is an action: nothing to mark."""
    return {}


def step_marks(tokenizer, rows: list[dict], encoded: EncodedRows, cfg: OREOConfig) -> dict:
    """``step_end``: the last response token of each reasoning step."""
    return {"step_end": [step_end_tokens(tokenizer, row, len(encoded.responses[i]), cfg)
                         for i, row in enumerate(rows)]}


ACTION_MARKS = {"token": token_marks, "step": step_marks}


def step_end_tokens(tokenizer, row: dict, n_tokens: int, cfg: OREOConfig) -> list[int]:
    """Response-token positions that close each reasoning step (the last one: the final token)."""
    messages = [{"role": "system", "content": cfg.system_prompt}] if cfg.system_prompt else []
    messages.append({"role": "user", "content": row["prompt"]})
    head = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(messages + [{"role": "assistant", "content": row["completion"]}],
                                         tokenize=False)
    suffix = full[len(head):]
    at = suffix.find(row["completion"])
    if at < 0:
        raise ValueError("OREO: the chat template does not render the completion verbatim; use mode='token'")
    offsets = tokenizer(suffix, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"][:n_tokens]
    positions = []
    for end in step_ends(row["completion"], cfg.step_sep)[:-1]:
        pos = next((t for t, (_, stop) in enumerate(offsets) if stop >= at + end), None)
        if pos is not None and pos < n_tokens - 1 and (not positions or pos > positions[-1]):
            positions.append(pos)
    return positions + [n_tokens - 1]


def oreo_loss(policy, critic, reference, mb: RolloutBatch, rewards: torch.Tensor, cfg: OREOConfig):
    """L_pi + alpha * KL(pi || pi_ref) + L_V on one micro-batch."""
    s = mb.start
    mask = mb.completion_mask[:, s:]
    tokens = mb.input_ids[:, s:]
    logits = completion_logits(policy, mb)
    logp = token_logprobs(logits, tokens)
    ref_logits = reference_logits(policy, reference, mb)
    ref_logp = token_logprobs(ref_logits, tokens)
    values = completion_values(critic, mb)
    step_end = mb.token_fields["step_end"][:, s:] if "step_end" in mb.token_fields else None
    common = dict(mode=cfg.mode, step_end_mask=step_end, loss_agg=cfg.loss_agg)
    v_loss = oreo_value_loss(values, logp, ref_logp, rewards, mask, cfg.beta, **common)
    p_loss = oreo_policy_loss(logp, ref_logp, values, rewards, mask, cfg.beta, **common)
    kl = distill_loss(logits, ref_logits, mask, "reverse-kl", loss_agg=cfg.loss_agg)
    # L_pi and L_V have the same VALUE (one residual); they differ in which model they train
    return p_loss + cfg.alpha * kl + v_loss, {
        "bellman_loss": v_loss.detach(), "kl": kl.detach(), "values/mean": masked_mean(values.detach(), mask),
        "log_ratio/mean": masked_mean((logp - ref_logp).detach(), mask)}


def reference_logits(policy, reference, mb: RolloutBatch) -> torch.Tensor:
    """The reference's logits on the completion region (no grad; usable inside a graph)."""
    with torch.no_grad():
        if reference is not None:
            return completion_logits(reference, mb)
        with policy.disable_adapter():
            return completion_logits(policy, mb)
