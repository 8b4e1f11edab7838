"""The trainer's optimizer (`optimizer` of a supervised section): AdamW, or Muon with AdamW.

    adamw  torch.optim.AdamW over every trainable parameter.
    muon   Muon (momentum orthogonalised by Newton-Schulz iterations) over the 2-D hidden weight
           matrices, AdamW over the rest: the input embeddings, the output head, norms, biases and any
           matrix with a dimension of 1 (a value head). Muon's rate is matched to AdamW's update size
           (`adjust_lr_fn="match_rms_adamw"`), so one `lr` and one schedule drive both. `StackedMuon` is
           torch.optim.Muon with its iterations run once per shape on the stacked matrices of that shape.

Both are one `torch.optim.Optimizer` to the trainer: the LR scheduler, `zero_grad`, checkpoints
and resume see the same object either way.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Mapping

import torch

from components.training.precision import native_bf16

OPTIMIZERS = ("adamw", "muon")


def newton_schulz(g: torch.Tensor, coefficients: tuple[float, float, float], steps: int, eps: float,
                  dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """Muon's orthogonalisation of each matrix of a stack `g` (..., rows, cols), in `dtype`: each scaled
    to Frobenius norm 1, then `steps` quintic iterations X <- aX + (bA + cA^2)X with A = XX^T (on the
    wide orientation), which push every singular value towards ~1 (to about 0.7-1.2 with the default
    coefficients) and keep the singular vectors. torch.optim.Muon's iteration (in bfloat16), batched, with
    its fused products: B = bA + cA^2 and aX + BX are one `baddbmm` each (in float32 on the 2-core CPU
    the 28 matrices of the default model orthogonalise in ~21 ms instead of ~30 ms written out)."""
    a, b, c = coefficients
    x = g.to(dtype)
    wide = x.size(-2) <= x.size(-1)
    x = x if wide else x.mT
    x = x / x.norm(dim=(-2, -1), keepdim=True).clamp(min=eps)
    shape = x.shape
    x = x.reshape(-1, *shape[-2:])  # baddbmm takes one batch dimension (a single matrix: a batch of one)
    for _ in range(steps):
        gram = x @ x.mT
        x = torch.baddbmm(x, torch.baddbmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    x = x.reshape(shape)
    return x if wide else x.mT


def newton_schulz_dtype(device_type: str) -> torch.dtype:
    """Where StackedMuon iterates: bfloat16 where its matmuls are native, float32 where it is emulated."""
    return torch.bfloat16 if native_bf16(device_type) else torch.float32


class StackedMuon(torch.optim.Muon):
    """torch.optim.Muon (same arguments, state and update) whose Newton-Schulz iterations run once per
    matrix shape, on the stacked matrices of that shape: a transformer's projections come in three
    or four shapes, so a step makes a few batched products instead of a few per matrix (on the 2-core
    CPU the default model's 28 matrices orthogonalise in about half the time). The iterations run in
    bfloat16 where its matmuls are native (CUDA; a CPU with AVX512-BF16 or AMX) and in float32
    elsewhere, where bfloat16 is emulated and ~17x slower (`precision.native_bf16`)."""

    @torch.no_grad()
    def step(self, closure=None):
        if closure is not None:
            raise ValueError("StackedMuon.step takes no closure")
        for group in self.param_groups:
            params, grads, bufs = [], [], []
            self._init_group(group, params, grads, bufs)
            if not params:
                continue
            if group["adjust_lr_fn"] != "match_rms_adamw":
                raise ValueError("StackedMuon supports adjust_lr_fn='match_rms_adamw' only")
            momentum, lr = group["momentum"], float(group["lr"])
            torch._foreach_lerp_(bufs, grads, 1 - momentum)
            updates = [g.lerp(buf, momentum) for g, buf in zip(grads, bufs)] if group["nesterov"] else bufs
            by_shape = defaultdict(list)
            for i, p in enumerate(params):
                by_shape[tuple(p.shape)].append(i)
            dtype = newton_schulz_dtype(params[0].device.type)
            for shape, idx in by_shape.items():
                ortho = newton_schulz(torch.stack([updates[i] for i in idx]), group["ns_coefficients"],
                                      group["ns_steps"], group["eps"], dtype)
                scaled = lr * 0.2 * max(shape) ** 0.5  # match_rms_adamw: the update's RMS of an AdamW step
                for k, i in enumerate(idx):
                    params[i].mul_(1 - lr * group["weight_decay"])
                    params[i].add_(ortho[k], alpha=-scaled)


def hidden_matrices(modules: Mapping[str, torch.nn.Module]) -> set[int]:
    """ids of the 2-D weight matrices Muon applies to: every 2-D parameter with both dimensions > 1
    that is not a module's input embedding or output head."""
    excluded = set()
    for module in modules.values():
        for getter in ("get_input_embeddings", "get_output_embeddings"):
            layer = getattr(module, getter, lambda: None)()
            if layer is not None:
                excluded.add(id(layer.weight))
    return {id(p) for module in modules.values() for p in module.parameters()
            if p.ndim == 2 and min(p.shape) > 1 and id(p) not in excluded}


class MuonWithAdamW(torch.optim.Optimizer):
    """Muon over the param groups' hidden matrices, AdamW over their other parameters; each group's
    own `lr` (and `name`) carries over to both halves."""

    def __init__(self, groups: list[dict], hidden: set[int], lr: float, weight_decay: float):
        def split(keep) -> list[dict]:
            parts = [{**g, "params": [p for p in g["params"] if keep(id(p))]} for g in groups]
            return [g for g in parts if g["params"]]

        muon_groups, adamw_groups = split(lambda i: i in hidden), split(lambda i: i not in hidden)
        if not muon_groups:
            raise ValueError("optimizer muon: the model has no trainable 2-D hidden weight matrices to apply it to "
                             "(LoRA adapters and heads are not); use optimizer adamw")
        super().__init__(muon_groups + adamw_groups, {"lr": lr, "weight_decay": weight_decay})
        self.muon = StackedMuon(muon_groups, lr=lr, weight_decay=weight_decay, adjust_lr_fn="match_rms_adamw")
        self.adamw = torch.optim.AdamW(adamw_groups, lr=lr, weight_decay=weight_decay) if adamw_groups else None
        self._link()

    def _link(self) -> None:
        """One list of the halves' own group dicts: a scheduler setting `lr` here sets it there."""
        self.param_groups = self.muon.param_groups + (self.adamw.param_groups if self.adamw else [])

    @torch.no_grad()
    def step(self, closure=None):
        if closure is not None:
            raise ValueError("MuonWithAdamW.step takes no closure")
        self.muon.step()
        if self.adamw:
            self.adamw.step()

    def state_dict(self) -> dict:
        return {"muon": self.muon.state_dict(), "adamw": self.adamw.state_dict() if self.adamw else None}

    def load_state_dict(self, state: dict) -> None:
        if set(state) != {"muon", "adamw"}:
            raise ValueError("optimizer muon: the checkpoint's optimizer state was written by another optimizer; "
                             "resume with the optimizer it was trained with, or delete the checkpoints")
        self.muon.load_state_dict(state["muon"])
        if self.adamw:
            self.adamw.load_state_dict(state["adamw"])
        self._link()


def build_optimizer(name: str, groups: list[dict], modules: Mapping[str, torch.nn.Module], lr: float,
                    weight_decay: float) -> torch.optim.Optimizer:
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay)
    if name == "muon":
        return MuonWithAdamW(groups, hidden_matrices(modules), lr, weight_decay)
    raise ValueError(f"optimizer: {name!r} is not one of {OPTIMIZERS}")
