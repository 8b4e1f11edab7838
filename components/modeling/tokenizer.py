"""A small BPE tokenizer trained locally with `tokenizers`, saved in Hugging Face format.

Digits are always split one per token (arithmetic is learned digit by digit) and the
reasoning-format tags are single tokens. The chat template renders

    <|user|>7+3*4<|end|><|assistant|><think>…</think><answer>19</answer><|end|>

so `<|end|>` is both the turn terminator and the EOS token.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from tokenizers import AddedToken

PAD, BOS, END = "<|pad|>", "<|bos|>", "<|end|>"
ROLE_TOKENS = ["<|system|>", "<|user|>", "<|assistant|>"]
FORMAT_TOKENS = ["<think>", "</think>", "<answer>", "</answer>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def train_tokenizer(texts: Iterable[str], vocab_size: int = 96):
    """Train a BPE on `texts` and wrap it as a `PreTrainedTokenizerFast` with a chat template."""
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<|unk|>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.Punctuation("isolated")]
    )
    tok.decoder = decoders.BPEDecoder()
    specials = [PAD, BOS, END, "<|unk|>", *ROLE_TOKENS]
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    # Format tags are plain (non-special) added tokens: one id each, but kept when decoding
    # with skip_special_tokens, because the reward functions read them.
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in FORMAT_TOKENS])
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token=PAD, bos_token=BOS, eos_token=END, unk_token="<|unk|>",
        additional_special_tokens=ROLE_TOKENS, padding_side="left",  # generation pads left
    )
    hf.chat_template = CHAT_TEMPLATE
    return hf


def save_tokenizer(tokenizer, path: str | Path) -> None:
    tokenizer.save_pretrained(str(path))


def token_ids(tokenizer, texts: list[str]) -> list[list[int]]:
    """The token ids of each text without special tokens, in one batched call: straight from a fast
    tokenizer's Rust backend when it neither truncates nor pads (the ids `tokenizer(texts)` returns,
    without building its per-text encodings in Python: the 60,000 pretraining documents, prompt and
    rest apart, in ~1.7-1.9 s instead of ~3.2-4.0 s on the 2-core CPU), else through the tokenizer's
    own call."""
    if not texts:
        return []
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and backend.truncation is None and backend.padding is None:
        return [e.ids for e in backend.encode_batch(texts, add_special_tokens=False)]
    return tokenizer(texts, add_special_tokens=False)["input_ids"]
