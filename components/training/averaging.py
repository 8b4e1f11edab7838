"""Averaging a fine-tuned model with its starting point: keep a fraction of the change.

    θ ← θ₀ + α (θ − θ₀)          (0 < α ≤ 1; α = 1 leaves the trained model)

Averaging the weights of an RLHF'd model with those of the model it started from moves it
along a path on which the alignment gained is kept better than the abilities lost (Lin et al.
2024, "Mitigating the Alignment Tax of RLHF"; Wortsman et al. 2022's WiSE-FT for fine-tuning):
the new behaviour saturates early along the path, the forgetting grows with the distance. It
costs no training, only one pass over the parameters.

For a peft (LoRA/QLoRA) model the change is the adapters' product s·B·A over frozen base weights,
so scaling every B by α scales the change exactly and the start is not needed.
"""
from __future__ import annotations

import torch


def average_with_start_(model: torch.nn.Module, start: torch.nn.Module | None, alpha: float) -> int:
    """Move `model`'s weights in place to ``start + alpha * (model - start)``; returns the number of
    tensors changed. `start` must have the same parameter names and shapes (unused for a peft model)."""
    if not 0 < alpha <= 1:
        raise ValueError(f"average_with_start_: alpha must lie in (0, 1], got {alpha}")
    if alpha == 1:
        return 0
    changed = 0
    with torch.no_grad():
        if getattr(model, "peft_config", None):
            if any(getattr(c, "modules_to_save", None) for c in model.peft_config.values()):
                raise ValueError("average_with_start_: a peft model with modules_to_save trains full modules "
                                 "too; merge the adapters first or average with finetune=full")
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.mul_(alpha)
                    changed += 1
            if not changed:
                raise ValueError("average_with_start_: the peft model has no LoRA B matrices to scale")
            return changed
        if start is None:
            raise ValueError("average_with_start_: a full model needs its starting weights")
        target = dict(start.named_parameters())
        for name, p in model.named_parameters():
            if name not in target or target[name].shape != p.shape:
                raise ValueError(f"average_with_start_: the start has no parameter {name!r} of shape "
                                 f"{tuple(p.shape)}; it is not the model this one was trained from")
            p.lerp_(target[name].to(device=p.device, dtype=p.dtype), 1 - alpha)
            changed += 1
    return changed
