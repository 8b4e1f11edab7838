"""Supervised fine-tuning (and pretraining) on token sequences with a loss mask.

Chat examples are rendered with the tokenizer's own chat template; only the final
assistant turn is trained on (prompt tokens are masked from the loss). Plain text
documents are trained on every token, except that a document read from a prompt/completion
pair (the `text` schema's second form) is trained on its completion only when the config's
`completion_only_loss` is on: the prompt is context, its tokens are not targets.

Packing (`cfg.pack`, on by default): a micro-batch's sequences are packed first-fit into rows of
`max_length` tokens, each keeping its own positions (0, 1, …), and attention is kept inside each
sequence (transformers builds the block-diagonal causal mask from restarting `position_ids`).
The micro-batch holds the same sequences and the loss is the same token mean over the same
targets as with one padded row per sequence (a test checks loss and gradients agree); only the
padding is gone, which on the default pretraining corpus halves the tokens a step computes.
"""
from __future__ import annotations

from functools import lru_cache

import torch

from components.algorithms.sft import sft_loss
from components.modeling.tokenizer import token_ids
from components.training.loop import Log, Progress, Trainer, no_log, no_progress, shares


class EncodingError(ValueError):
    """An example cannot be rendered into a training sequence."""


def encode_chat(tokenizer, messages: list[dict], max_length: int) -> tuple[list[int], list[int]]:
    """Token ids of the whole conversation and a mask that is 1 on the last assistant turn."""
    if not messages or messages[-1]["role"] != "assistant":
        raise EncodingError("a training conversation must end with an assistant message")
    prompt = tokenizer.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    if not full.startswith(prompt):
        raise EncodingError("the chat template does not render the prompt as a prefix of the conversation")
    p_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    c_ids = tokenizer(full[len(prompt):], add_special_tokens=False)["input_ids"]
    ids = (p_ids + c_ids)[:max_length]
    return ids, ([0] * len(p_ids) + [1] * len(c_ids))[:max_length]


def _document(eos: int, ids: list[int], max_length: int, untrained: int = 0) -> tuple[list[int], list[int]]:
    """A document's token ids ended by `eos` and cut to `max_length`, every token trained on but the
    first `untrained` (a prompt's)."""
    if not ids or ids[-1] != eos:
        ids = ids + [eos]
    ids = ids[:max_length]
    return ids, ([0] * untrained + [1] * len(ids))[:len(ids)]


def encode(tokenizer, row: dict, max_length: int, completion_only: bool = False) -> tuple[list[int], list[int]]:
    """Encode a canonical row: {"messages": [...]} or {"text": "..."} (with its "prompt" when it came
    from a prompt/completion pair; `completion_only` then leaves the prompt's tokens out of the loss)."""
    if "messages" in row:
        return encode_chat(tokenizer, row["messages"], max_length)
    return encode_rows(tokenizer, [row], max_length, completion_only)[0]


def encode_rows(tokenizer, rows: list[dict], max_length: int,
                completion_only: bool = False) -> list[tuple[list[int], list[int]]]:
    """`encode` of every row, the plain-text rows tokenized in one batched call (`token_ids`). With
    `completion_only`, a document's prompt and the rest of it are tokenized apart (as a chat turn's
    are) and the prompt's tokens are not targets; without, the document is tokenized whole, as a
    plain text."""
    eos = tokenizer.eos_token_id
    prompts = {i: row_prompt(row) if completion_only else "" for i, row in enumerate(rows) if "messages" not in row}
    whole = [i for i, prompt in prompts.items() if not prompt]
    split = [i for i, prompt in prompts.items() if prompt]
    documents = {i: _document(eos, x, max_length)
                 for i, x in zip(whole, token_ids(tokenizer, [rows[i]["text"] for i in whole]))}
    heads = token_ids(tokenizer, [prompts[i] for i in split])
    rests = token_ids(tokenizer, [rows[i]["text"][len(prompts[i]):] for i in split])
    documents |= {i: _document(eos, h + r, max_length, untrained=len(h)) for i, h, r in zip(split, heads, rests)}
    return [documents[i] if i in documents else encode_chat(tokenizer, row["messages"], max_length)
            for i, row in enumerate(rows)]


def row_prompt(row: dict) -> str:
    """The prompt of a document read from a prompt/completion pair ("" for a plain one); checked to
    be the document's prefix, which the `text` schema guarantees."""
    prompt = row.get("prompt") or ""
    if not row["text"].startswith(prompt):
        raise EncodingError(f"the row's prompt is not the start of its text: {prompt[:40]!r}")
    return prompt


def collate(examples: list[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad to the longest example: input_ids, attention_mask, loss_mask — all [B, T]."""
    width = max(len(ids) for ids, _ in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    attn = torch.zeros((len(examples), width), dtype=torch.long)
    loss_mask = torch.zeros((len(examples), width), dtype=torch.long)
    for i, (x, m) in enumerate(examples):
        ids[i, : len(x)] = torch.tensor(x)
        attn[i, : len(x)] = 1
        loss_mask[i, : len(m)] = torch.tensor(m)
    return {"input_ids": ids, "attention_mask": attn, "loss_mask": loss_mask}


def pack(examples: list[tuple[list[int], list[int]]], width: int, pad_id: int) -> dict[str, torch.Tensor]:
    """Pack sequences first-fit (longest first) into rows of at most `width` tokens:
    input_ids, position_ids (restarting at 0 for each sequence), loss_mask — all [R, W].

    A sequence's first token is never a target (nothing before it in its own sequence predicts
    it), so its loss-mask entry is 0; padding at a row's end gets positions of its own and no loss.
    """
    rows: list[list[tuple[list[int], list[int]]]] = []
    sizes: list[int] = []
    for ids, mask in sorted(examples, key=lambda e: -len(e[0])):
        slot = next((i for i, size in enumerate(sizes) if size + len(ids) <= width), None)
        if slot is None:
            rows.append([])
            sizes.append(0)
            slot = len(rows) - 1
        rows[slot].append((ids, mask))
        sizes[slot] += len(ids)
    w = max(sizes)
    input_ids, loss_mask, position_ids = [], [], []  # built as lists, one tensor each: a step packs in ~1 ms
    for row, size in zip(rows, sizes):
        for ids, mask in row:
            input_ids += ids
            loss_mask += [0, *mask[1:len(ids)]]
            position_ids += range(len(ids))
        input_ids += [pad_id] * (w - size)
        loss_mask += [0] * (w - size)
        position_ids += range(w - size)  # the padding tail is a sequence of its own
    return {k: torch.tensor(v, dtype=torch.long).view(len(rows), w) for k, v in
            (("input_ids", input_ids), ("position_ids", position_ids), ("loss_mask", loss_mask))}


def make_batch_fn(encoded: list, batch_size: int, grad_accum: int, seed: int, pad_id: int, pack_width: int = 0):
    """batch_fn(step, micro): the examples at that position of a seeded, per-epoch shuffle,
    padded one per row, or packed into rows of `pack_width` tokens when it is > 0."""
    n = len(encoded)

    @lru_cache(maxsize=4)
    def order(epoch: int) -> list[int]:
        return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch)).tolist()

    def batch_fn(step: int, micro: int) -> dict[str, torch.Tensor]:
        start = ((step - 1) * grad_accum + micro) * batch_size
        picks = [order(i // n)[i % n] for i in range(start, start + batch_size)]
        examples = [encoded[j] for j in picks]
        return pack(examples, pack_width, pad_id) if pack_width else collate(examples, pad_id)

    return batch_fn


def token_shares(batches: list[dict]) -> list[float]:
    """Each micro-batch's share of the step's loss tokens: weighting the micro-batches' token means
    by it makes an accumulated step's loss the token mean over the whole step, whatever the split
    (equal weights would not: a micro-batch of short answers would count as much as one of long)."""
    return shares([float(b["loss_mask"][:, 1:].sum()) for b in batches])


def layout(batch: dict) -> dict:
    """The model kwargs that say how a batch's rows are laid out: padded (attention_mask) or packed
    (position_ids restarting at each sequence, from which transformers builds the block-diagonal
    causal mask)."""
    return {k: batch[k] for k in ("attention_mask", "position_ids") if k in batch}


def sft_loss_fn(model, batch: dict) -> tuple[torch.Tensor, dict]:
    """Token-mean NLL of a padded (attention_mask) or packed (position_ids) batch."""
    tokens = float(batch["loss_mask"][:, 1:].sum())  # counted before the batch moves: no wait on a GPU
    batch = {k: v.to(model.device) for k, v in batch.items()}
    logits = model(input_ids=batch["input_ids"], use_cache=False, **layout(batch)).logits
    loss = sft_loss(logits[:, :-1], batch["input_ids"][:, 1:], batch["loss_mask"][:, 1:])
    return loss, {"tokens": tokens}


def run_sft(model, tokenizer, rows: list[dict], cfg, ckpt_dir, seed: int, log: Log = no_log,
            progress: Progress = no_progress, stop_after: int | None = None):
    """Train `model` on canonical rows with a TrainConfig; resumable from `ckpt_dir`."""
    if not rows:
        raise EncodingError("no training rows")
    encoded = encode_rows(tokenizer, rows, cfg.max_length, cfg.completion_only_loss)
    batch_fn = make_batch_fn(encoded, cfg.batch_size, cfg.grad_accum, seed, tokenizer.pad_token_id,
                             pack_width=cfg.max_length if cfg.pack else 0)
    trainer = Trainer({"model": model}, cfg, ckpt_dir, log=log, progress=progress, what="sft")

    def iteration(step: int) -> dict:
        batches = [batch_fn(step, micro) for micro in range(cfg.grad_accum)]
        return trainer.step([lambda b=b: sft_loss_fn(model, b) for b in batches], weights=token_shares(batches))

    return trainer.run(iteration, stop_after=stop_after)
