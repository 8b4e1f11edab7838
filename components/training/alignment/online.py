"""What the online methods share (PPO and TRPO; GRPO-RM runs through `run_grpo`): the
sampling settings, rewards from the injected reward model plus rule rewards, the seeded
prompt stream and rollouts.

The reward model arrives as ``reward_fn(prompts, completions) -> list[float]`` (prompts are
the rows' raw prompts, not chat-templated) and is named ``reward_model`` in the recipe's
`rewards` list, next to any registered rule reward; all of them are scored through
`RewardCombiner`, so a scorer that raises, times out or returns junk only zeroes its own
scores and is counted in ``reward/failures/<name>``; training goes on.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

from components.config import RewardItem
from components.generation import Rollout, SamplingParams
from components.rewards import RewardCombiner, RewardFn, RewardResult
from components.seeds import derive_seed
from components.training.alignment.base import check_rows
from components.training.configs import REWARD_MODEL
from components.training.grpo import encode_prompts, make_rollout_engine, pick_prompts, score

RewardModelFn = Callable[[list[str], list[str]], list[float]]


def reward_model_reward(reward_fn: RewardModelFn) -> RewardFn:
    """`reward_fn(prompts, completions)` in the reward-registry signature `fn(completions, prompts, **columns)`."""
    def reward_model(completions, prompts, **_):
        return reward_fn(list(prompts), list(completions))

    return reward_model


def make_combiner(rewards: list[RewardItem], timeout_s: float, reward_fn: RewardModelFn | None,
                  what: str) -> RewardCombiner:
    """The weighted rewards of the recipe, with `reward_fn` bound to the name ``reward_model``."""
    named = {r.name for r in rewards}
    if REWARD_MODEL in named and reward_fn is None:
        raise ValueError(f"{what}: rewards name '{REWARD_MODEL}' but no reward_fn was given")
    if reward_fn is not None and REWARD_MODEL not in named:
        raise ValueError(f"{what}: a reward_fn was given but rewards do not name '{REWARD_MODEL}' "
                         f"(rewards: {sorted(named)})")
    extra = {REWARD_MODEL: reward_model_reward(reward_fn)} if reward_fn is not None else None
    return RewardCombiner.of(rewards, timeout_s, extra=extra)


@dataclass
class OnlineRun:
    """Everything an online iteration reads, built once per run."""

    policy: object
    engine: object
    combiner: RewardCombiner
    rows: list[dict]
    prompt_ids: list[list[int]]
    cfg: object
    seed: int
    pad_id: int

    @classmethod
    def build(cls, policy, tokenizer, rows, cfg, seed, reward_fn, what: str) -> "OnlineRun":
        check_rows(rows, {"prompt": str}, what)
        combiner = make_combiner(cfg.rewards, cfg.reward_timeout_s, reward_fn, what)
        engine = make_rollout_engine(cfg.rollout, policy, tokenizer, cfg.prompts_per_step * cfg.samples_per_prompt)
        return cls(policy, engine, combiner, rows, encode_prompts(tokenizer, rows, cfg.system_prompt), cfg, seed,
                   tokenizer.pad_token_id)

    @property
    def device(self):
        return next(self.policy.parameters()).device

    def close(self) -> None:
        """Stop the rollout engine's helpers (rollout.workers > 1) or drop its vLLM engine."""
        self.engine.close()


@dataclass
class Sampled:
    rollout: Rollout
    scores: RewardResult
    rows: list[dict]  # the prompt row of each picked prompt
    seconds: float


def sample_and_score(run: OnlineRun, it: int) -> Sampled:
    """Iteration `it`'s prompts (seeded stream), `samples_per_prompt` completions each, scored."""
    t0, cfg = time.perf_counter(), run.cfg
    picks = pick_prompts(len(run.rows), cfg.prompts_per_step, run.seed, it)
    params = SamplingParams(n=cfg.samples_per_prompt, temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k,
                            max_new_tokens=cfg.max_new_tokens, seed=derive_seed(run.seed, "rollout", it))
    rollout = run.engine.generate([run.prompt_ids[i] for i in picks], params)
    rows = [run.rows[i] for i in picks]
    return Sampled(rollout, score(run.combiner, rollout, rows), rows, time.perf_counter() - t0)


def reward_metrics(sampled: Sampled) -> dict:
    scores, n = sampled.scores, len(sampled.scores.total)
    metrics = {"reward/mean": sum(scores.total) / n, "tokens": sampled.rollout.num_generated_tokens,
               "completion_length": sampled.rollout.num_generated_tokens / n,
               "tokens_per_s": sampled.rollout.tokens_per_s(), "time/sample_and_score_s": sampled.seconds}
    for name, values in scores.components.items():
        metrics[f"reward/{name}"] = sum(values) / n
        metrics[f"reward/failures/{name}"] = scores.failures[name]
    return metrics
