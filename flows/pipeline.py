"""The R1 outline (seed §2.3) as one Prefect flow: which model feeds which stage, one line each.

A stage the recipe does not list in `run.stages` hands its input on unchanged, so one outline
serves every recipe (start from a hub model, skip rejection sampling, …). Every model a stage
produces is scored on the held-out set; the final one becomes the registry's `champion` only if
its held-out accuracy is not below the current champion's. The flow returns the run's summary
(`PipelineRun.report`).
"""
# No `from __future__ import annotations` here: `r1flow serve` runs the flow from a pickled copy in a
# spawned process, where the parameter types must be objects, not names to resolve (KeyError / not defined).
from prefect import flow

from tasks.compare import compare_alignment
from tasks.flow_names import pipeline_run_name
from tasks.pipeline import pipeline, starting_model
from tasks.recipe import Recipe
from tasks.stages.alignment import alignment
from tasks.stages.base import base
from tasks.stages.cold_start import cold_start
from tasks.stages.distill import distill, distill_control, student_base
from tasks.stages.reasoning_rl import cold_start_rl, reasoning_rl
from tasks.stages.rejection_sampling import rejection_sampling
from tasks.stages.reward_model import process_reward_model, reward_model
from tasks.stages.sft import sft
from tasks.stages.tts_eval import tts_eval


@flow(name="r1_pipeline", flow_run_name=pipeline_run_name, log_prints=True)
def r1_pipeline(recipe: Recipe, root: str = ".") -> dict:
    """Cold start → rejection sampling + SFT → reasoning RL → alignment RL → distillation → TTS evaluation."""
    with pipeline(recipe, root) as run:
        start = starting_model(recipe) or base()                  # a named model, or pretrain a tiny one
        policy = cold_start(policy=start)                         # §2.3.1 SFT on curated worked solutions
        policy = cold_start_rl(policy=policy)                     #   (optional) GRPO on the cold-start prompts
        samples = rejection_sampling(policy=policy)               # §2.3.3 K samples, keep the verified ones
        policy = sft(policy=policy, dataset=samples)              #   SFT on them
        reasoner = reasoning_rl(policy=policy)                    # §2.3.2 GRPO with rule-based rewards
        rm = reward_model(policy=reasoner)                        # §2.1 Bradley–Terry / Plackett–Luce, gated
        prm = process_reward_model(policy=reasoner)               #   step labels from the policy's rollouts
        aligned = alignment(policy=reasoner, reward_model=rm)     # §2.2 dpo | orpo | ppo | grpo_rm | trpo | oreo
        compare_alignment(run, alignment, reasoner, rm)           #   (recipe's alignment.compare) side by side
        small = student_base(teacher=start)                       # §2.3.5 a smaller model, same tokenizer
        student = distill(teacher=aligned, student=small)         #   trained on the final model's generations
        distill_control(student=small)                            #   the same student on curated data alone
        tts_eval(policy=aligned, process_verifier=prm)            # §4 accuracy against test-time compute
        tts_eval(policy=student, process_verifier=prm, label="tts_eval/student")  #   of both final models
        run.gate_champion(aligned)                                # alias `champion` moves only if it is no worse
    return run.report() | {"final": aligned.uri if aligned else None, "student": student.uri if student else None}
