"""vLLM rollout backend (GPU only). `vllm` is imported lazily, inside `VLLMEngine.__init__`.

The policy is loaded into a colocated, in-process `vllm.LLM` from a saved model directory;
`update_weights` pushes the trainer's state_dict into the running vLLM model after each
optimizer step (and drops vLLM's prefix cache, whose KV entries belong to the old weights).

Log-probs differ from `TransformersEngine`'s when top_k / top_p truncate: vLLM's
`processed_logprobs` are taken AFTER top-k/top-p (renormalised over the kept tokens), not
log_softmax(logits / T) before them as `Rollout.logprobs` documents.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
import time

from components.modeling.tokenizer import token_ids

from .sampling import Rollout, SamplingParams


def _request_seed(seed: int, i: int, j: int) -> int:
    d = hashlib.blake2b(f"{seed}:{i}:{j}".encode(), digest_size=8).digest()
    return int.from_bytes(d, "little") & 0x7FFFFFFF


class VLLMEngine:
    """`RolloutEngine` over an in-process `vllm.LLM`.

    model: a saved model directory (str / PathLike) or a Hugging Face model, which is saved
    with `tokenizer` to `model_path` (a temporary directory if not given) for vLLM to load.
    Extra keyword arguments go to `vllm.LLM` (e.g. `gpu_memory_utilization`, `dtype`,
    `max_model_len`, `enable_prefix_caching`).
    """

    def __init__(self, model, tokenizer, model_path: str | None = None, gpu_memory_utilization: float = 0.5,
                 batch_size: int | None = None, device=None, **llm_kwargs):
        try:
            import vllm  # noqa: F401
        except ImportError as exc:
            raise RuntimeError(
                "the 'vllm' rollout backend needs the vllm package, which is not installed "
                "(pip install 'r1flow[vllm]' on a CUDA machine), or use backend='transformers'"
            ) from exc
        import torch

        if not torch.cuda.is_available():
            raise RuntimeError("the 'vllm' rollout backend needs a CUDA GPU and none is available; "
                               "use backend='transformers'")
        # keep the engine core in this process so `update_weights` can reach the model
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")

        self.tokenizer = tokenizer
        if isinstance(model, (str, os.PathLike)):
            path = str(model)
        else:
            path = model_path or tempfile.mkdtemp(prefix="r1flow-vllm-")
            _save_plain(model, tokenizer, path)
        self.model_path = path
        kwargs = dict(model=path, tokenizer=path, gpu_memory_utilization=gpu_memory_utilization,
                      enable_prefix_caching=True, logprobs_mode="processed_logprobs")
        kwargs.update(llm_kwargs)
        try:
            self.llm = vllm.LLM(**kwargs)
        except TypeError:
            # older vLLM without `logprobs_mode`: logprobs are then always at T=1
            kwargs.pop("logprobs_mode", None)
            self.llm = vllm.LLM(**kwargs)

    # ------------------------------------------------------------------------------------

    def _vllm_params(self, params: SamplingParams, i: int, j: int, seed: int | None):
        from vllm import SamplingParams as VSP

        return VSP(
            n=1,
            temperature=params.temperature,
            top_p=params.top_p,
            top_k=params.top_k if params.top_k > 0 else -1,
            max_tokens=params.max_new_tokens,
            stop=list(params.stop) or None,
            include_stop_str_in_output=True,
            seed=_request_seed(seed, i, j) if seed is not None else None,
            logprobs=0,  # the chosen token's log-prob only
            skip_special_tokens=True,
        )

    def generate(self, prompts, params: SamplingParams, progress=False) -> Rollout:
        start = time.perf_counter()
        if prompts and all(isinstance(p, str) for p in prompts):
            prompt_ids = token_ids(self.tokenizer, list(prompts))
        else:
            prompt_ids = [[int(t) for t in p] for p in prompts]
        # one n=1 request per (prompt i, sample j), seeded from (seed, i, j); prefix caching
        # shares the prompt's KV across the G requests of a group
        n = params.n
        inputs = [{"prompt_token_ids": ids} for ids in prompt_ids for _ in range(n)]
        vparams = [self._vllm_params(params, i, j, params.seed) for i in range(len(prompt_ids)) for j in range(n)]
        import torch

        with torch.autocast("cuda", enabled=False):  # a bf16 stage's autocast must not reach vLLM's own kernels
            outputs = self.llm.generate(inputs, vparams, use_tqdm=progress is True)

        rows = dict(prompt_ids=[], completion_ids=[], logprobs=[], texts=[], finish_reasons=[], prompt_index=[])
        for r, out in enumerate(outputs):
            i = r // n
            for comp in out.outputs:
                toks = list(comp.token_ids)
                lps = []
                for t, entry in zip(toks, comp.logprobs or []):
                    lp = entry.get(t) if hasattr(entry, "get") else None
                    lps.append(float(lp.logprob) if lp is not None else float("nan"))
                if comp.finish_reason == "length":
                    reason = "length"
                elif isinstance(comp.stop_reason, str):
                    reason = "stop"
                else:  # EOS (stop_reason None) or a stop token id
                    reason = "eos"
                rows["prompt_ids"].append(list(prompt_ids[i]))
                rows["completion_ids"].append(toks)
                rows["logprobs"].append(lps)
                rows["texts"].append(comp.text)
                rows["finish_reasons"].append(reason)
                rows["prompt_index"].append(i)
        return Rollout(**rows, num_generated_tokens=sum(map(len, rows["completion_ids"])),
                       wall_time_s=time.perf_counter() - start)

    def _model_handle(self):
        engine = self.llm.llm_engine
        paths = (
            lambda: engine.model_executor.driver_worker.worker.model_runner.model,       # V1 in-process
            lambda: engine.engine_core.engine_core.model_executor.driver_worker.worker.model_runner.model,
            lambda: engine.model_executor.driver_worker.model_runner.model,              # V0
        )
        for get in paths:
            try:
                return get()
            except AttributeError:
                continue
        return None

    def close(self) -> None:
        """Drop the vLLM engine and return its cached GPU memory, so the next stage's engine can start."""
        import gc

        import torch

        self.llm = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def update_weights(self, model) -> None:
        """Load the policy's current weights into the running vLLM model."""
        from components.modeling.models import plain_state_dict

        state = plain_state_dict(model)  # a LoRA/QLoRA policy's merged, dequantized weights
        handle = self._model_handle()
        if handle is not None:
            handle.load_weights(state.items())
        elif hasattr(self.llm, "apply_model"):  # multiprocess engine: ship the weights to each worker
            self.llm.apply_model(lambda m: m.load_weights(state.items()))
        else:
            raise RuntimeError(
                "cannot reach the vLLM model to update its weights with this vLLM version; run with "
                "VLLM_ENABLE_V1_MULTIPROCESSING=0 or use backend='transformers'"
            )
        if hasattr(self.llm, "reset_prefix_cache"):
            self.llm.reset_prefix_cache()


def _save_plain(model, tokenizer, path: str) -> None:
    """A plain HF directory vLLM can load: for a peft (LoRA/QLoRA) policy, the base config without
    its quantization and the merged, dequantized weights; `save_pretrained` would write adapters only."""
    from safetensors.torch import save_file

    from components.modeling.models import plain_config, plain_state_dict

    if not hasattr(model, "peft_config"):
        model.save_pretrained(path)
    else:
        plain_config(model).save_pretrained(path)
        if getattr(model.get_base_model(), "generation_config", None) is not None:
            model.get_base_model().generation_config.save_pretrained(path)
        state = plain_state_dict(model)
        seen = {}
        for k, v in list(state.items()):  # tied weights: safetensors refuses shared storage
            if v.data_ptr() in seen:
                state[k] = v.clone()
            seen[v.data_ptr()] = k
        save_file({k: v.contiguous().cpu() for k, v in state.items()}, f"{path}/model.safetensors")
    tokenizer.save_pretrained(path)
