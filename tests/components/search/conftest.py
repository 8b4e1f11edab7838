"""Tiny randomly initialised verifiers for the adapter and integration tests."""
from __future__ import annotations

import pytest
import torch


def _config(tok, **kw):
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=256, num_labels=1,
                       pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, **kw)


@pytest.fixture(scope="module")
def tiny_orm(tiny_tokenizer):
    from transformers import LlamaForSequenceClassification

    torch.manual_seed(1)
    return LlamaForSequenceClassification(_config(tiny_tokenizer)).eval()


@pytest.fixture(scope="module")
def tiny_prm(tiny_tokenizer):
    from transformers import LlamaForTokenClassification

    torch.manual_seed(2)
    return LlamaForTokenClassification(_config(tiny_tokenizer)).eval()
