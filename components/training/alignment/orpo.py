"""ORPO: preference optimisation without a reference model (Hong et al. 2024).

Loss per pair (`orpo_loss`, Eq. 6-8): the chosen response's mean-token NLL plus
lambda * -log sigmoid(log odds(y_w) - log odds(y_l)), with odds from the LENGTH-NORMALISED
likelihood P(y) = exp(mean_t log p(y_t)). Pairs are batched exactly as in DPO (seeded
per-epoch shuffle, chosen and rejected in one forward); no reference model is built or read.

Departure from the paper: none in the objective; the SFT term averages each chosen
response's token NLL and then the pairs (the paper's per-sequence normalisation).
"""
from __future__ import annotations

from pathlib import Path


from components.algorithms import orpo_loss
from components.training.alignment.base import AlignmentResult, check_rows, result
from components.training.alignment.dpo import PAIR_COLUMNS
from components.training.alignment.sequences import encode_pairs, micro_batches, pair_rows, sequence_logps
from components.training.configs import ORPOConfig
from components.training.loop import Log, Progress, Trainer, no_log, no_progress

def run_orpo(policy, tokenizer, data: list[dict], cfg: ORPOConfig, ckpt_dir: str | Path, seed: int, *,
             reference=None, reward_fn=None, critic=None, replay=None, log: Log = no_log, progress: Progress = no_progress,
             stop_after: int | None = None) -> AlignmentResult:
    """Train `policy` with ORPO on preference rows; resumable (reference, reward_fn, critic: unused)."""
    check_rows(data, PAIR_COLUMNS, "ORPO")
    device = next(policy.parameters()).device
    pairs = encode_pairs(tokenizer, data, cfg.max_length, cfg.system_prompt, "ORPO")
    n = len(data)
    trainer = Trainer({"policy": policy}, cfg, ckpt_dir, log=log, progress=progress, require_update=True, what="ORPO")

    def iteration(it: int) -> dict:
        micro = micro_batches(n, cfg.batch_size, cfg.grad_accum, seed, it)
        return trainer.step([lambda idx=idx: orpo_micro_loss(policy, pairs.batch(pair_rows(idx, n), device), cfg)
                             for idx in micro])

    return result(trainer.run(iteration, stop_after=stop_after))


def orpo_micro_loss(policy, batch, cfg: ORPOConfig):
    """Mean ORPO loss of a batch of pairs (chosen rows, then rejected rows)."""
    chosen, rejected = sequence_logps(policy, batch, reduce="mean").chunk(2)
    losses, ratio = orpo_loss(chosen, rejected, cfg.lam)
    return losses.mean(), {"log_odds_ratio": ratio.mean(), "nll/chosen": -chosen.detach().mean(),
                           "nll/rejected": -rejected.detach().mean(),
                           "accuracy": (ratio > 0).float().mean()}
