"""The trainer's optimizer (`optimizer` of a supervised section): AdamW, or Muon with AdamW.

    adamw  torch.optim.AdamW over every trainable parameter.
    muon   torch.optim.Muon (momentum orthogonalised by Newton-Schulz iterations) over the 2-D hidden
           weight matrices, AdamW over the rest: the input embeddings, the output head, norms, biases
           and any matrix with a dimension of 1 (a value head). Muon's rate is matched to AdamW's update
           size (`adjust_lr_fn="match_rms_adamw"`), so one `lr` and one schedule drive both.

Both are one `torch.optim.Optimizer` to the trainer: the LR scheduler, `zero_grad`, checkpoints
and resume see the same object either way.
"""
from __future__ import annotations

from typing import Mapping

import torch

OPTIMIZERS = ("adamw", "muon")


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
        self.muon = torch.optim.Muon(muon_groups, lr=lr, weight_decay=weight_decay, adjust_lr_fn="match_rms_adamw")
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
