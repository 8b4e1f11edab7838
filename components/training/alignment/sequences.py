"""Offline rows as token sequences: chat-template encoding, preference-pair batches, seeded
micro-batches, and the per-sequence log-probs of responses (DPO, ORPO, OREO).

A response is encoded exactly as SFT encodes an assistant turn (`encode_chat`): the prompt
is the chat-templated conversation up to the generation prompt, the response is the rest of
the template (its text plus the end-of-turn token), so the log-prob of a response is that of
the tokens the policy would generate and stop with. A preference batch holds N pairs as 2N
rows of one `RolloutBatch`: chosen responses in rows 0..N-1, rejected ones in rows N..2N-1.
"""
from __future__ import annotations

import torch
from torch import Tensor

from components.algorithms import sequence_logprob
from components.training.grpo import pick_prompts
from components.training.rollout_batch import RolloutBatch, batch_logprobs, completion_logprobs
from components.training.sft import encode_chat


def encode_response(tokenizer, prompt: str, response: str, max_length: int,
                    system_prompt: str | None = None) -> tuple[list[int], list[int]]:
    """(prompt ids, response ids), cut to `max_length` tokens in all (the response's end is cut)."""
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    messages += [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
    ids, mask = encode_chat(tokenizer, messages, max_length)
    n_prompt = mask.index(1) if 1 in mask else len(ids)
    return ids[:n_prompt], ids[n_prompt:]


def encode_rows(tokenizer, rows: list[dict], column: str, max_length: int, system_prompt: str | None,
                what: str) -> tuple[list[list[int]], list[list[int]]]:
    """Prompt and response ids of ``row["prompt"]`` / ``row[column]`` for every row."""
    prompts, responses = [], []
    for i, row in enumerate(rows):
        p, r = encode_response(tokenizer, row["prompt"], row[column], max_length, system_prompt)
        if not r:
            raise ValueError(f"{what}: row {i}: the prompt alone fills max_length={max_length} tokens; "
                             f"no '{column}' token is left to train on")
        prompts.append(p)
        responses.append(r)
    return prompts, responses


def encode_pairs(tokenizer, rows: list[dict], max_length: int, system_prompt: str | None, what: str, device
                 ) -> RolloutBatch:
    """Preference rows ``{"prompt", "chosen", "rejected"}`` as one 2N-row batch (chosen first).
    A pair whose two responses are the same (as text, or as tokens after cutting) is an error."""
    for i, row in enumerate(rows):
        if row["chosen"].strip() == row["rejected"].strip():
            raise ValueError(f"{what}: row {i}: 'chosen' and 'rejected' are the same response")
    prompts, chosen = encode_rows(tokenizer, rows, "chosen", max_length, system_prompt, what)
    _, rejected = encode_rows(tokenizer, rows, "rejected", max_length, system_prompt, what)
    for i, (c, r) in enumerate(zip(chosen, rejected)):
        if c == r:
            raise ValueError(f"{what}: row {i}: 'chosen' and 'rejected' are identical once cut to "
                             f"max_length={max_length} tokens")
    n = len(rows)
    return RolloutBatch.from_sequences(prompts + prompts, chosen + rejected, torch.zeros(2 * n),
                                       tokenizer.pad_token_id, device)


def pair_rows(pairs: Tensor, n: int) -> Tensor:
    """Batch rows of pairs `pairs` in a 2n-row pair batch: their chosen rows, then their rejected rows."""
    return torch.cat([pairs, pairs + n])


def micro_batches(n: int, batch_size: int, grad_accum: int, seed: int, it: int) -> list[Tensor]:
    """Row indices of iteration `it`'s `grad_accum` micro-batches: consecutive positions of a
    stream that visits every row once per epoch in a seeded order (a pure function of (seed, it))."""
    picks = torch.tensor(pick_prompts(n, batch_size * grad_accum, seed, it))
    return list(picks.split(batch_size))


def sequence_logps(model, batch: RolloutBatch, reduce: str = "sum") -> Tensor:
    """log pi(response | prompt) of every row (differentiable): sum or mean over response tokens. -> [N]"""
    logp, _ = completion_logprobs(model, batch, 1.0)
    return sequence_logprob(logp, batch.completion_mask[:, batch.start:], reduce)


def initial_token_logps(policy, reference, batch: RolloutBatch, chunk: int) -> Tensor:
    """No-grad reference log-probs [N, L] (aligned with input_ids), computed ONCE before training:
    from `reference` if given, else from a peft policy with its adapters off, else from the
    policy itself, which before its first update (and before resuming) IS the reference."""
    if reference is not None:
        return _eval_logprobs(reference, batch, chunk)
    if hasattr(policy, "disable_adapter"):
        with policy.disable_adapter():
            return _eval_logprobs(policy, batch, chunk)
    return _eval_logprobs(policy, batch, chunk)


def _eval_logprobs(model, batch: RolloutBatch, chunk: int) -> Tensor:
    was_training = model.training
    model.eval()
    try:
        return batch_logprobs(model, batch, 1.0, chunk)
    finally:
        model.train(was_training)


def summed(token_logps: Tensor, batch: RolloutBatch, reduce: str = "sum") -> Tensor:
    """Per-row sum (or mean) of aligned token log-probs [N, L] over the response. -> [N]"""
    return sequence_logprob(token_logps, batch.completion_mask, reduce)
