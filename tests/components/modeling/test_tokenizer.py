import copy

from components.modeling.tokenizer import token_ids

TEXTS = ["12+7*3", "untrained: spell 'abc'", "<think>4+4=8</think><answer>8</answer>", "", "9" * 300]


def test_token_ids_are_the_tokenizers_own_ids(tiny_tokenizer):
    """The Rust backend's batch gives the ids the tokenizer's call returns, special tokens left out."""
    assert token_ids(tiny_tokenizer, TEXTS) == tiny_tokenizer(TEXTS, add_special_tokens=False)["input_ids"]
    assert token_ids(tiny_tokenizer, []) == []
    assert len(token_ids(tiny_tokenizer, TEXTS)[-1]) == 300  # digits one per token, nothing cut


def test_a_backend_set_to_truncate_goes_through_the_tokenizers_call(tiny_tokenizer):
    """A backend left truncating (a tokenizer.json saved with truncation) would cut texts the
    tokenizer's call does not: such a tokenizer is asked through its call."""
    tok = copy.deepcopy(tiny_tokenizer)
    tok.backend_tokenizer.enable_truncation(max_length=5)
    assert [len(ids) for ids in token_ids(tok, TEXTS)][-1] == 300
    assert token_ids(tok, TEXTS) == token_ids(tiny_tokenizer, TEXTS)
