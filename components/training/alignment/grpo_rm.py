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

from components.training.alignment.base import AlignmentResult, TokenCount, result
from components.training.alignment.online import reward_model_reward
from components.training.configs import REWARD_MODEL, GRPORMConfig
from components.training.grpo import run_grpo
from components.training.loop import Log, Progress, no_log, no_progress

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
