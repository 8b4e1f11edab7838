"""Sampled KL(pi || pi_ref): zero against itself, clearly positive against another model."""
from __future__ import annotations

import copy

import pytest
import torch

from components.evaluation.policy_kl import sampled_kl

PROMPTS = ["1+2", "3*4", "2+2*3"]


def test_kl_to_itself_is_zero_and_to_another_model_positive(tiny_model, tiny_tokenizer, single_thread):
    same = sampled_kl(tiny_model, copy.deepcopy(tiny_model), tiny_tokenizer, PROMPTS, samples=4, max_new_tokens=6)
    assert same["kl"] == pytest.approx(0.0, abs=1e-5) and same["n"] == 12
    other = copy.deepcopy(tiny_model)
    with torch.no_grad():
        other.lm_head.weight.mul_(20.0)  # tied with the embeddings: a much sharper distribution
    far = sampled_kl(tiny_model, other, tiny_tokenizer, PROMPTS, samples=8, max_new_tokens=6)
    assert far["kl"] > 3 * far["kl_se"] > 0


def test_a_policy_without_adapters_needs_a_reference(tiny_model, tiny_tokenizer):
    with pytest.raises(ValueError, match="a reference model is required"):
        sampled_kl(tiny_model, None, tiny_tokenizer, PROMPTS)
