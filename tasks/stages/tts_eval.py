"""Test-time-scaling evaluation (seed §4): search strategies × budgets on the held-out problems.

The policy searches; a learned verifier scores (an outcome model of correctness for best-of-N if
one is given, else the process RM's aggregated step scores; the process RM for step-level
search) or the policy's own votes decide — never the answer checker, which grades only the final
answers. (The preference reward model is not a correctness verifier: it scores the house rules.) Logged: accuracy with its interval and compute per (strategy, budget), the
accuracy-versus-tokens plot, a table of problems where strategies disagree and, when
compute-optimal scaling is configured, its fitted plan and its frontier against best-of-N.
"""
from __future__ import annotations

import hashlib
import json
from contextlib import closing
from typing import Literal

import mlflow
from pydantic import Field

from components.config import RolloutConfig
from components.evaluation.tts_config import TTSConfig
from tasks.common import load_policy, read_rows
from tasks.refs import EvalRef, ModelRef
from tasks.stage import StageContext, stage



class TTSStageConfig(TTSConfig):
    rollout: RolloutConfig = Field(default_factory=RolloutConfig, description="How the policy samples.")
    outcome_agg: Literal["last", "min", "prod"] = Field("last", description="Without an outcome verifier, a completion's score is its process "
                             "verifier's step scores aggregated by this (last | min | prod).")


@stage(config=TTSStageConfig, inputs=("policy", "verifier", "process_verifier"),
       optional=("verifier", "process_verifier"), reads=("eval.jsonl",))
def tts_eval(ctx: StageContext, policy: ModelRef, verifier: ModelRef | None, process_verifier: ModelRef | None):
    """Accuracy against compute for every configured search strategy and budget (verifiers: the RMs)."""
    from components.evaluation.tts_eval import evaluate_tts
    from components.generation import make_engine
    from components.search.policy import make_toolkit
    from components.search.verifiers import load_outcome_verifier, load_process_verifier, process_outcome

    cfg = ctx.cfg
    rows = read_rows(ctx, "eval.jsonl", "prompt_answer", name="eval")
    model, tokenizer = load_policy(ctx, policy)
    score_steps = load_process_verifier(process_verifier.uri, tokenizer) if process_verifier else None
    score = load_outcome_verifier(verifier.uri, tokenizer) if verifier else None
    if score is None and score_steps is not None:
        score = process_outcome(score_steps, cfg.outcome_agg, cfg.search.step_sep)
    with closing(make_engine(cfg.rollout.backend, model, tokenizer, **cfg.rollout.engine_kwargs())) as engine:
        tools = make_toolkit(engine, tokenizer, cfg.search, system_prompt=cfg.system_prompt, score=score,
                             score_steps=score_steps)
        result = evaluate_tts(rows, tools, tokenizer, cfg, ctx.out_dir / "tts", log=ctx.log, progress=ctx.progress)
    mlflow.log_artifacts(str(ctx.out_dir / "tts"), "tts")
    metrics = {}
    for r in result["rows"]:
        cell = f"{r['strategy']}/n{r['budget']}"  # MLflow keys allow no '@'

        metrics.update({f"{cell}/accuracy": r["accuracy"], f"{cell}/accuracy_se": r["accuracy_se"],
                        f"{cell}/tokens": r["tokens"], f"{cell}/verifier_calls": r["verifier_calls"]})
    if result["frontier"]:
        metrics.update({f"frontier/{k}": v for k, v in result["frontier"].items() if isinstance(v, (int, float))})
    ctx.log(metrics, 0)
    digest = hashlib.sha256(json.dumps(metrics, sort_keys=True).encode()).hexdigest()
    return EvalRef(model=policy, metrics=metrics, run_id=ctx.run_id, digest=digest,
                   files={"accuracy_vs_tokens.png": str(result["paths"]["plot"])})
