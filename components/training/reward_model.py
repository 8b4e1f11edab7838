"""Outcome reward model training: Bradley–Terry on pairs or Plackett–Luce on rankings (seed §2.1).

Rows are preference pairs ``{"prompt", "chosen", "rejected"}`` or rankings ``{"prompt",
"responses"}`` (best first); both become lists of responses, best first. A micro-batch scores
every response of its lists in ONE forward of the sequence-classification model (the score
convention is `components.modeling.reward_models`), and the recipe's `objective` (a registry
entry) turns the [B, K] scores into a loss. Training runs through `Trainer` (resumable); the
model is evaluated on held-out lists: pairwise accuracy (the share of correctly ordered pairs,
ties 1/2) and Kendall τ. `quality_gate` is the pure pass/fail a stage applies to the result.

Where this departs from the textbook recipe (Ouyang et al. 2022, §3.5; Zhu et al. 2023):
* Bradley–Terry on a ranking of K > 2 uses all K(K-1)/2 pairs of the list as one batch
  element (InstructGPT Eq. 1); Plackett–Luce on a pair is exactly Bradley–Terry.
* The optional margin (Touvron et al. 2023, Llama 2 Eq. 2) is the recipe's constant unless a
  row carries its own numeric ``margin`` column; Plackett–Luce has none.
* Lists with a response longer than `max_length` tokens are dropped (and counted), not
  truncated: a truncated text's score is not the score the convention defines.
* Without an explicit held-out set, `heldout_fraction` of the distinct prompts (seeded) is held
  out with all their rows, so no prompt is both trained and evaluated on.
* A new score head starts from HF's random init (seeded by `load_reward_model`), not zero.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Mapping

import torch
from torch import Tensor

from components.algorithms import (
    bradley_terry_ranking_loss, kendall_tau, pairwise_accuracy, plackett_luce_loss, ranking_accuracy)
from components.modeling.reward_models import outcome_scores
from components.training.configs import RewardModelConfig
from components.training.grpo import pick_prompts
from components.training.heldout import GateResult, prefixed, quality_gate, split_heldout
from components.training.loop import Log, LoopResult, Progress, Trainer, no_log, no_progress
from components.training.preference_lists import EncodedList, encode_lists, list_scores, parse_rows, to_lists

ListLoss = Callable[[Tensor, Tensor, Tensor], Tensor]  # (scores [B, K], mask [B, K], margin [B]) -> [B]


def _bradley_terry(scores: Tensor, mask: Tensor, margin: Tensor) -> Tensor:
    return bradley_terry_ranking_loss(scores, mask, margin)


def _plackett_luce(scores: Tensor, mask: Tensor, margin: Tensor) -> Tensor:
    if bool((margin != 0).any()):
        raise ValueError("margin: plackett_luce has no margin; drop the rows' margin column or use bradley_terry")
    return plackett_luce_loss(scores, mask)


OBJECTIVES: dict[str, ListLoss] = {"bradley_terry": _bradley_terry, "plackett_luce": _plackett_luce}


def get_objective(name: str) -> ListLoss:
    try:
        return OBJECTIVES[name]
    except KeyError:
        raise ValueError(f"unknown reward-model objective {name!r}; valid names: {', '.join(sorted(OBJECTIVES))}"
                         ) from None

# --------------------------------------------------------------------------- loss and metrics


def list_loss(model, lists: list[EncodedList], objective: ListLoss, pad_id: int) -> tuple[Tensor, dict]:
    """Mean objective over `lists` (one micro-batch) and detached batch metrics."""
    scores, mask = list_scores(model, lists, pad_id)
    margin = torch.tensor([lst.margin for lst in lists], dtype=scores.dtype, device=scores.device)
    loss = objective(scores, mask, margin).mean()
    detached = scores.detach()
    return loss, {"accuracy": ranking_accuracy(detached, mask), "score/mean": detached[mask].mean()}


def evaluate_lists(model, lists: list[EncodedList], objective: str, batch_size: int = 128) -> dict[str, float]:
    """Held-out metrics: accuracy (pairwise on pairs, pooled over all pairs of rankings), Kendall τ, loss."""
    flat = outcome_scores(model, [s for lst in lists for s in lst.seqs], batch_size)
    sizes = [len(lst.seqs) for lst in lists]
    scores, mask = to_lists(torch.tensor(flat, dtype=torch.float64), sizes)
    margin = torch.tensor([lst.margin for lst in lists], dtype=torch.float64)
    accuracy = (pairwise_accuracy(scores[:, 0], scores[:, 1]) if max(sizes) == 2 else ranking_accuracy(scores, mask))
    return {"accuracy": float(accuracy), "kendall_tau": float(kendall_tau(scores, mask)),
            "loss": float(get_objective(objective)(scores, mask, margin).mean()),
            "score_gap": float((scores[:, 0] - scores.masked_fill(~mask, math.inf).min(dim=1).values).mean()),
            "lists": float(len(lists))}


# --------------------------------------------------------------------------- training


@dataclass
class RewardModelResult(LoopResult):
    heldout: dict = field(default_factory=dict)  # evaluate_lists() of the final model ({} if stopped early)
    train_lists: int = 0
    heldout_lists: int = 0
    dropped_overlong: int = 0


def run_reward_model(model, tokenizer, rows: list[dict], cfg: RewardModelConfig, ckpt_dir, seed: int, *,
                     heldout_rows: list[dict] | None = None, log: Log = no_log, progress: Progress = no_progress,
                     stop_after: int | None = None) -> RewardModelResult:
    """Train `model` (from `load_reward_model(..., "outcome")`) on pair/ranking rows; resumable from `ckpt_dir`.

    Without `heldout_rows`, `cfg.heldout_fraction` of the prompts is held out. Logs batch
    metrics per step and ``heldout/*`` metrics every `eval_every` steps and at the end.
    """
    parsed = parse_rows(rows, cfg.margin, "rows")
    train_rows, held = ((parsed, parse_rows(heldout_rows, cfg.margin, "heldout_rows")) if heldout_rows is not None
                        else split_heldout(parsed, cfg.heldout_fraction, seed))
    train, dropped = encode_lists(tokenizer, train_rows, cfg.max_length, cfg.system_prompt, "reward model training")
    heldout, dropped_held = encode_lists(tokenizer, held, cfg.max_length, cfg.system_prompt, "reward model held-out")
    log({"data/train_lists": len(train), "data/heldout_lists": len(heldout),
         "data/dropped_overlong": dropped + dropped_held}, 0)
    objective, pad = get_objective(cfg.objective), model.config.pad_token_id
    trainer = Trainer({"reward_model": model}, cfg, ckpt_dir, log=log, progress=progress, what="reward model")
    per_step = cfg.batch_size * cfg.grad_accum

    def iteration(it: int) -> dict:
        picks = pick_prompts(len(train), per_step, seed, it)
        micro = [[train[j] for j in picks[m : m + cfg.batch_size]] for m in range(0, per_step, cfg.batch_size)]
        metrics = trainer.step([lambda lists=lists: list_loss(model, lists, objective, pad) for lists in micro])
        if cfg.eval_every and it % cfg.eval_every == 0 and it != cfg.steps:
            metrics.update(prefixed(evaluate_lists(model, heldout, cfg.objective, cfg.eval_batch_size)))
        return metrics

    result = trainer.run(iteration, stop_after=stop_after)
    final = {}
    if stop_after is None or stop_after >= cfg.steps:
        final = evaluate_lists(model, heldout, cfg.objective, cfg.eval_batch_size)
        log(prefixed(final), cfg.steps)
    return RewardModelResult(**vars(result), heldout=final, train_lists=len(train), heldout_lists=len(heldout),
                             dropped_overlong=dropped + dropped_held)


def reward_model_gate(heldout: Mapping[str, float], cfg: RewardModelConfig,
                      threshold_name: str = "reward_model.min_accuracy") -> GateResult:
    """The stage's gate: held-out accuracy (`RewardModelResult.heldout`) against `cfg.min_accuracy`."""
    return quality_gate(prefixed(heldout), "heldout/accuracy", cfg.min_accuracy, threshold_name)
