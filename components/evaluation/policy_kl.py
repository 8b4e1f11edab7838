"""KL(pi || pi_ref) of a trained policy, measured the same way for every alignment method.

Monte-Carlo over the policy's own samples (Schulman's k1 estimator summed over a completion):
for y ~ pi(. | x), log pi(y | x) - log pi_ref(y | x) is an unbiased estimate of the sequence
KL, whatever method produced pi; the mean over prompts x samples and its standard error are
returned. Log-probs are those of softmax(logits / temperature), the distribution sampled.
"""
from __future__ import annotations

import math

import torch

from components.data.prompts import render_prompt
from components.generation import SamplingParams, make_engine
from components.training.rollout_batch import RolloutBatch, batch_logprobs


def sampled_kl(policy, reference, tokenizer, prompts: list[str], *, samples: int = 1, max_new_tokens: int = 64,
               temperature: float = 1.0, seed: int = 0, batch_size: int = 256,
               system_prompt: str | None = None) -> dict[str, float]:
    """{"kl", "kl_se", "n"}: mean sequence KL(pi || pi_ref) in nats over `samples` completions
    per prompt. `reference=None` with a peft policy: its base with the adapters off."""
    if not prompts:
        raise ValueError("sampled_kl: no prompts")
    if reference is None and not hasattr(policy, "disable_adapter"):
        raise ValueError("sampled_kl: a reference model is required for a policy without adapters")
    engine = make_engine("transformers", policy, tokenizer, batch_size=batch_size)
    texts = [render_prompt(tokenizer, p, system_prompt) for p in prompts]
    rollout = engine.generate(texts, SamplingParams(n=samples, temperature=temperature,
                                                    max_new_tokens=max_new_tokens, seed=seed))
    device = next(policy.parameters()).device
    batch = RolloutBatch.from_rollout(rollout, list(range(len(rollout))), torch.zeros(len(rollout)),
                                      tokenizer.pad_token_id, device)
    logp = batch_logprobs(policy, batch, temperature, batch_size)
    if reference is None:
        with policy.disable_adapter():
            ref = batch_logprobs(policy, batch, temperature, batch_size)
    else:
        ref = batch_logprobs(reference, batch, temperature, batch_size)
    per_sequence = torch.where(batch.completion_mask, logp - ref, 0.0).sum(-1).double()
    n = per_sequence.numel()
    se = float(per_sequence.std() / math.sqrt(n)) if n > 1 else 0.0
    return {"kl": float(per_sequence.mean()), "kl_se": se, "n": float(n)}
