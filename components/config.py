"""Typed configuration: the sections a recipe is made of, and reading a recipe file.

A recipe is one YAML file: `run`, `data` and `model` sections, then one section per stage,
named after the stage and typed by the config class the stage declares (the `Recipe` class is
assembled from the stage registry in `tasks/recipe.py`). A recipe may start from another with
``extends: other.yaml`` (a path relative to it): its mappings are merged into the other's, key by
key, so a variant states only what differs. `load_tree(path, overrides)` reads the YAML and
applies `--set a.b=c` overrides (values parsed as YAML scalars); `validate`
turns pydantic errors into one line per field naming the file and the dotted path, e.g.
``configs/x.yaml: cold_start.lr: Input should be greater than 0``. Unknown fields are errors,
never silently ignored.
"""
from __future__ import annotations

import difflib
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin

import yaml
from pydantic import (AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator,
                      model_validator)

from components.data.arithmetic import LEVELS, level_draws


class RecipeError(ValueError):
    """A recipe that cannot be loaded; the message names the file and field."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_a_number(cls, value: Any, info) -> Any:
        """`steps: true` or `levels: [1, true]` is a typo, not 1 (pydantic's lax mode would read it so)."""
        annotation = cls.model_fields[info.field_name].annotation
        if isinstance(value, bool) and _number(annotation):
            raise ValueError(f"expected a number, got {str(value).lower()}")
        if isinstance(value, list) and get_origin(annotation) is list and _number(get_args(annotation)[0]):
            for i, item in enumerate(value):
                if isinstance(item, bool):
                    raise ValueError(f"item {i}: expected a number, got {str(item).lower()}")
        return value


def _number(annotation: Any) -> bool:
    """Whether a field typed `annotation` holds a number and never a boolean (int, float, int | None…)."""
    kinds = set(get_args(annotation)) or {annotation}
    return bool not in kinds and bool(kinds & {int, float})


def registered(registry: str, kind: str):
    """A str field whose value must name an entry of the `components.algorithms` registry `registry`
    (the error lists them). Checked when a recipe sets the field (pydantic does not validate
    defaults), so loading a recipe imports no torch unless it names a variant."""
    def check(value: str) -> str:
        import components.algorithms as algorithms

        names = getattr(algorithms, registry)
        if value not in names:
            raise ValueError(f"unknown {kind} {value!r}; choose from {sorted(names)}")
        return value

    return Annotated[str, AfterValidator(check)]


class DataSource(Section):
    """Where a stage's rows come from instead of its curated file. A plain string is the path:
    ``source: rows.jsonl`` is ``source: {path: rows.jsonl}``."""

    path: str = Field(..., min_length=1, description="A local .jsonl/.json/.parquet/.csv file, a folder written by "
                      "Dataset(Dict).save_to_disk, or hf:org/name (a Hugging Face Hub dataset).")
    config: str | None = Field(None, description="The dataset's configuration (hf: sources), e.g. main for gsm8k.")
    split: str | None = Field(None, description="The split to read (hf: and DatasetDict sources; default: train, "
                              "and test for evaluation).")
    revision: str | None = Field(None, description="The hub dataset's git revision (a commit, tag or branch) to "
                                 "pin what is read (hf: sources).")
    columns: dict[str, str] = Field(default_factory=dict, description="Input columns renamed before the stage's "
                                    "schema applies, e.g. {question: prompt}.")


def _as_source(value):
    return {"path": value} if isinstance(value, str) else value


Source = Annotated[DataSource | None, BeforeValidator(_as_source)]


INJECTED_REWARDS = ("reward_model",)  # bound at run time by the stages that hold a trained reward model


def _known_reward(value: str) -> str:
    from components.rewards.functions import REWARDS

    if value not in REWARDS and value not in INJECTED_REWARDS:
        raise ValueError(f"unknown reward {value!r}; choose from {sorted({*REWARDS, *INJECTED_REWARDS})}")
    return value


RewardName = Annotated[str, AfterValidator(_known_reward)]
LossAggregation = registered("AGGREGATIONS", "loss aggregation")
AdvantageEstimator = registered("ADVANTAGE_ESTIMATORS", "advantage estimator")
PolicyLoss = registered("POLICY_LOSSES", "policy loss")


class RunConfig(Section):
    name: str = Field("default", description="Recipe name: MLflow run name and registered-model prefix.")
    seed: int = Field(0, description="Seed for every random choice in the pipeline.")
    output_dir: str = Field("runs", description="Where stage outputs (models, derived data) are written, "
                            "relative to the project folder.")
    experiment: str = Field("r1flow", description="MLflow experiment name.")
    stages: list[str] = Field(
        default_factory=lambda: ["base", "cold_start"],
        description="The stages of the R1 outline (flows/pipeline.py) to run; the others pass their input on. "
        "The outline fixes the order; every model a stage produces is evaluated on the held-out set.",
    )
    num_processes: int = Field(
        1, ge=1, description="Data-parallel processes for the supervised stages (base, cold_start, sft, "
        "student_base, distill_control): above 1 each runs under `accelerate launch` and every optimizer step's "
        "micro-batches are split across the processes (same global batch batch_size x grad_accum, so a stage's "
        "grad_accum must be a multiple of it; the result equals one process's up to float rounding). Use the "
        "GPU count on a GPU machine. The other stages (RL, rejection sampling, reward models, alignment, `distill`, "
        "evaluation) run in one process.",
    )
    accelerate_config: str | None = Field(
        None, description="The `accelerate launch` config file used when num_processes > 1, relative to the "
        "project folder (default: r1flow's infra/accelerate/cpu_ddp.yaml without a GPU, ddp.yaml with one). Every "
        "process holds the whole model, as in DDP: cpu_ddp.yaml for CPU tests, ddp.yaml when the model, its "
        "gradients and AdamW state (~16 bytes/parameter) fit one GPU: full fine-tuning up to ~1B, LoRA/QLoRA "
        "beyond. The sharded configs (zero2.yaml, fsdp.yaml, zero3.yaml) are refused until the trainer shards the "
        "model. Precision comes from model.dtype and model.mixed_precision, not the config's mixed_precision.",
    )


class DataConfig(Section):
    dir: str = Field("data", description="The DVC-tracked directory of curated data, versioned by <dir>.dvc.")
    seed: int = Field(1234, description="Seed of the synthetic data generator.")
    levels: list[int] = Field(default_factory=lambda: sorted(LEVELS), description="Difficulty levels used.")
    n_pretrain: int = Field(60_000, ge=1, description="Pretraining documents for the base model.")
    n_cold_start: int = Field(400, ge=1, description="Curated worked solutions for cold start.")
    n_rl: int = Field(4_000, ge=1, description="RL prompts with gold answers.")
    n_general: int = Field(1_200, ge=1, description="Non-reasoning chat rows mixed into SFT (general.jsonl).")
    n_preferences: int = Field(2_000, ge=1, description="Preference pairs ordered by the house rules.")
    n_rankings: int = Field(1_000, ge=1, description="Rankings of K=3 replies, for Plackett–Luce.")
    n_align: int = Field(2_000, ge=1, description="Prompts for the online alignment methods.")
    n_eval: int = Field(600, ge=1, description="Held-out evaluation problems.")
    n_pref_eval: int = Field(600, ge=1, description="Held-out prompts for the true preference rate.")
    direct_answer_fraction: float = Field(
        0.3, ge=0, le=1, description="Share of pretraining documents that are chat turns with a direct answer."
    )
    pretrain_level_weights: dict[int, int] = Field(
        default_factory=dict,
        description="Relative weight of each level among the pretraining documents (integer >= 1; a level not named "
        "weighs 1). The facts of the hardest level are what a tiny base learns last: {4: 3} gives level 4 half the corpus.",
    )

    @field_validator("levels")
    @classmethod
    def _known_levels(cls, v: list[int]) -> list[int]:
        bad = [x for x in v if x not in LEVELS]
        if bad or not v:
            raise ValueError(f"unknown level(s) {bad or v}; choose from {sorted(LEVELS)}")
        return v

    @model_validator(mode="after")
    def _weights_name_levels(self) -> "DataConfig":
        try:
            level_draws(self.levels, self.pretrain_level_weights)
        except ValueError as e:
            raise ValueError(f"pretrain_level_weights: {e}") from None
        return self


class ArchConfig(Section):
    """Shape of the tiny Llama built from scratch when `model.name_or_path` is empty."""

    hidden_size: int = Field(192, ge=8)
    num_layers: int = Field(5, ge=1)
    num_heads: int = Field(4, ge=1)
    intermediate_size: int = Field(512, ge=8)
    max_position_embeddings: int = Field(256, ge=16)
    vocab_size: int = Field(96, ge=32, description="BPE vocabulary size of the locally trained tokenizer.")

    @model_validator(mode="after")
    def _heads_divide(self) -> "ArchConfig":
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        return self


class ModelConfig(Section):
    name_or_path: str | None = Field(
        None, description="Local path or Hugging Face hub id of the starting model; empty = pretrain a tiny one."
    )
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit).")
    trust_remote_code: bool = Field(False, description="Run model code from the hub. Off unless you trust it.")
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32", description="The dtype weights are loaded and trained in (gradients and AdamW state follow it).")
    mixed_precision: Literal["no", "bf16"] = Field(
        "no", description="bf16: the forwards and backwards of every stage run their matmuls in bfloat16 "
        "(torch.autocast) while weights, gradients and AdamW state stay in `dtype` (keep it float32). Pays on GPUs "
        "and on CPUs with AVX512-BF16/AMX; rollouts decode in `dtype` either way (as vLLM does in its own dtype).")
    gradient_checkpointing: bool = Field(
        False, description="Recompute each decoder layer's activations in the backward instead of keeping them "
        "(training forwards only; sampling is untouched): activation memory from O(layers x tokens) to about one "
        "layer's, for ~30 % more compute. For long reasoning sequences on large models.")
    license: str = Field("apache-2.0", description="License of the weights, recorded in every logged model's card "
                         "(set it to the base model's license when you start from a hub model).")
    arch: ArchConfig = Field(default_factory=ArchConfig)

    @field_validator("mixed_precision", mode="before")
    @classmethod
    def _yaml_no(cls, value):
        """YAML 1.1 reads a bare `no` (in a recipe or `--set model.mixed_precision=no`) as false."""
        return "no" if value is False else value

    @model_validator(mode="after")
    def _master_weights_in_float32(self) -> "ModelConfig":
        if self.mixed_precision != "no" and self.dtype != "float32":
            raise ValueError(f"mixed_precision {self.mixed_precision} keeps the weights in dtype, which must then be "
                             f"float32 (got {self.dtype}); set one or the other")
        return self


class LoraConfig(Section):
    r: int = Field(8, ge=1)
    alpha: int = Field(16, ge=1)
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )


class RolloutConfig(Section):
    """How a stage samples from its policy: the in-process transformers engine, or vLLM on a GPU."""

    backend: Literal["transformers", "vllm"] = Field(
        "transformers", description="transformers (any device, in-process) | vllm (CUDA; pip install 'r1flow[vllm]').")
    batch_size: int = Field(256, ge=1, description="Rows (prompt x sample) per generation batch (transformers).")
    workers: int = Field(1, ge=1, le=64, description="Processes that decode batches side by side on CPU, this one "
                         "included (transformers; components/generation/workers.py), each on threads / workers threads.")
    gpu_memory_utilization: float = Field(0.5, gt=0, le=1, description="vLLM's share of GPU memory.")

    @model_validator(mode="after")
    def _workers_are_transformers_processes(self) -> "RolloutConfig":
        if self.workers > 1 and self.backend != "transformers":
            raise ValueError(f"workers: {self.workers} helper processes are the transformers backend's (CPU); "
                             f"the {self.backend} backend runs its own, so leave workers at 1")
        return self

    def engine_kwargs(self) -> dict:
        """Keyword arguments for `components.generation.make_engine` under this backend."""
        if self.backend == "vllm":
            return {"gpu_memory_utilization": self.gpu_memory_utilization}
        return {"batch_size": self.batch_size, "workers": self.workers}


class Optimization(Section):
    """A supervised trainer's loop and AdamW settings (components.training.loop.Trainer), shared by the sections
    of every stage that trains on fixed rows: base, cold_start, sft, reward models, distillation. A section
    redeclares a field only to change its default or what it means there."""

    steps: int = Field(100, ge=1, description="Optimizer steps.")
    batch_size: int = Field(32, ge=1, description="Sequences per micro-batch.")
    grad_accum: int = Field(1, ge=1, description="Micro-batches per optimizer step.")
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    optimizer: Literal["adamw", "muon"] = Field(
        "adamw", description="adamw, or muon: Muon (momentum orthogonalised by Newton-Schulz iterations) for the "
        "2-D hidden weight matrices and AdamW for the embeddings, output head, norms and biases, its rate matched "
        "to AdamW's update size so that `lr` means the same (components/training/optimizers.py).")
    warmup_steps: int = Field(0, ge=0)
    schedule: Literal["constant", "linear", "cosine"] = Field("cosine", description="LR schedule after warmup.")
    max_grad_norm: float = Field(1.0, gt=0)
    max_length: int = Field(128, ge=8, description="Sequences are truncated to this many tokens.")
    ckpt_every: int = Field(50, ge=1, description="Save a resumable checkpoint every N steps.")
    log_every: int = Field(10, ge=1)


class TrainConfig(Optimization):
    """Supervised fine-tuning and pretraining of one causal LM (base, cold_start, sft)."""

    pack: bool = Field(True, description="Pack each micro-batch's sequences into rows of max_length tokens (same "
                       "loss, no padding); turn off for a model whose attention ignores position_ids.")
    completion_only_loss: bool = Field(
        False, description="Documents read from prompt/completion pairs (the pretraining corpus writes them) are "
        "trained on their completions only; off, on every token, as a plain text. Chat rows always are.")
    finetune: Literal["full", "lora", "qlora"] = "full"
    lora: LoraConfig = Field(default_factory=LoraConfig)
    merge_lora: bool = Field(True, description="Merge adapters into a plain model directory after training.")
    limit: int | None = Field(None, ge=1, description="Use at most this many training rows.")
    source: Source = Field(
        None, description="Train on this data instead of the curated file: a local jsonl/json/parquet/csv "
        "file or hf:org/name (the stage's schema applies), or {path, config, split, revision, columns}.")


class RewardItem(Section):
    name: RewardName = Field(..., description="A registered reward function (components/rewards).")
    weight: float = 1.0
    kwargs: dict[str, Any] = Field(default_factory=dict)


class RLConfig(Section):
    """GRPO (seed §2.2.1): G samples per prompt, group-normalised advantages, clipped ratio, KL to a reference."""

    steps: int = Field(50, ge=1, description="Rollout iterations (each: sample, score, then optimise).")
    prompts_per_step: int = Field(16, ge=1)
    group_size: int = Field(8, ge=2, description="G: samples per prompt.")
    max_new_tokens: int = Field(64, ge=1)
    temperature: float = Field(1.0, gt=0)
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = Field(0, ge=0)
    ppo_epochs: int = Field(1, ge=1, description="Optimisation passes over each rollout batch (μ).")
    minibatch_size: int = Field(64, ge=1, description="Sequences per micro-batch; a step uses minibatch_size × grad_accum.")
    grad_accum: int = Field(1, ge=1)
    lr: float = Field(1e-5, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    warmup_steps: int = Field(0, ge=0, description="Warmup length in iterations (not optimizer steps).")
    schedule: Literal["constant", "linear", "cosine"] = Field("constant", description="Over iterations.")
    max_grad_norm: float = Field(1.0, gt=0)
    clip_low: float = Field(0.2, gt=0)
    clip_high: float = Field(0.28, gt=0, description="Upper clip range (DAPO clip-higher).")
    beta: float = Field(0.04, ge=0, description="KL coefficient to the frozen reference (0 = no reference).")
    kl_estimator: Literal["k1", "k2", "k3"] = Field(
        "k3", description="Per-token KL estimator of the loss's beta term. Its gradient (samples held fixed) is, in "
        "expectation, that of KL(pi_ref || pi) for k3 (GRPO's) and of KL(pi || pi_ref) for k2; k1's is 0, so k1 is "
        "refused when beta > 0.")
    policy_loss: PolicyLoss = Field("clip", description="components.algorithms POLICY_LOSSES name (clip | vanilla).")
    loss_agg: LossAggregation = Field("token-mean", description="components.algorithms AGGREGATIONS name.")
    advantage: AdvantageEstimator = Field("grpo", description="components.algorithms ADVANTAGE_ESTIMATORS name.")
    skip_zero_variance: bool = Field(True, description="Drop groups whose rewards are all equal (DAPO).")
    pass_rate_band: tuple[float, float] | None = Field(
        None, description="Keep only prompts whose pre-estimated pass rate lies in [low, high].")
    pass_rate_samples: int | None = Field(None, ge=1, description="Samples per prompt that estimate its pass rate "
                                          "(default: group_size); the estimate costs prompts x this many rollouts.")
    retire_solved: bool = Field(False, description="Retire a prompt for the rest of the run once all G of its samples "
                                "in an iteration are correct (first reward > 0.5): later iterations sample prompts that "
                                "still have something to teach. At least prompts_per_step prompts stay active. Over "
                                "several passes it can hurt: the default recipe's GRPO fell below its SFT start with it "
                                "(README, Performance).")
    share_prompts: bool = Field(False, description="Training forwards compute each group's prompt once and hand "
                                "its keys and values to the G rows (components/training/rollout_batch.py): the same "
                                "log-probs and gradients up to rounding, minus G-1 of every G prompt computations (on "
                                "the default recipe's GRPO: optimising ~16 % faster). Off by default: the rounding "
                                "differences change which samples a run draws later on, so a run no longer repeats "
                                "one made without it (docs/performance.md).")
    rewards: list[RewardItem] = Field(
        default_factory=lambda: [RewardItem(name="exact_int", weight=1.0), RewardItem(name="format", weight=0.2)])
    reward_timeout_s: float = Field(5.0, gt=0)
    rollout: RolloutConfig = Field(default_factory=RolloutConfig)
    finetune: Literal["full", "lora", "qlora"] = "full"
    lora: LoraConfig = Field(default_factory=LoraConfig)
    merge_lora: bool = True
    ckpt_every: int = Field(10, ge=1)
    log_every: int = Field(1, ge=1)
    table_every: int = Field(10, ge=1, description="Log a table of sample completions every N steps.")
    limit: int | None = Field(None, ge=1, description="Use at most this many prompts.")
    source: Source = Field(None, description="Prompt/answer data instead of the curated file.")
    system_prompt: str | None = None

    @field_validator("pass_rate_band")
    @classmethod
    def _band(cls, v):
        if v is not None and not 0.0 <= v[0] <= v[1] <= 1.0:
            raise ValueError(f"expected 0 <= low <= high <= 1, got {list(v)}")
        return v

    @model_validator(mode="after")
    def _kl_term(self):
        if self.beta > 0 and self.kl_estimator == "k1":
            raise ValueError("kl_estimator: 'k1' as a loss term has zero expected gradient, so beta > 0 would do "
                             "nothing; use 'k3' (GRPO's) or 'k2', or beta: 0")
        return self


class RejectionConfig(Section):
    """Rejection sampling (seed §2.3.3): K samples per prompt, keep verified ones, at most k per prompt."""

    samples_per_prompt: int = Field(8, ge=1, description="K.")
    keep_per_prompt: int = Field(2, ge=1, description="k: at most this many accepted samples per prompt.")
    temperature: float = Field(1.0, gt=0)
    top_p: float = Field(1.0, gt=0, le=1)
    max_new_tokens: int = Field(64, ge=1)
    min_tokens: int = Field(1, ge=0)
    max_tokens: int = Field(64, ge=1)
    verifier: RewardName = Field("exact_int", description="Reward function that decides correctness.")
    accept_score: float = Field(1.0, description="A sample is correct when the verifier scores it at least this "
                                "(1.0 for 0/1 verifiers; lower for partial-credit rewards).")
    require_format: bool = True
    rollout: RolloutConfig = Field(default_factory=RolloutConfig)
    limit: int | None = Field(None, ge=1, description="Use at most this many prompts.")
    source: Source = Field(None, description="Prompt/answer data instead of the curated file.")
    system_prompt: str | None = None


class EvalConfig(Section):
    source: Source = Field(None, description="Held-out prompt/answer data instead of data/eval.jsonl (its test "
                           "split unless the source names one).")
    correctness: RewardName = Field("exact_int", description="Reward function that decides a correct answer.")
    system_prompt: str | None = Field(None, description="System message prepended to every prompt.")
    limit: int | None = Field(None, ge=1, description="Evaluate on at most this many held-out problems.")
    max_new_tokens: int = Field(64, ge=1)
    rollout: RolloutConfig = Field(default_factory=lambda: RolloutConfig(batch_size=128))
    table_rows: int = Field(32, ge=0, description="Sample completions logged as an MLflow table.")
    house_rules: bool = Field(True, description="Also report the true preference rate on pref_eval.jsonl (the "
                              "default task's known-truth house rules); turn off when evaluating on your own data.")
    preference_limit: int | None = Field(None, ge=1, description="Use at most this many pref_eval.jsonl prompts.")


def apply_override(tree: dict, assignment: str) -> None:
    """Apply one ``a.b.c=value`` assignment to a nested dict (value parsed as YAML)."""
    if "=" not in assignment:
        raise RecipeError(f"--set {assignment!r}: expected section.field=value")
    path, raw = assignment.split("=", 1)
    keys = path.strip().split(".")
    if not all(k.strip() for k in keys):
        raise RecipeError(f"--set {assignment!r}: expected section.field=value (an empty name in {path.strip()!r})")
    node = tree
    for key in keys[:-1]:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise RecipeError(f"--set {assignment!r}: {key} is not a section")
    try:
        node[keys[-1]] = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as e:
        raise RecipeError(f"--set {assignment!r}: the value is not valid YAML: {str(e).splitlines()[0]}") from None


def format_validation_error(source: str, err: ValidationError, cls: type[BaseModel]) -> str:
    """One line per error, naming the file and the dotted field path; an unknown field of `cls`
    (or of a section inside it) gets the closest known name as a suggestion."""
    lines = []
    for e in err.errors():
        where = ".".join(str(p) for p in e["loc"]) or "<recipe>"
        hint = ""
        if e["type"] == "extra_forbidden":
            close = difflib.get_close_matches(str(e["loc"][-1]), _field_names(cls, e["loc"][:-1]), n=1)
            hint = f" (did you mean {'.'.join([*map(str, e['loc'][:-1]), close[0]])}?)" if close else ""
        lines.append(f"{source}: {where}: {e['msg']}{hint}")
    return "\n".join(lines)


def _field_names(cls: type[BaseModel], path: tuple) -> list[str]:
    """The field names of the section at `path` inside `cls` ([] where the path leaves the models)."""
    for key in path:
        field = cls.model_fields.get(str(key))
        # a section, or an optional one (`DataSource | None`)
        cls = next((c for c in (field.annotation, *get_args(field.annotation))
                    if isinstance(c, type) and issubclass(c, BaseModel)), None) if field is not None else None
        if cls is None:
            return []
    return list(cls.model_fields)


def load_tree(path: str | Path | None = None, overrides: list[str] | None = None) -> tuple[dict[str, Any], str]:
    """The YAML mapping of a recipe file (its `extends` chain merged) with `--set` overrides applied;
    returns (tree, source name)."""
    source = str(path) if path else "<defaults>"
    tree = _read_recipe(Path(path), ()) if path else {}
    for assignment in overrides or []:
        apply_override(tree, assignment)
    return tree, source


class _UniqueKeyLoader(yaml.SafeLoader):
    """safe_load, except that a key given twice in one mapping is an error (YAML keeps the last, silently)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _read_recipe(path: Path, chain: tuple[Path, ...]) -> dict[str, Any]:
    source = str(path)
    try:
        tree = yaml.load(path.read_text(), Loader=_UniqueKeyLoader) or {}
    except FileNotFoundError:
        where = f" (extended by {chain[-1]})" if chain else ""
        near = difflib.get_close_matches(path.name, [p.name for p in path.parent.glob("*.y*ml")], n=1)
        hint = f"; did you mean {path.with_name(near[0])}?" if near else ""
        raise RecipeError(f"{source}: recipe file not found{where}{hint}") from None
    except yaml.YAMLError as e:
        raise RecipeError(f"{source}: invalid YAML: {e}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise RecipeError(f"{source}: cannot read the recipe: {getattr(e, 'strerror', None) or e}") from None
    if not isinstance(tree, dict):
        raise RecipeError(f"{source}: a recipe is a mapping of sections, got {type(tree).__name__}")
    parent = tree.pop("extends", None)
    if parent is None:
        return tree
    if not isinstance(parent, str):
        raise RecipeError(f"{source}: extends: expected the path of another recipe, got {parent!r}")
    target = (path.parent / parent).resolve()
    if target in chain or target == path.resolve():
        raise RecipeError(f"{source}: extends: {parent} extends itself (a cycle)")
    return merge_trees(_read_recipe(target, (*chain, path.resolve())), tree)


def merge_trees(base: dict, update: dict) -> dict:
    """`update` merged into a copy of `base`: mappings key by key, anything else replaced."""
    out = dict(base)
    for key, value in update.items():
        out[key] = merge_trees(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def validate(cls: type[BaseModel], tree: dict, source: str):
    """`cls.model_validate(tree)`, with errors that name the file and the dotted field path."""
    try:
        return cls.model_validate(tree)
    except ValidationError as e:
        raise RecipeError(format_validation_error(source, e, cls)) from None
