"""GRPO with a reward model: the second RL stage of DeepSeek-R1 (Guo et al. 2025, §2.3.4),
where rule rewards keep the reasoning right and a reward model scores the preference.

This is `run_grpo` itself, with the reward model injected as the reward named
``reward_model`` (`RewardCombiner`'s injected rewards): the recipe's `rewards` list weights it
against the rule rewards (default: exact_int 1.0, format 0.2, reward_model 1.0), and a
reward model that raises or times out zeroes its own scores and is counted, like any reward.

Score normalisation: none beyond GRPO's own. The group-relative advantage standardises the
TOTAL reward within each prompt's group, so any offset of the reward model (a Bradley-Terry
model is only defined up to one) cancels, and a common scale of all rewards cancels too;
what remains is the reward model's scale RELATIVE to the rule rewards, which its weight sets.
A Bradley-Terry score is a log-odds of preference, so weight 1 makes a 1-logit preference
worth as much as a correct answer. Whitening the reward model's scores per batch would also
remove the per-batch spread a better batch earns, and is not done.
"""
from __future__ import annotations

from pathlib import Path

from pydantic import Field, model_validator

from components.config import RewardItem, RLConfig
from components.training.alignment.base import AlignmentResult, TokenCount, result
from components.training.alignment.online import REWARD_MODEL, reward_model_reward
from components.training.grpo import run_grpo
from components.training.loop import Log, Progress, no_log, no_progress


class GRPORMConfig(RLConfig):
    """GRPO (every RLConfig field) whose rewards include the injected reward model."""

    rewards: list[RewardItem] = Field(
        default_factory=lambda: [RewardItem(name="exact_int", weight=1.0), RewardItem(name="format", weight=0.2),
                                 RewardItem(name=REWARD_MODEL, weight=1.0)],
        description=f"Weighted rewards; must name '{REWARD_MODEL}'. The first one is the correctness reward "
                    "behind the logged accuracy and the pass-rate band.")
    reward_timeout_s: float = Field(60.0, gt=0, description="Per reward call; a reward model needs longer than a rule.")

    @model_validator(mode="after")
    def _names_the_reward_model(self) -> "GRPORMConfig":
        if REWARD_MODEL not in {r.name for r in self.rewards}:
            raise ValueError(f"rewards must name '{REWARD_MODEL}' (the injected reward model)")
        return self


def run_grpo_rm(policy, tokenizer, data: list[dict], cfg: GRPORMConfig, ckpt_dir: str | Path, seed: int, *,
                reference=None, reward_fn=None, critic=None, replay=None, log: Log = no_log, progress: Progress = no_progress,
                stop_after: int | None = None) -> AlignmentResult:
    """GRPO on prompt rows with rule rewards + `reward_fn` (required); resumable (critic: unused)."""
    if reward_fn is None:
        raise ValueError(f"GRPO-RM: a reward_fn (the reward model's scorer) is required for '{REWARD_MODEL}'")
    counter = TokenCount(progress)
    loop = run_grpo(policy, tokenizer, data, cfg, ckpt_dir, seed, log=log, reference=reference, progress=counter,
                    stop_after=stop_after, extra_rewards={REWARD_MODEL: reward_model_reward(reward_fn)})
    return result(loop, tokens_generated=counter.total)
