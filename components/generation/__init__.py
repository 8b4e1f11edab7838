"""Rollout generation: batched sampling of many prompts x G samples (eval, rejection sampling, GRPO)."""
from .engine import ENGINES, RolloutEngine, TransformersEngine, make_engine, owned
from .prefix_cache import PrefixCache
from .sampling import Rollout, SamplingParams
from .vllm_engine import VLLMEngine

__all__ = [
    "ENGINES", "PrefixCache", "Rollout", "RolloutEngine", "SamplingParams", "TransformersEngine", "VLLMEngine", "make_engine",
    "owned",
]
