"""A radix tree of token ids holding the KV cache of prefixes the engine has already computed.

Tree searches (beam search, MCTS, tree of thoughts) continue the same prefixes again and
again: every child of a node shares the node's prompt and partial solution. Passing a
`PrefixCache` to `TransformersEngine.generate` makes the prefill compute only the tokens of a
prompt past its longest cached prefix (automatic prefix caching in the manner of vLLM and
SGLang's RadixAttention; Kwon et al. 2023, Zheng et al. 2024).

* Keys are token ids, not text: a cache hit never depends on how a string re-tokenizes; a
  prefix that tokenizes differently simply misses past the point where the ids diverge.
* Each node stores the keys/values of its own edge only (``[layers, kv_heads, n, head_dim]``),
  so shared prefixes are stored once. Keys are stored after RoPE at their absolute positions
  0..L-1; the engine feeds position ids from the attention mask (``cumsum - 1``), so a
  cached prefix left padded into a batch keeps exactly the positions it was computed at.
* At most `limit` tokens of a prompt are reused (the engine asks for len - 1): the last
  prompt token is always recomputed because its logits start the decode.
* What is stored: every prompt, and each generated row up to (excluding) its last token,
  which was never fed to the model. Rows that ended on EOS are kept only with
  `keep_finished` (no search extends a finished solution; a step cut by the token cap is).
* Capacity is in bytes; when over it the least recently used leaves are evicted (down to
  90 % of capacity), which may turn their parents into leaves that go next.

The cache is valid for one set of weights: `clear()` it after the model changes.
"""
from __future__ import annotations

from typing import Callable

import torch
from transformers.cache_utils import DynamicLayer

Fetch = Callable[[int, int], tuple[torch.Tensor, torch.Tensor]]


class _Node:
    __slots__ = ("tokens", "keys", "values", "children", "parent", "last_used")

    def __init__(self, tokens: tuple[int, ...], keys, values, parent):
        self.tokens, self.keys, self.values, self.parent = tokens, keys, values, parent
        self.children: dict[int, _Node] = {}
        self.last_used = 0

    def nbytes(self) -> int:
        if self.keys is None:
            return 0
        return self.keys.numel() * self.keys.element_size() + self.values.numel() * self.values.element_size()


def _common(edge: tuple[int, ...], tokens: list[int], start: int, stop: int) -> int:
    """Length of the common prefix of `edge` and tokens[start:stop]."""
    m, most = 0, min(len(edge), stop - start)
    while m < most and edge[m] == tokens[start + m]:
        m += 1
    return m


class PrefixCache:
    """Token-id radix tree of KV segments; see the module docstring."""

    def __init__(self, max_bytes: int = 1 << 30, keep_finished: bool = False):
        if max_bytes < 1:
            raise ValueError(f"max_bytes must be >= 1, got {max_bytes}")
        self.max_bytes = max_bytes
        self.keep_finished = keep_finished
        self.clear()

    def clear(self) -> None:
        self._root = _Node((), None, None, None)
        self._tick = 0
        self.num_bytes = 0
        self.num_tokens = 0

    def match(self, tokens: list[int], limit: int) -> tuple[int, torch.Tensor | None, torch.Tensor | None]:
        """Longest cached prefix of tokens[:limit]: (length c, keys, values [layers, h, c, d]) or (0, None, None)."""
        self._tick += 1
        node, i, keys, values = self._root, 0, [], []
        while i < limit:
            child = node.children.get(tokens[i])
            m = _common(child.tokens, tokens, i, limit) if child is not None else 0
            if m == 0:
                break
            child.last_used = self._tick
            keys.append(child.keys[:, :, :m])
            values.append(child.values[:, :, :m])
            i += m
            if m < len(child.tokens):
                break
            node = child
        if not i:
            return 0, None, None
        return i, torch.cat(keys, dim=2), torch.cat(values, dim=2)

    def insert(self, tokens: list[int], fetch: Fetch) -> None:
        """Store `tokens`; `fetch(start, end)` gives the keys/values of tokens[start:end] when needed."""
        self._tick += 1
        node, i = self._root, 0
        while i < len(tokens):
            child = node.children.get(tokens[i])
            if child is None:
                break
            m = _common(child.tokens, tokens, i, len(tokens))
            child.last_used = self._tick
            if m < len(child.tokens):
                child = self._split(child, m)
            node, i = child, i + m
        if i < len(tokens):
            keys, values = fetch(i, len(tokens))
            leaf = _Node(tuple(tokens[i:]), keys.contiguous(), values.contiguous(), node)
            leaf.last_used = self._tick
            node.children[tokens[i]] = leaf
            self.num_bytes += leaf.nbytes()
            self.num_tokens += len(leaf.tokens)
        if self.num_bytes > self.max_bytes:
            self._evict(int(0.9 * self.max_bytes))

    # -- the engine's side: a Hugging Face cache of a batch -----------------------------------

    @staticmethod
    def check(kv_cache) -> None:
        """Only full-attention layers (no sliding windows) can take a reused prefix."""
        layers = kv_cache.layers
        if not layers or any(not isinstance(x, DynamicLayer) or getattr(x, "is_sliding", False) for x in layers):
            raise ValueError("prefix_cache: only models whose layers all use full attention can reuse prefixes")

    @staticmethod
    def preload(kv_cache, hits, past: int) -> None:
        """Write each prompt's matched keys/values (`hits` from `match`) right-aligned into `past`
        columns of an empty batch cache, zeros (masked out) before them."""
        ref = next(h for h in hits if h[0])
        layers, heads, _, dk = ref[1].shape
        if layers != len(kv_cache.layers):
            raise ValueError(f"prefix_cache: holds {layers} layers, the model has {len(kv_cache.layers)}")
        keys = ref[1].new_zeros((len(hits), layers, heads, past, dk))
        values = ref[2].new_zeros((len(hits), layers, heads, past, ref[2].shape[-1]))
        for u, (c, k, v) in enumerate(hits):
            if c:
                keys[u, :, :, past - c:] = k
                values[u, :, :, past - c:] = v
        for i, layer in enumerate(kv_cache.layers):
            layer.update(keys[:, i], values[:, i])

    def store(self, kv_cache, slots, seqs, cols) -> None:
        """Insert sequence `seqs[k]`, whose keys/values sit at batch row `slots[k]`, columns `cols[k]`."""
        layers = kv_cache.layers
        for slot, seq, col in zip(slots, seqs, cols):
            def fetch(a, b, slot=slot, col=col):
                idx = col[a:b]
                return (torch.stack([layer.keys[slot].index_select(-2, idx) for layer in layers]),
                        torch.stack([layer.values[slot].index_select(-2, idx) for layer in layers]))
            self.insert(seq, fetch)

    # -- tree internals -------------------------------------------------------------------

    def _split(self, child: _Node, m: int) -> _Node:
        """Cut `child`'s edge after m tokens; returns the new upper node."""
        upper = _Node(child.tokens[:m], child.keys[:, :, :m].contiguous(), child.values[:, :, :m].contiguous(),
                      child.parent)
        upper.last_used = child.last_used
        child.parent.children[child.tokens[0]] = upper
        child.tokens = child.tokens[m:]
        child.keys = child.keys[:, :, m:].contiguous()
        child.values = child.values[:, :, m:].contiguous()
        child.parent = upper
        upper.children[child.tokens[0]] = child
        return upper

    def _evict(self, target: int) -> None:
        while self.num_bytes > target:
            leaves = sorted(self._leaves(), key=lambda n: n.last_used)
            if not leaves:
                return
            for leaf in leaves:
                if self.num_bytes <= target:
                    return
                del leaf.parent.children[leaf.tokens[0]]
                self.num_bytes -= leaf.nbytes()
                self.num_tokens -= len(leaf.tokens)

    def _leaves(self) -> list[_Node]:
        out, stack = [], list(self._root.children.values())
        while stack:
            node = stack.pop()
            if node.children:
                stack.extend(node.children.values())
            else:
                out.append(node)
        return out
