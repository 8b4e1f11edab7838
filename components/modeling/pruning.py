"""A smaller model cut out of a trained one: width and depth pruning by activation importance.

Minitron (Muralidharan et al. 2024, "Compact Language Models via Pruning and Knowledge
Distillation") starts a student from its teacher's own weights rather than from noise: rank the
teacher's hidden channels, attention heads, MLP neurons and layers on a small calibration batch,
keep the most important ones, and let distillation (or a short continued pretraining) heal the
rest. Here, from one forward pass of the teacher:

- a hidden (embedding) channel's importance is the mean |activation| of its column at the output
  of every RMSNorm (each layer's two and the final one), summed over the norms (Minitron §2.2);
- an attention head's is the mean L2 norm of its slice of the attention output (the input of
  `o_proj`); under grouped-query attention a key/value group is kept or cut whole, scored by the
  sum of its query heads;
- an MLP neuron's is the mean |act(gate) · up| (the input of `down_proj`);
- a layer's is its block influence (ShortGPT, Men et al. 2024): 1 − cos(input, output) of its
  hidden states, mean over tokens; the layers that change the residual stream least go first.

Heads are cut whole, never narrowed: the student keeps the teacher's head width, so rotary
position frequencies stay those each kept dimension was trained with. A student `arch` therefore
needs `hidden_size / num_heads` equal to the teacher's head width (3 heads of 32 for a 96-wide
student of a teacher with 4 heads of 32). Supported: Llama-shaped decoders (Llama, Mistral,
Qwen2/3 and the like: `model.layers[i].self_attn.{q,k,v,o}_proj`, `mlp.{gate,up,down}_proj`),
tied or untied embeddings, projection biases; anything else is refused by name.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

# Where each hidden (H), attention-row (Q: query heads, K: key/value heads) and neuron (N) index
# set applies, per parameter suffix: (rows, columns). None: the dimension is kept whole.
_SLICES = {
    "embed_tokens.weight": (None, "H"),
    "lm_head.weight": (None, "H"),
    "norm.weight": ("H",),
    "input_layernorm.weight": ("H",),
    "post_attention_layernorm.weight": ("H",),
    "self_attn.q_proj.weight": ("Q", "H"), "self_attn.q_proj.bias": ("Q",),
    "self_attn.k_proj.weight": ("K", "H"), "self_attn.k_proj.bias": ("K",),
    "self_attn.v_proj.weight": ("K", "H"), "self_attn.v_proj.bias": ("K",),
    "self_attn.o_proj.weight": ("H", "Q"), "self_attn.o_proj.bias": ("H",),
    "mlp.gate_proj.weight": ("N", "H"),
    "mlp.up_proj.weight": ("N", "H"),
    "mlp.down_proj.weight": ("H", "N"),
    "self_attn.q_norm.weight": (None,), "self_attn.k_norm.weight": (None,),  # per head width (Qwen3): kept whole
}


class PruningError(ValueError):
    """The teacher cannot be pruned to the requested shape."""


@dataclass
class Importance:
    """Scores from one calibration pass: hidden [d]; per layer, key/value groups [n_kv] and neurons
    [f]; layers [L] (block influence)."""

    hidden: torch.Tensor
    groups: list[torch.Tensor]
    neurons: list[torch.Tensor]
    layers: torch.Tensor


def top_k(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k largest scores, in increasing index order (ties: the lower index)."""
    order = sorted(range(len(scores)), key=lambda i: (-float(scores[i]), i))
    return torch.tensor(sorted(order[:k]), dtype=torch.long)


_PARTS = ("input_layernorm", "post_attention_layernorm", "self_attn.o_proj", "mlp.down_proj")


def _has(module, path: str) -> bool:
    for name in path.split("."):
        module = getattr(module, name, None)
    return module is not None


def _layers(model):
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    if layers is None or not _has(inner, "norm") or not all(_has(layer, p) for layer in layers for p in _PARTS):
        raise PruningError(f"cannot prune a {type(model).__name__}: pruning supports Llama-shaped decoders "
                           f"(model.norm, model.layers[i].{{{', '.join(_PARTS)}}})")
    return inner, layers


def head_width(config) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def kv_heads(config) -> int:
    """Key/value heads (as many as query heads without grouped-query attention)."""
    return getattr(config, "num_key_value_heads", None) or config.num_attention_heads


@torch.no_grad()
def importance(model, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> Importance:
    """Score the model's channels, heads, neurons and layers on calibration batches of
    (input_ids, attention_mask), each [B, T]: means over every valid token of all of them."""
    inner, layers = _layers(model)
    cfg = model.config
    hd, n_kv = head_width(cfg), kv_heads(cfg)
    n = len(layers)
    sums = {"hidden": torch.zeros(cfg.hidden_size), "heads": [0.0] * n, "neurons": [0.0] * n, "layers": [0.0] * n}
    valid = None

    def add(key, i, x):  # the sum over valid tokens of x [B, T, ...]
        total = x[valid].double().sum(0).cpu()
        if i is None:
            sums[key] = sums[key] + total
        else:
            sums[key][i] = sums[key][i] + total

    def on_norm(_m, _args, out):
        add("hidden", None, out.abs())

    def on_attention(i):
        return lambda _m, args: add("heads", i, args[0].view(*args[0].shape[:-1], -1, hd).norm(dim=-1))

    def on_mlp(i):
        return lambda _m, args: add("neurons", i, args[0].abs())

    def on_layer(i):
        def hook(_m, args, kwargs, out):
            x_in, x_out = args[0] if args else kwargs["hidden_states"], out[0] if isinstance(out, tuple) else out
            add("layers", i, 1 - F.cosine_similarity(x_in.float(), x_out.float(), dim=-1))
        return hook

    handles = [inner.norm.register_forward_hook(on_norm)]
    for i, layer in enumerate(layers):
        handles += [layer.input_layernorm.register_forward_hook(on_norm),
                    layer.post_attention_layernorm.register_forward_hook(on_norm),
                    layer.self_attn.o_proj.register_forward_pre_hook(on_attention(i)),
                    layer.mlp.down_proj.register_forward_pre_hook(on_mlp(i)),
                    layer.register_forward_hook(on_layer(i), with_kwargs=True)]
    tokens = 0
    try:
        for input_ids, attention_mask in batches:
            valid = attention_mask.bool().to(model.device)
            tokens += int(valid.sum())
            model(input_ids=input_ids.to(model.device), attention_mask=attention_mask.to(model.device),
                  use_cache=False)
    finally:
        for h in handles:
            h.remove()
    if not tokens:
        raise PruningError("no calibration tokens: pruning needs at least one non-empty document")
    heads = [(h / tokens).float() for h in sums["heads"]]
    return Importance(hidden=(sums["hidden"] / tokens).float(),
                      groups=[h.view(n_kv, -1).sum(-1) for h in heads],  # a group's query heads are adjacent
                      neurons=[(x / tokens).float() for x in sums["neurons"]],
                      layers=torch.tensor([float(x) / tokens for x in sums["layers"]]))


def pruned_config(config, arch):
    """The teacher's config at the student's width and depth (same class, head width and vocabulary)."""
    hd, n_heads, n_kv = head_width(config), config.num_attention_heads, kv_heads(config)
    if arch.hidden_size % hd:
        raise PruningError(f"student_base.arch.hidden_size: {arch.hidden_size} is not a whole number of the teacher's "
                           f"heads of width {hd}; pruning keeps whole heads (e.g. hidden_size {hd * (n_heads - 1)}, "
                           f"num_heads {n_heads - 1})")
    heads = arch.hidden_size // hd
    if arch.num_heads != heads:
        raise PruningError(f"student_base.arch.num_heads: {arch.num_heads} heads of hidden_size {arch.hidden_size} "
                           f"are not {hd} wide, the teacher's head width; pruning keeps whole heads: num_heads {heads}")
    group = n_heads // n_kv
    limits = {"hidden_size": (arch.hidden_size, config.hidden_size), "num_heads": (heads, n_heads),
              "intermediate_size": (arch.intermediate_size, config.intermediate_size),
              "num_layers": (arch.num_layers, config.num_hidden_layers)}
    for field, (want, have) in limits.items():
        if want > have:
            raise PruningError(f"student_base.arch.{field}: {want} is larger than the teacher's {have}")
    if heads % group:
        raise PruningError(f"student_base.arch.num_heads: {heads} is not a whole number of the teacher's key/value "
                           f"groups of {group} query heads")
    student = config.__class__.from_dict(config.to_dict())
    student.hidden_size, student.intermediate_size = arch.hidden_size, arch.intermediate_size
    student.num_hidden_layers, student.num_attention_heads = arch.num_layers, heads
    student.num_key_value_heads, student.head_dim = heads // group, hd
    return student


def _rows(groups: torch.Tensor, per_group: int, hd: int) -> torch.Tensor:
    """Row indices of whole groups of `per_group` heads of width `hd`."""
    return torch.cat([torch.arange(g * per_group * hd, (g + 1) * per_group * hd) for g in groups.tolist()])


def pruned_state_dict(state: dict[str, torch.Tensor], config, keep_layers: torch.Tensor, keep_hidden: torch.Tensor,
                      keep_groups: list[torch.Tensor], keep_neurons: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """The teacher's weights sliced to the kept layers (renumbered 0..), channels, groups and neurons.

    `config` is the teacher's; `keep_groups[j]` / `keep_neurons[j]` belong to kept layer j.
    """
    hd, group = head_width(config), config.num_attention_heads // kv_heads(config)
    old_to_new = {int(old): new for new, old in enumerate(keep_layers)}
    out = {}
    for name, tensor in state.items():
        layer, suffix = _split(name)
        if layer is not None and layer not in old_to_new:
            continue
        index = {"H": keep_hidden}
        if layer is not None:
            j = old_to_new[layer]
            index |= {"Q": _rows(keep_groups[j], group, hd), "K": _rows(keep_groups[j], 1, hd), "N": keep_neurons[j]}
            name = name.replace(f"layers.{layer}.", f"layers.{j}.", 1)
        dims = _SLICES.get(suffix if layer is not None else ".".join(name.split(".")[-2:]))
        if dims is None:
            raise PruningError(f"cannot prune parameter {name!r}: not a Llama-shaped decoder's")
        for axis, role in enumerate(dims):
            if role is not None:
                tensor = tensor.index_select(axis, index[role].to(tensor.device))
        out[name] = tensor.contiguous()
    return out


def _split(name: str) -> tuple[int | None, str]:
    """(layer index, the rest) of a parameter name: 'model.layers.3.mlp.up_proj.weight' -> (3, 'mlp.up_proj.weight')."""
    parts = name.split(".")
    if "layers" in parts:
        i = parts.index("layers")
        if i + 1 < len(parts) and parts[i + 1].isdigit():
            return int(parts[i + 1]), ".".join(parts[i + 2:])
    return None, name


@dataclass
class Cut:
    """What a pruning kept of its teacher: layer indices and, out of how many, channels, heads, neurons."""

    layers: list[int]
    of_layers: int
    hidden: tuple[int, int]
    heads: tuple[int, int]
    neurons: tuple[int, int]

    def summary(self) -> str:
        return (f"layers {', '.join(map(str, self.layers))} of {self.of_layers}, {self.hidden[0]} of {self.hidden[1]} "
                f"channels, {self.heads[0]} of {self.heads[1]} heads, {self.neurons[0]} of {self.neurons[1]} neurons "
                "a layer")


def prune(model, arch, batches: list[tuple[torch.Tensor, torch.Tensor]]):
    """(student, Cut): a new model of the teacher's class at `arch`'s width and depth, cut out of
    `model` by the importance of its parts on calibration batches of (input_ids, attention_mask),
    and what it kept. `model` is left as it was."""
    _layers(model)  # a model of another shape, then a shape that cannot be cut, fail before any forward pass
    config = model.config
    student_config = pruned_config(config, arch)
    was_training = model.training
    model.eval()
    try:
        scores = importance(model, batches)
    finally:
        model.train(was_training)
    group = config.num_attention_heads // kv_heads(config)
    keep_layers = top_k(scores.layers, arch.num_layers)
    keep_hidden = top_k(scores.hidden, arch.hidden_size)
    keep_groups = [top_k(scores.groups[i], student_config.num_attention_heads // group) for i in keep_layers.tolist()]
    keep_neurons = [top_k(scores.neurons[i], arch.intermediate_size) for i in keep_layers.tolist()]
    state = pruned_state_dict(model.state_dict(), config, keep_layers, keep_hidden, keep_groups, keep_neurons)
    student = model.__class__(student_config).to(device=model.device, dtype=next(model.parameters()).dtype)
    missing, unexpected = student.load_state_dict(state, strict=False)
    tied = getattr(student_config, "tie_word_embeddings", False)
    if unexpected or [k for k in missing if not (tied and k == "lm_head.weight")]:
        raise PruningError(f"pruned weights do not fit {type(student).__name__}: missing {missing}, "
                           f"unexpected {unexpected}")
    if tied:
        student.tie_weights()
    cut = Cut(layers=keep_layers.tolist(), of_layers=config.num_hidden_layers,
              hidden=(arch.hidden_size, config.hidden_size),
              heads=(student_config.num_attention_heads, config.num_attention_heads),
              neurons=(arch.intermediate_size, config.intermediate_size))
    return student, cut
