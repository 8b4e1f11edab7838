"""Mixed precision (`model.mixed_precision`): matmuls in bfloat16, everything that accumulates in float32.

Inside `mixed_precision("bf16")` every forward and backward runs its matmuls and attention in
bfloat16 (`torch.autocast`): the weights, their gradients and AdamW's state stay in the model's
own dtype (float32), and the ops autocast keeps in float32 (norms, softmax, losses) stay there.
A stage runs entirely inside it (tasks/stage_task.py), so a policy's training forward and the
no-grad forwards it is compared with (old and reference log-probs) share one numerical path.
Rollouts opt out (`components.generation.engine`): sampling decodes in the model's dtype, as
vLLM decodes in its own, and held-out evaluation is unaffected.

On CPU this pays only with AVX512-BF16 or AMX (`native_bf16`; otherwise bfloat16 matmuls are
emulated and slower, and a stage run under it warns once); on GPUs it is the usual way to train.
"""
from __future__ import annotations

import functools
import warnings
from contextlib import contextmanager, nullcontext

import torch

MODES = ("no", "bf16")


@functools.cache
def native_bf16(device_type: str) -> bool:
    """Whether bfloat16 matmuls run natively on `device_type`: on CUDA, yes; on a CPU only with
    AVX512-BF16 or AMX. Elsewhere PyTorch emulates them, far slower than float32: on an AVX2-only
    2-core EPYC, Muon's iterations over the default model's 28 matrices took 879 ms in bfloat16 and
    51 ms in float32 (docs/performance.md, "Muon on a CPU without bfloat16")."""
    if device_type == "cuda":
        return True
    if device_type != "cpu":
        return False
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # torch.cpu's cpuinfo flags
    return any(getattr(torch.cpu, name, lambda: False)() for name in probes)


@contextmanager
def mixed_precision(mode: str, device_type: str | None = None):
    """Run the body under `mode` ("no" or "bf16") on `device_type` (default: the training device's)."""
    if mode not in MODES:
        raise ValueError(f"mixed_precision: {mode!r} is not one of {MODES}")
    if device_type is None:
        from components.modeling.models import default_device

        device_type = torch.device(default_device()).type
    if mode == "bf16" and not native_bf16(device_type):
        warnings.warn(f"model.mixed_precision bf16 on a {device_type} without native bfloat16 matmuls (AVX512-BF16 "
                      "or AMX on a CPU): they are emulated and run slower than float32; use mixed_precision no",
                      stacklevel=3)
    # No weight-cast cache: autocast keeps the bf16 copy of a weight until its OUTERMOST region
    # exits, and a stage-long region would train on the copies of the first forward's weights
    # forever (optimizer steps would never reach the forwards). Casting afresh per use costs
    # what a per-step region costs: each weight is cast once per forward.
    context = (torch.autocast(device_type, dtype=torch.bfloat16, cache_enabled=False) if mode == "bf16"
               else nullcontext())
    with context:
        yield
