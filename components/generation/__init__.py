"""Rollout generation: batched sampling of many prompts x G samples (eval, rejection sampling, GRPO)."""
from .engine import ENGINES, RolloutEngine, TransformersEngine, make_engine
from .sampling import Rollout, SamplingParams
from .vllm_engine import VLLMEngine

__all__ = [
    "ENGINES", "Rollout", "RolloutEngine", "SamplingParams", "TransformersEngine", "VLLMEngine", "make_engine",
]
