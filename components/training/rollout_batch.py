"""The tensors of a batch of (prompt, completion) rows and the forwards that score completions.

A `RolloutBatch` holds rows of a rollout (or of offline data: preference pairs, OREO
trajectories) as right-padded ``[N, L]`` sequences (prompt + completion) together with what
a loss needs per row: the prompt length, the advantage, and, once computed, old-policy and
reference log-probs and any further per-token tensors (`token_fields`). Log-prob tensors are
aligned with ``input_ids`` (column p holds log pi(token p | tokens < p), 0 on prompt and
padding), so a minibatch is just a row selection followed by a column trim.

`completion_logprobs` is the one training forward: it asks the model for logits of the
completion region only (``logits_to_keep``; the shortest prompt decides where that region
starts) and returns token log-probs and, from the same logits, token entropies. Rows of very
different lengths are run as a few length buckets (each trimmed to its own longest row) and
put back into one ``[B, T]`` tensor, so padding costs little compute while the loss is still
aggregated once over the whole minibatch, exactly as `components.algorithms` defines it.

With `share_prompts`, rows that repeat a prompt (GRPO's G samples of one prompt) share its
computation: each distinct prompt goes through the model once, its keys and values are handed
to the rows that repeat it, and only the completions are run row by row (gradients reach the
shared prompt through the cache). The log-probs, entropies and gradients are those of the
one-sequence-a-row forward up to float rounding (tested); what is saved is the repeated
prompts' tokens, so the saving grows with the prompt's share of a sequence (GRPO on the default
recipe, prompts of ~9 tokens and completions of ~25: its optimising phase ~16 % faster). The
prompts' keys and values reach the rows by `index_select`, whose backward adds in a fixed order
on CPU (plain indexing accumulates there with parallel atomic adds), so a CPU run repeats itself
bit for bit (tested). It is a switch (`reasoning_rl.share_prompts`, on in the default recipe): rounding
differences, tiny as they are, change which samples a GRPO run draws after a few dozen
iterations, so a run with it does not repeat one made without it.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F
from torch import Tensor
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from components.algorithms import entropy_from_logits, token_logprobs


@dataclass
class RolloutBatch:
    input_ids: Tensor        # [N, L] long, prompt + completion, right padded
    attention_mask: Tensor   # [N, L] long
    completion_mask: Tensor  # [N, L] bool, True on completion tokens (EOS included)
    prompt_len: Tensor       # [N] long
    seq_len: Tensor          # [N] long, prompt + completion
    advantages: Tensor       # [N] float
    old_logp: Tensor | None = None  # [N, L] aligned with input_ids; None = the current policy
    ref_logp: Tensor | None = None  # [N, L] aligned with input_ids; None = no KL term
    # more per-token tensors aligned with input_ids (PPO: token advantages, returns, old values)
    token_fields: dict[str, Tensor] = field(default_factory=dict)

    @classmethod
    def from_rollout(cls, rollout, rows: list[int], advantages: Tensor, pad_id: int, device) -> "RolloutBatch":
        """The given rows of a `Rollout` (prompt ids and completion ids as sampled, no re-tokenizing)."""
        return cls.from_sequences([rollout.prompt_ids[r] for r in rows], [rollout.completion_ids[r] for r in rows],
                                  advantages, pad_id, device)

    @classmethod
    def from_sequences(cls, prompts: list[list[int]], completions: list[list[int]], advantages: Tensor,
                       pad_id: int, device) -> "RolloutBatch":
        """Rows of prompt ids + completion ids (sampled, or encoded offline data such as preference pairs)."""
        if not prompts or any(not p for p in prompts):
            raise ValueError("RolloutBatch: needs at least one row, and every row a non-empty prompt")
        p_len = torch.tensor([len(p) for p in prompts], dtype=torch.long)
        s_len = p_len + torch.tensor([len(c) for c in completions], dtype=torch.long)
        width = int(s_len.max())
        ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
        for i, (p, c) in enumerate(zip(prompts, completions)):
            ids[i, : len(p) + len(c)] = torch.tensor(p + c, dtype=torch.long)
        cols = torch.arange(width)
        attn = cols < s_len[:, None]
        comp = attn & (cols >= p_len[:, None])
        return cls(ids.to(device), attn.long().to(device), comp.to(device), p_len.to(device), s_len.to(device),
                   advantages.to(device=device, dtype=torch.float32))

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    @property
    def start(self) -> int:
        """First column that holds a completion token in some row."""
        return int(self.prompt_len.min())

    def select(self, idx: Tensor) -> "RolloutBatch":
        """Rows `idx`, trimmed to their own longest sequence."""
        idx = idx.to(self.input_ids.device)
        width = int(self.seq_len[idx].max())

        def cut(x: Tensor | None) -> Tensor | None:
            return None if x is None else x[idx, :width]

        return replace(self, input_ids=cut(self.input_ids), attention_mask=cut(self.attention_mask),
                       completion_mask=cut(self.completion_mask), prompt_len=self.prompt_len[idx],
                       seq_len=self.seq_len[idx], advantages=self.advantages[idx],
                       old_logp=cut(self.old_logp), ref_logp=cut(self.ref_logp),
                       token_fields={k: cut(v) for k, v in self.token_fields.items()})


def _logits_tail(model, input_ids: Tensor, attention_mask: Tensor, keep: int) -> Tensor:
    """Logits of the last `keep` positions, without materialising the prompt's logits."""
    kwargs = dict(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    try:
        logits = model(**kwargs, logits_to_keep=keep).logits
    except TypeError:  # a model without `logits_to_keep`
        logits = model(**kwargs).logits
    return logits[:, -keep:]


# An extra length bucket (one more forward call) must save this share of the padded tokens.
BUCKET_MIN_SAVING = 0.1
MAX_BUCKETS = 4


def length_buckets(seq_len: Tensor) -> list[Tensor]:
    """Row indices in groups of similar length: rows sorted by length, cut into the number of
    equal-size groups (1..MAX_BUCKETS) with the fewest padded tokens, where every extra group
    must pay for itself with BUCKET_MIN_SAVING of the one-group padded area."""
    order = torch.argsort(seq_len, stable=True)
    one_group = len(order) * int(seq_len.max())
    best_cost, best = None, [order]
    for k in range(1, min(MAX_BUCKETS, len(order)) + 1):
        parts = list(order.tensor_split(k))
        cost = sum(len(p) * int(seq_len[p[-1]]) for p in parts) + (k - 1) * BUCKET_MIN_SAVING * one_group
        if best_cost is None or cost < best_cost:
            best_cost, best = cost, parts
    return best


def completion_logprobs(model, batch: RolloutBatch, temperature: float, with_entropy: bool = False,
                        share_prompts: bool = False) -> tuple[Tensor, Tensor | None]:
    """Log-probs (and entropies) of columns ``batch.start:`` under softmax(logits / temperature).

    Shapes: -> logp [N, L - start] (differentiable), entropy [N, L - start] (detached) or None.
    Column j scores token ``input_ids[:, start + j]``; 0 where a bucket's rows are shorter
    (and, when rows share their prompts, on every prompt column). `share_prompts`: compute
    each repeated prompt once where that pays (`shared_prompts`).
    """
    shared = shared_prompts(model, batch) if share_prompts else None
    if shared is not None:
        return _shared_prompt_logprobs(model, batch, *shared, temperature, with_entropy)
    parts = length_buckets(batch.seq_len)
    if len(parts) == 1:
        return _bucket_logprobs(model, batch, temperature, with_entropy)
    start, width = batch.start, batch.input_ids.shape[1]
    logps, entropies = [], []
    for rows in parts:
        sub = batch.select(rows)
        logp, entropy = _bucket_logprobs(model, sub, temperature, with_entropy)
        pad = (sub.start - start, width - sub.input_ids.shape[1])  # back to columns start..width-1
        logps.append(F.pad(logp, pad))
        entropies.append(None if entropy is None else F.pad(entropy, pad))
    back = torch.argsort(torch.cat(parts)).to(batch.input_ids.device)  # bucket order -> batch order
    logp = torch.cat(logps)[back]
    return logp, (torch.cat(entropies)[back] if with_entropy else None)


# Sharing the prompts (one more forward call) must save this share of the batch's tokens.
SHARE_MIN_SAVING = 0.1


def shared_prompts(model, batch: RolloutBatch) -> tuple[list[list[int]], Tensor] | None:
    """(the distinct prompts, each row's index into them) when rows repeat prompts enough for
    sharing them to pay and the model's cache is a plain key/value one; else None."""
    ids, plen = batch.input_ids.tolist(), batch.prompt_len.tolist()
    index: dict[tuple[int, ...], int] = {}
    row_prompt = [index.setdefault(tuple(row[:n]), len(index)) for row, n in zip(ids, plen)]
    saved = sum(plen) - sum(map(len, index))
    if saved < SHARE_MIN_SAVING * int(batch.seq_len.sum()) or min(plen) < 2 or not _plain_kv_cache(model):
        return None
    return [list(p) for p in index], torch.tensor(row_prompt, device=batch.input_ids.device)


def _plain_kv_cache(model) -> bool:
    """Whether the model caches every layer's keys and values whole (not a sliding window, a
    recurrent state or a DDP wrapper), and runs with a cache at all (no gradient checkpointing)."""
    config = getattr(model, "config", None)
    checkpointing = getattr(model, "is_activation_checkpointing", None)  # older transformers: is_gradient_
    if checkpointing is None:
        checkpointing = getattr(model, "is_gradient_checkpointing", False)
    if config is None or not hasattr(config, "get_text_config") or checkpointing:
        return False
    return all(type(layer) is DynamicLayer for layer in DynamicCache(config=config).layers)


def _shared_prompt_logprobs(model, batch: RolloutBatch, prompts: list[list[int]], row_prompt: Tensor,
                            temperature: float, with_entropy: bool) -> tuple[Tensor, Tensor | None]:
    """`completion_logprobs` computing each distinct prompt once (see the module docstring).

    The prompts but their last token go through the model once, for their keys and values only;
    each row then runs its prompt's last token and its completion but the last token, whose logits
    are exactly the ones that score the completion (all of them: no slice of the logits)."""
    device = batch.input_ids.device
    # -- each distinct prompt but its last token, left padded: keys and values ---------------
    p_width = max(map(len, prompts)) - 1
    p_ids = torch.zeros((len(prompts), p_width), dtype=torch.long)
    p_mask = torch.zeros((len(prompts), p_width), dtype=torch.long)
    for u, p in enumerate(prompts):
        p_ids[u, p_width - len(p) + 1:] = torch.tensor(p[:-1], dtype=torch.long)
        p_mask[u, p_width - len(p) + 1:] = 1
    p_ids, p_mask = p_ids.to(device), p_mask.to(device)
    kwargs = dict(input_ids=p_ids, attention_mask=p_mask, position_ids=(p_mask.cumsum(-1) - 1).clamp_min(0),
                  past_key_values=DynamicCache(config=model.config), use_cache=True)
    try:
        out = model(**kwargs, logits_to_keep=1)  # the logits are not used
    except TypeError:  # a model without `logits_to_keep`
        out = model(**kwargs)
    prompt_kv = [(layer.keys, layer.values) for layer in out.past_key_values.layers]

    # -- each row: [last prompt token, completion but its last token] -> logits of the completion
    c_len = batch.seq_len - batch.prompt_len
    c_width = int(c_len.max())
    cols = torch.arange(c_width, device=device)
    c_mask = cols < c_len[:, None]
    at = batch.prompt_len[:, None] - 1 + torch.arange(c_width + 1, device=device)
    at = at.clamp_max(batch.input_ids.shape[1] - 1)
    window = batch.input_ids.gather(1, at)  # [N, C + 1]: last prompt token, then the completion
    inputs, targets = window[:, :-1], window[:, 1:].masked_fill(~c_mask, 0)
    logps, entropies = [], []
    parts = length_buckets(c_len)
    for rows in parts:
        width, u = int(c_len[rows].max()), row_prompt[rows]
        cache = DynamicCache(config=model.config)
        for layer, (k, v) in enumerate(prompt_kv):
            cache.update(k.index_select(0, u), v.index_select(0, u), layer)
        keep = c_mask[rows, :width]
        logits = model(input_ids=inputs[rows, :width], attention_mask=torch.cat([p_mask[u], keep.long()], dim=1),
                       position_ids=batch.prompt_len[rows, None] - 1 + cols[:width], past_key_values=cache,
                       use_cache=True).logits
        if temperature != 1.0:
            logits = logits / temperature
        logps.append(F.pad(token_logprobs(logits, targets[rows, :width]) * keep, (0, c_width - width)))
        if with_entropy:
            entropies.append(F.pad(entropy_from_logits(logits.detach()) * keep, (0, c_width - width)))
    back = torch.argsort(torch.cat(parts))  # bucket order -> batch order

    # -- back to the batch's columns: completion token j of row i is column prompt_len[i] + j
    start, width = batch.start, batch.input_ids.shape[1] - batch.start
    to = (batch.prompt_len - start)[:, None] + cols  # < width + c_width: padding lands past `width`

    def place(x: Tensor) -> Tensor:
        return x.new_zeros((len(batch), width + c_width)).scatter(1, to, x)[:, :width]

    logp = place(torch.cat(logps)[back])
    return logp, (place(torch.cat(entropies)[back]) if with_entropy else None)


def completion_logits(model, batch: RolloutBatch, temperature: float = 1.0) -> Tensor:
    """Logits / temperature that predict columns ``batch.start:``, in ONE forward (no buckets).

    Shapes: -> [N, L - start, V]; entry j predicts token ``input_ids[:, start + j]``. For the
    methods that need whole distributions (TRPO's exact KL, OREO's KL regulariser).
    """
    ids, start = batch.input_ids, batch.start
    # position start + j - 1 predicts token start + j
    logits = _logits_tail(model, ids, batch.attention_mask, ids.shape[1] - start + 1)[:, :-1]
    return logits / temperature if temperature != 1.0 else logits


def _bucket_logprobs(model, batch: RolloutBatch, temperature: float, with_entropy: bool):
    ids, start = batch.input_ids, batch.start
    logits = completion_logits(model, batch, temperature)
    logp = token_logprobs(logits, ids[:, start:])
    entropy = entropy_from_logits(logits.detach()) if with_entropy else None
    return logp, entropy


def batch_logprobs(model, batch: RolloutBatch, temperature: float, chunk: int, share_prompts: bool = False) -> Tensor:
    """No-grad log-probs of every completion token, [N, L] aligned with input_ids.

    Runs under `torch.inference_mode` over length-sorted chunks of `chunk` rows; the result
    is an ordinary tensor (safe to use as a constant inside an autograd graph).
    """
    out = torch.zeros(batch.input_ids.shape, dtype=torch.float32, device=batch.input_ids.device)
    order = torch.argsort(batch.seq_len, stable=True)
    for rows in order.split(chunk):
        part = batch.select(rows)
        with torch.inference_mode():
            logp, _ = completion_logprobs(model, part, temperature, share_prompts=share_prompts)
        out[rows[:, None], torch.arange(part.start, part.input_ids.shape[1], device=out.device)] = logp
    return out.masked_fill_(~batch.completion_mask, 0.0)
