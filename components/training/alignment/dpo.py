"""DPO: offline preference optimisation against a frozen reference (Rafailov et al. 2023).

Each optimizer step takes `grad_accum` micro-batches of `batch_size` pairs from a seeded
per-epoch shuffle of the pairs (a pure function of (seed, iteration), so a resumed run sees
exactly the pairs an unbroken one would). A micro-batch runs the policy over its chosen and
rejected responses in one forward and applies the registered DPO loss (`loss_type`:
sigmoid, ipo, hinge) to the summed response log-probs; IPO to their per-token means (its
target margin 1/(2 beta) is on the scale of one token's log-ratio, as Azar et al. and TRL use it).

Where this departs from the paper's reference implementation:
* The reference log-probs of every pair are computed ONCE before training (no-grad, batched
  by length) and kept: the reference is frozen, so recomputing them each step would only
  repeat the same numbers. The reference is `reference` if given, else a peft policy's base
  with its adapters off, else the policy itself before its first update (no copy is made).
* No SFT on the chosen responses first (the paper's "SFT on preferred completions" when the
  reference did not generate the data): the stage starts from the reasoning policy.
* Optional NLL of the chosen responses (`nll_weight`, RPO: Pang et al. 2024, Eq. 3 — per-token
  mean, added to the DPO loss). DPO only widens a margin, and it can do so by making both replies
  less likely; when the rejected replies are the policy's own good reasoning in another style,
  that drags the reasoning down with them. The NLL term keeps the chosen replies likely.
* Optional replay (`replay_weight`, after InstructGPT's PPO-ptx, Ouyang et al. 2022 §3.5): each
  step also takes `batch_size` rows of `replay` (``{"prompt", "completion"}``: the stage passes
  the curated worked solutions) and adds their per-token NLL. A tiny reasoner forgets its
  arithmetic under any push on its own replies; rehearsing it keeps what the preference data
  does not ask to change.
"""
from __future__ import annotations

from pathlib import Path

import torch

from components.algorithms import dpo_loss
from components.training.alignment.base import AlignmentResult, check_rows, result
from components.training.alignment.sequences import (
    encode_pairs,
    encode_rows,
    initial_sequence_logps,
    micro_batches,
    pair_rows,
    sequence_logps,
    sequence_logps_both,
)
from components.training.configs import DPOConfig
from components.training.loop import Log, Progress, Trainer, no_log, no_progress

PAIR_COLUMNS = {"prompt": str, "chosen": str, "rejected": str}

def run_dpo(policy, tokenizer, data: list[dict], cfg: DPOConfig, ckpt_dir: str | Path, seed: int, *,
            reference=None, reward_fn=None, critic=None, replay=None, log: Log = no_log,
            progress: Progress = no_progress, stop_after: int | None = None) -> AlignmentResult:
    """Train `policy` with DPO on preference rows; resumable from `ckpt_dir` (reward_fn, critic: unused;
    `replay`: {"prompt", "completion"} rows for the replay term)."""
    check_rows(data, PAIR_COLUMNS, "DPO")
    if cfg.replay_weight and not replay:
        raise ValueError("DPO: replay_weight > 0 needs replay rows {'prompt', 'completion'}")
    device = next(policy.parameters()).device
    pairs = encode_pairs(tokenizer, data, cfg.max_length, cfg.system_prompt, "DPO")
    rehearse = (encode_rows(tokenizer, replay, "completion", cfg.max_length, cfg.system_prompt, "DPO replay")
                if cfg.replay_weight else None)
    ref = initial_sequence_logps(policy, reference, pairs, 2 * cfg.batch_size, device)  # [2N], once
    if cfg.loss_type == "ipo":  # per-token means, as the policy's below
        ref = ref / torch.tensor([len(r) for r in pairs.responses], dtype=ref.dtype, device=ref.device)
    n = len(data)
    trainer = Trainer({"policy": policy}, cfg, ckpt_dir, log=log, progress=progress, require_update=True, what="DPO")

    def micro_loss(idx, replay_idx):
        loss, metrics = dpo_micro_loss(policy, pairs.batch(pair_rows(idx, n), device), ref[pair_rows(idx, n).to(device)],
                                       cfg)
        if rehearse is not None:
            nll = -sequence_logps(policy, rehearse.batch(replay_idx, device), "mean").mean()
            loss, metrics = loss + cfg.replay_weight * nll, {**metrics, "nll/replay": nll.detach()}
        return loss, metrics

    def iteration(it: int) -> dict:
        micro = micro_batches(n, cfg.batch_size, cfg.grad_accum, seed, it)
        replayed = micro_batches(len(rehearse), cfg.batch_size, cfg.grad_accum, seed + 1, it) if rehearse else micro
        return trainer.step([lambda idx=idx, r=r: micro_loss(idx, r) for idx, r in zip(micro, replayed)])

    return result(trainer.run(iteration, stop_after=stop_after))


def dpo_micro_loss(policy, batch, ref, cfg: DPOConfig):
    """Mean DPO loss of a batch of pairs (chosen rows, then rejected rows; `ref`: their reference log-probs)."""
    sums, means = sequence_logps_both(policy, batch)
    chosen, rejected = (means if cfg.loss_type == "ipo" else sums).chunk(2)
    ref_chosen, ref_rejected = ref.chunk(2)
    losses, r_chosen, r_rejected = dpo_loss(chosen, rejected, ref_chosen, ref_rejected, cfg.beta,
                                            cfg.label_smoothing, cfg.loss_type)
    nll = -means.chunk(2)[0].mean()
    return losses.mean() + cfg.nll_weight * nll, {"nll/chosen": nll.detach(),"reward/chosen": r_chosen.mean(), "reward/rejected": r_rejected.mean(),
                           "reward/margin": (r_chosen - r_rejected).mean(),
                           "reward/accuracy": (r_chosen > r_rejected).float().mean(),
                           "logp/chosen": chosen.detach().mean(), "logp/rejected": rejected.detach().mean()}
