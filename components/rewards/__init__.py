"""Rewards and verifiers for R1-style RL: reward functions, their registry, and a robust
weighted combiner. Pure Python (math-verify is imported lazily by `math_equiv`)."""
from components.rewards.combiner import RewardCombiner, RewardResult, RewardSpec
from components.rewards.functions import (
    REWARDS,
    RewardFn,
    completion_text,
    exact_int,
    extract_answer,
    format_reward,
    get_reward,
    length_penalty,
    math_equiv,
    overlong,
    register_reward,
    soft_format,
)

__all__ = [
    "REWARDS",
    "RewardCombiner",
    "RewardFn",
    "RewardResult",
    "RewardSpec",
    "completion_text",
    "exact_int",
    "extract_answer",
    "format_reward",
    "get_reward",
    "length_penalty",
    "math_equiv",
    "overlong",
    "register_reward",
    "soft_format",
]
