"""Offline rows as token sequences: chat-template encoding, preference pairs, seeded
micro-batches, and the per-sequence log-probs of responses (DPO, ORPO, OREO).

A response is encoded exactly as SFT encodes an assistant turn (`encode_chat`): the prompt
is the chat-templated conversation up to the generation prompt, the response is the rest of
the template (its text plus the end-of-turn token), so the log-prob of a response is that of
the tokens the policy would generate and stop with. Encoded rows stay token lists on the
host (`EncodedRows`); a padded `RolloutBatch` is built on the device per micro-batch only,
so a large dataset never sits on the accelerator as one padded tensor. N preference pairs
are 2N rows: chosen responses in rows 0..N-1, rejected ones in rows N..2N-1.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from components.algorithms import sequence_logprob
from components.training.grpo import pick_prompts
from components.training.rollout_batch import RolloutBatch, batch_logprobs, completion_logprobs
from components.training.sft import encode_chat


@dataclass
class EncodedRows:
    """Token rows (prompt ids, response ids) and optional marked response positions per row."""

    prompts: list[list[int]]
    responses: list[list[int]]
    pad_id: int
    marks: dict[str, list[list[int]]] = field(default_factory=dict)  # e.g. "step_end": positions in the response

    def __len__(self) -> int:
        return len(self.prompts)

    def batch(self, rows: Tensor, device) -> RolloutBatch:
        """Rows `rows` as a right-padded batch; each mark becomes a bool token field."""
        idx = rows.tolist()
        batch = RolloutBatch.from_sequences([self.prompts[i] for i in idx], [self.responses[i] for i in idx],
                                            torch.zeros(len(idx)), self.pad_id, device)
        for name, positions in self.marks.items():
            marked = torch.zeros_like(batch.completion_mask)
            for b, i in enumerate(idx):
                marked[b, [len(self.prompts[i]) + p for p in positions[i]]] = True
            batch.token_fields[name] = marked
        return batch


def encode_response(tokenizer, prompt: str, response: str, max_length: int,
                    system_prompt: str | None = None) -> tuple[list[int], list[int]]:
    """(prompt ids, response ids), cut to `max_length` tokens in all (the response's end is cut)."""
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    messages += [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
    ids, mask = encode_chat(tokenizer, messages, max_length)
    n_prompt = mask.index(1) if 1 in mask else len(ids)
    return ids[:n_prompt], ids[n_prompt:]


def encode_rows(tokenizer, rows: list[dict], column: str, max_length: int, system_prompt: str | None,
                what: str) -> EncodedRows:
    """``row["prompt"]`` and ``row[column]`` of every row, encoded."""
    prompts, responses = [], []
    for i, row in enumerate(rows):
        p, r = encode_response(tokenizer, row["prompt"], row[column], max_length, system_prompt)
        if not r:
            raise ValueError(f"{what}: row {i}: the prompt alone fills max_length={max_length} tokens; "
                             f"no '{column}' token is left to train on")
        prompts.append(p)
        responses.append(r)
    return EncodedRows(prompts, responses, tokenizer.pad_token_id)


def encode_pairs(tokenizer, rows: list[dict], max_length: int, system_prompt: str | None, what: str) -> EncodedRows:
    """Preference rows ``{"prompt", "chosen", "rejected"}`` as 2N rows (chosen first). A pair
    whose two responses are the same (as text, or as tokens after cutting) is an error."""
    for i, row in enumerate(rows):
        if row["chosen"].strip() == row["rejected"].strip():
            raise ValueError(f"{what}: row {i}: 'chosen' and 'rejected' are the same response")
    chosen = encode_rows(tokenizer, rows, "chosen", max_length, system_prompt, what)
    rejected = encode_rows(tokenizer, rows, "rejected", max_length, system_prompt, what)
    for i, (c, r) in enumerate(zip(chosen.responses, rejected.responses)):
        if c == r:
            raise ValueError(f"{what}: row {i}: 'chosen' and 'rejected' are identical once cut to "
                             f"max_length={max_length} tokens")
    return EncodedRows(chosen.prompts + rejected.prompts, chosen.responses + rejected.responses, chosen.pad_id)


def pair_rows(pairs: Tensor, n: int) -> Tensor:
    """Rows of pairs `pairs` among 2n pair rows: their chosen rows, then their rejected rows."""
    return torch.cat([pairs, pairs + n])


def micro_batches(n: int, batch_size: int, grad_accum: int, seed: int, it: int) -> list[Tensor]:
    """Row indices of iteration `it`'s `grad_accum` micro-batches: consecutive positions of a
    stream that visits every row once per epoch in a seeded order (a pure function of (seed, it))."""
    picks = torch.tensor(pick_prompts(n, batch_size * grad_accum, seed, it))
    return list(picks.split(batch_size))


def sequence_logps(model, batch: RolloutBatch, reduce: str = "sum") -> Tensor:
    """log pi(response | prompt) of every row (differentiable): sum or mean over response tokens. -> [N]"""
    return sequence_logps_both(model, batch)[0 if reduce == "sum" else 1]


def sequence_logps_both(model, batch: RolloutBatch) -> tuple[Tensor, Tensor]:
    """(sum, mean) over response tokens of log pi(response | prompt), from one forward. -> [N], [N]"""
    logp, _ = completion_logprobs(model, batch, 1.0)
    mask = batch.completion_mask[:, batch.start:]
    return sequence_logprob(logp, mask, "sum"), sequence_logprob(logp, mask, "mean")


def initial_sequence_logps(policy, reference, rows: EncodedRows, chunk: int, device) -> Tensor:
    """No-grad reference log-probs of every row's response (sums) -> [len(rows)], computed ONCE
    before training, in length-sorted chunks: from `reference` if given, else from a peft
    policy with its adapters off, else from the policy itself, which before its first update
    (and before resuming) IS the reference."""
    out = torch.zeros(len(rows), device=device)
    order = torch.argsort(torch.tensor([len(p) + len(r) for p, r in zip(rows.prompts, rows.responses)]), stable=True)
    for part in order.split(chunk):
        batch = rows.batch(part, device)
        out[part.to(device)] = sequence_logprob(_frozen_logprobs(policy, reference, batch), batch.completion_mask)
    return out


def _frozen_logprobs(policy, reference, batch: RolloutBatch) -> Tensor:
    if reference is not None:
        return _eval_logprobs(reference, batch)
    if hasattr(policy, "disable_adapter"):
        with policy.disable_adapter():
            return _eval_logprobs(policy, batch)
    return _eval_logprobs(policy, batch)


def _eval_logprobs(model, batch: RolloutBatch) -> Tensor:
    was_training = model.training
    model.eval()
    try:
        return batch_logprobs(model, batch, 1.0, len(batch))
    finally:
        model.train(was_training)
