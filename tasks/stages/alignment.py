"""Alignment RL towards preferences (seed §2.2): one stage, six methods, `method:` picks one.

`dpo` and `orpo` learn offline from the curated preference pairs; `ppo`, `grpo_rm` and `trpo`
sample the alignment prompts and are rewarded by the trained reward model (plus rule rewards
where the method's config lists them); `oreo` learns offline from trajectories the policy
samples once at the start, scored by the reward model. Each method's own section
(`alignment.dpo`, `alignment.ppo`, …) enters the cache key only when it is the chosen one.
With `average_with_start` < 1 the trained weights are then averaged with the starting policy's,
keeping that fraction of the change (less alignment tax). Then the KL to the starting policy and
the reward model's mean score are measured on the held-out preference prompts (`summary.json`),
for the side-by-side comparison.
"""
from __future__ import annotations

import time
from contextlib import closing
from typing import Literal, get_args

from pydantic import Field

from components.config import LoraConfig, RolloutConfig, Section, Source
from components.data.prompts import render_prompt
from components.io import write_json
from components.seeds import derive_seed
from components.training.configs import DPOConfig, GRPORMConfig, OREOConfig, ORPOConfig, PPOConfig, TRPOConfig
from tasks.common import finish, load_policy, publish_rows, read_rows
from tasks.refs import ModelRef
from tasks.stage import StageContext, stage

DATA = {"preference": ("preferences.jsonl", "preference"), "prompts": ("align_prompts.jsonl", "prompt"),
        "trajectory": ("align_prompts.jsonl", "prompt")}


Method = Literal["dpo", "orpo", "ppo", "grpo_rm", "trpo", "oreo"]  # components.training.alignment.ALIGNMENT_METHODS
METHODS = get_args(Method)


class AlignmentConfig(Section):
    method: Method = Field(
        "dpo", description="The alignment method (components.training.alignment); its section below applies.")
    dpo: DPOConfig = Field(default_factory=DPOConfig)
    orpo: ORPOConfig = Field(default_factory=ORPOConfig)
    ppo: PPOConfig = Field(default_factory=PPOConfig)
    grpo_rm: GRPORMConfig = Field(default_factory=GRPORMConfig)
    trpo: TRPOConfig = Field(default_factory=TRPOConfig)
    oreo: OREOConfig = Field(default_factory=OREOConfig)
    oreo_samples: int = Field(4, ge=2, description="OREO: trajectories sampled per alignment prompt, scored by the RM.")
    finetune: Literal["full", "lora", "qlora"] = "full"
    lora: LoraConfig = Field(default_factory=LoraConfig)
    merge_lora: bool = True
    limit: int | None = Field(None, ge=1, description="Use at most this many training rows (pairs or prompts).")
    source: Source = Field(None, description="Training rows instead of the curated file (the method's schema).")
    average_with_start: float = Field(
        1.0, gt=0, le=1, description="Keep this fraction of the trained change: the weights become start + "
        "a * (trained - start), averaged with the starting policy (Lin et al. 2024: less alignment tax for a "
        "little less alignment; components/training/averaging.py). 1 = the trained weights.")
    measure_limit: int = Field(256, ge=1, description="Held-out preference prompts for the final KL and RM score.")
    compare: list[Method] = Field(
        default_factory=list, description="Also run these methods from the same policy and reward model, side by "
        "side, and log one comparison (configs/alignment_compare.yaml).")
    rollout: RolloutConfig = Field(default_factory=RolloutConfig)

    def method_config(self) -> Section:
        return getattr(self, self.method)


def _keyed(cfg: AlignmentConfig) -> dict:
    """The chosen method's section and the shared fields: editing another method's section reruns nothing."""
    return cfg.model_dump(mode="json", exclude=(set(METHODS) - {cfg.method}) | {"compare"})


@stage(config=AlignmentConfig, inputs=("policy", "reward_model", "reference"), optional=("reward_model", "reference"),
       passthrough="policy", reads=("preferences.jsonl", "align_prompts.jsonl", "pref_eval.jsonl", "cold_start.jsonl"),
       evaluate=True, keyed=_keyed)
def alignment(ctx: StageContext, policy: ModelRef, reward_model: ModelRef | None, reference: ModelRef | None):
    """Align the policy to the preference data with the recipe's method (dpo|orpo|ppo|grpo_rm|trpo|oreo)."""
    from components.training.alignment import get_alignment_method
    from components.training.averaging import average_with_start_

    cfg = ctx.cfg
    method = get_alignment_method(cfg.method)
    file, schema = DATA[method.data]
    rows = read_rows(ctx, file, schema, cfg.source, cfg.limit)
    model, tokenizer = load_policy(ctx, policy, cfg.finetune, cfg.lora)
    needs_rm = "reward_fn" in method.inputs or method.data == "trajectory"
    if needs_rm and reward_model is None:
        raise ValueError(f"alignment.method={cfg.method} needs a reward model (run reward_model before it, "
                         "or --reward-model …)")
    reward_fn = _reward_fn(ctx, reward_model, tokenizer) if reward_model is not None else None
    frozen = _frozen(ctx, reference) if reference is not None else None
    t0, sampled = time.perf_counter(), 0
    if method.data == "trajectory":
        rows, sampled = _trajectories(ctx, model, tokenizer, rows, reward_fn)
    replay = _replay(ctx) if "replay" in method.inputs and cfg.method_config().replay_weight else None
    out = method.run(model, tokenizer, rows, cfg.method_config(), ctx.ckpt_dir, ctx.seed, reference=frozen,
                     reward_fn=reward_fn if "reward_fn" in method.inputs else None, replay=replay, log=ctx.log,
                     progress=ctx.progress)
    start = _frozen(ctx, policy) if cfg.average_with_start < 1 or frozen is None else frozen
    average_with_start_(model, start, cfg.average_with_start)
    summary = {"method": cfg.method, "wall_s": time.perf_counter() - t0,
               "tokens_generated": out.tokens_generated + sampled, "average_with_start": cfg.average_with_start,
               **_measure(ctx, model, tokenizer, frozen or start, reward_fn)}
    ctx.log({f"final/{k}": v for k, v in summary.items() if isinstance(v, (int, float))}, out.steps)
    write_json(ctx.out_dir / "summary.json", summary)
    return finish(ctx, model, tokenizer, base=policy, merge=cfg.merge_lora)


def _replay(ctx: StageContext) -> list[dict]:
    """The curated worked solutions as {"prompt", "completion"} rows, for a method's replay term."""
    rows = read_rows(ctx, "cold_start.jsonl", "sft", name="replay")
    return [{"prompt": r["messages"][-2]["content"], "completion": r["messages"][-1]["content"]} for r in rows]


def _frozen(ctx: StageContext, ref: ModelRef):
    model, _ = load_policy(ctx, ref)
    return model.eval().requires_grad_(False)


def _reward_fn(ctx: StageContext, ref: ModelRef, tokenizer):
    """The reward model's score of (raw prompt, completion) pairs, as the methods call it."""
    from transformers import AutoModelForSequenceClassification

    from components.modeling.models import DTYPES, default_device
    from components.modeling.reward_models import score_outcomes

    rm = AutoModelForSequenceClassification.from_pretrained(  # on the policy's device: scoring every rollout
        ref.uri, use_safetensors=True, dtype=DTYPES[ctx.model.dtype]).to(default_device()).eval()
    return lambda prompts, completions: score_outcomes(rm, tokenizer, prompts, completions, batch_size=128)


def _trajectories(ctx: StageContext, model, tokenizer, rows: list[dict], reward_fn) -> tuple[list[dict], int]:
    """OREO's offline data: `oreo_samples` completions per prompt from the starting policy, scored by the RM
    (and the number of tokens sampled for them, counted in the method's compute)."""
    from components.generation import SamplingParams, make_engine

    cfg = ctx.cfg
    prompts = [render_prompt(tokenizer, r["prompt"]) for r in rows]
    with closing(make_engine(cfg.rollout.backend, model, tokenizer, **cfg.rollout.engine_kwargs())) as engine:
        rollout = engine.generate(prompts, SamplingParams(n=cfg.oreo_samples, temperature=1.0, max_new_tokens=64,
                                                          seed=derive_seed(ctx.seed, "oreo-trajectories")),
                                  progress=ctx.progress)
    raw = [rows[i]["prompt"] for i in rollout.prompt_index]
    rewards = reward_fn(raw, rollout.texts)
    trajectories = [{"prompt": p, "completion": c, "reward": float(r)}
                    for p, c, r in zip(raw, rollout.texts, rewards) if c.strip()]  # an empty reply has no steps
    ctx.log({"oreo/trajectories": len(trajectories), "oreo/empty_dropped": len(raw) - len(trajectories)}, 0)
    if not trajectories:
        raise ValueError("alignment.method=oreo: every sampled trajectory was empty; nothing to learn from")
    publish_rows(ctx, trajectories, "oreo_trajectories", schema="trajectory")
    return trajectories, rollout.num_generated_tokens


def _measure(ctx: StageContext, model, tokenizer, reference, reward_fn) -> dict:
    """KL to the reference, and the RM's mean score of the greedy answers of the aligned policy and of the
    reference (`rm_score`, `rm_score_before`), on held-out preference prompts. The reference is the starting
    policy unless the stage was given another one."""
    from components.evaluation.policy_kl import sampled_kl

    prompts = [r["prompt"] for r in read_rows(ctx, "pref_eval.jsonl", "prompt", limit=ctx.cfg.measure_limit,
                                              name="pref_eval")]
    kl = sampled_kl(model, reference, tokenizer, prompts, samples=2, seed=derive_seed(ctx.seed, "kl"))
    metrics = {"kl": kl["kl"], "kl_se": kl["kl_se"]}
    if reward_fn is not None:
        metrics["rm_score"] = _greedy_rm_score(model, tokenizer, prompts, reward_fn)
        metrics["rm_score_before"] = _greedy_rm_score(reference, tokenizer, prompts, reward_fn)
    return metrics


def _greedy_rm_score(model, tokenizer, prompts: list[str], reward_fn) -> float:
    import torch

    from components.generation import SamplingParams, make_engine

    engine = make_engine("transformers", model, tokenizer, batch_size=256)
    with torch.inference_mode():
        greedy = engine.generate([render_prompt(tokenizer, p) for p in prompts],
                                 SamplingParams(n=1, temperature=0.0, max_new_tokens=64))
    scores = reward_fn(prompts, greedy.texts)
    return sum(scores) / len(scores)
