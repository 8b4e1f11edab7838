"""The six alignment methods behind one signature, chosen by name (`method:` in the recipe).

    method = get_alignment_method("dpo")
    cfg = method.config.model_validate(section)              # the method's own pydantic Section
    out = method.run(policy, tokenizer, rows, cfg, ckpt_dir, seed,
                     reference=ref, reward_fn=rm_score, critic=None, replay=None, log=log, progress=progress)

Every `run` trains through `components.training.loop.Trainer` (resumable to identical
weights from `ckpt_dir`; an unchanged model raises `NoUpdateError`) and returns an
`AlignmentResult`. `data` holds canonical rows of the method's `data` kind:

    preference   {"prompt", "chosen", "rejected"}              dpo, orpo
    prompts      {"prompt", ...} (e.g. "answer" for rule rewards)  ppo, grpo_rm, trpo
    trajectory   {"prompt", "completion", "reward"}             oreo

`inputs` lists the keyword inputs a method reads (others are ignored):
``reference`` (frozen model; default: the initial policy, or a peft policy's base),
``reward_fn`` (``reward_fn(prompts, completions) -> list[float]``, the reward model's score),
``critic`` (a value model, see `value_model`; default: built from the policy),
``replay`` (``{"prompt", "completion"}`` rows a method rehearses; DPO's `replay_weight`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from components.config import Section
from components.training.alignment.base import AlignmentResult
from components.training.alignment.dpo import DPOConfig, run_dpo
from components.training.alignment.grpo_rm import GRPORMConfig, run_grpo_rm
from components.training.alignment.oreo import OREOConfig, run_oreo
from components.training.alignment.orpo import ORPOConfig, run_orpo
from components.training.alignment.ppo import PPOConfig, run_ppo
from components.training.alignment.trpo import TRPOConfig, run_trpo


@dataclass(frozen=True)
class AlignmentMethod:
    name: str
    config: type[Section]
    run: Callable[..., AlignmentResult]
    data: str  # "preference" | "prompts" | "trajectory"
    inputs: frozenset[str]  # keyword inputs the method reads: reference, reward_fn, critic, replay
    online: bool  # samples from the policy while training


ALIGNMENT_METHODS: dict[str, AlignmentMethod] = {
    m.name: m for m in (
        AlignmentMethod("dpo", DPOConfig, run_dpo, "preference", frozenset({"reference", "replay"}), False),
        AlignmentMethod("orpo", ORPOConfig, run_orpo, "preference", frozenset(), False),
        AlignmentMethod("ppo", PPOConfig, run_ppo, "prompts", frozenset({"reference", "reward_fn", "critic"}), True),
        AlignmentMethod("grpo_rm", GRPORMConfig, run_grpo_rm, "prompts", frozenset({"reference", "reward_fn"}), True),
        AlignmentMethod("trpo", TRPOConfig, run_trpo, "prompts", frozenset({"reference", "reward_fn"}), True),
        AlignmentMethod("oreo", OREOConfig, run_oreo, "trajectory", frozenset({"reference", "critic"}), False),
    )
}


def get_alignment_method(name: str) -> AlignmentMethod:
    """The registered method `name`; a ValueError lists the valid names."""
    if name not in ALIGNMENT_METHODS:
        raise ValueError(f"unknown alignment method {name!r}; valid names: {', '.join(sorted(ALIGNMENT_METHODS))}")
    return ALIGNMENT_METHODS[name]


__all__ = ["ALIGNMENT_METHODS", "AlignmentMethod", "AlignmentResult", "get_alignment_method"]
