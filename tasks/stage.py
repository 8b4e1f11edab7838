"""A stage: one function with a typed config section, named inputs, and the data files it reads.

    @stage(config=TrainConfig, defaults=dict(steps=150, lr=5e-4), inputs=("policy",),
           reads=("cold_start.jsonl",))
    def cold_start(ctx: StageContext, policy: ModelRef) -> ModelRef: ...

declares everything r1flow needs to know about it: its recipe section (named after the stage,
typed by `config`, with these defaults), the records it takes (`policy`, `reference`,
`reward_model`, `teacher`, `student`, `dataset`, …) and the curated files it reads. The code
whose change invalidates it is found by following its module's imports
(`tasks.versioning.module_sources`); `code=` adds other paths. The recipe's sections are built from the stage modules in
`tasks/stages/` (see `tasks.stages.registry`), so a stage is declared in exactly one place.

Called inside a pipeline (`flows/pipeline.py`), a stage runs through the one cached Prefect
task in `tasks/pipeline.py`; its cache key is `stage_key` below: the section, the model section
and seed, the digest of every input it takes (and of nothing else), the DVC md5s of the files it
reads, the content of every user source file (`source`, `heldout_source`, `samples.source`), and a
hash of the code it runs.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from components.config import ModelConfig, Section
from components.io import digest_path
from tasks.refs import ref_digest
from tasks.versioning import DataRef, code_digest, module_sources

if TYPE_CHECKING:
    from components.training.loop import Log, Progress


@dataclass
class StageContext:
    """What a stage function gets besides its inputs: its typed section and where to write."""

    name: str
    cfg: Any              # the stage's typed recipe section
    model: ModelConfig    # the recipe's model section (dtype, revision, trust_remote_code, arch)
    seed: int
    recipe_name: str
    data: DataRef
    out_dir: Path         # write the result here (it does not exist yet)
    ckpt_dir: Path        # resumable checkpoints for this exact key
    run_id: str
    log: Log
    progress: Progress
    label: str = ""       # the task's label: the stage name, or e.g. "alignment/oreo" for a compared variant

    @property
    def alias(self) -> str:
        """The registry alias of the model it produces: its label with "/" as "-" (alignment, alignment-oreo)."""
        return alias_of(self.label or self.name)


def alias_of(label: str) -> str:
    return label.replace("/", "-")


@dataclass(frozen=True)
class Stage:
    name: str
    fn: Callable
    config: type[Section]
    defaults: dict = field(default_factory=dict)
    inputs: tuple[str, ...] = ()     # records the function takes, by keyword
    optional: tuple[str, ...] = ()   # of those, the ones that may be None
    passthrough: str | None = None   # the input returned unchanged when the recipe skips the stage
    reads: tuple[str, ...] = ()      # curated data files (relative to the data folder)
    code: tuple[str, ...] = ()       # source files whose change invalidates the stage (found from its imports)
    evaluate: bool = False           # its model output is scored on the held-out set
    doc: str = ""
    keyed: Callable | None = None    # cfg -> the part of the section that enters the key (default: all of it)
    distributed: bool = False        # may run data-parallel in run.num_processes processes (tasks/launch.py)

    def default_config(self) -> Section:
        return self.config(**self.defaults)

    def run(self, ctx: StageContext, inputs: dict) -> Any:
        """Call the stage function on its inputs, under the recipe's mixed precision (every process
        that runs a stage calls this: tasks/stage_task.py, and each rank in tasks/launch.py)."""
        from components.training.precision import mixed_precision  # torch: only when a stage runs

        with mixed_precision(ctx.model.mixed_precision):
            return self.fn(ctx, **{name: inputs.get(name) for name in self.inputs})

    def __call__(self, label: str | None = None, **inputs):
        """Run inside the current pipeline (see `tasks.pipeline.pipeline`); `label` names a second
        use of the same stage in one run (its summary row and MLflow run)."""
        from tasks.pipeline import current_pipeline

        return current_pipeline().call(self, inputs, label=label)


# code every stage runs inside without its module importing it (`Stage.run`)
RUNS_INSIDE = ("components/training/precision.py",)


def stage(*, config: type[Section], defaults: dict | None = None, inputs: tuple[str, ...] = (),
          optional: tuple[str, ...] = (), passthrough: str | None = None, reads: tuple[str, ...] = (),
          code: tuple[str, ...] = (), evaluate: bool = False, keyed: Callable | None = None,
          distributed: bool = False):
    """Declare the decorated function `fn(ctx, **inputs)` as the stage named after it (`code`: extra
    source paths beyond those its module imports; `distributed`: it trains through the `Trainer` only,
    so it may run data-parallel, see `tasks/launch.py`)."""
    def wrap(fn: Callable) -> Stage:
        doc = (fn.__doc__ or "").strip().splitlines()[0] if fn.__doc__ else ""
        return Stage(fn.__name__, fn, config, dict(defaults or {}), tuple(inputs), tuple(optional), passthrough,
                     tuple(reads), module_sources(fn.__module__) + RUNS_INSIDE + tuple(code), evaluate, doc, keyed,
                     distributed)
    return wrap


def stage_key(spec: Stage, cfg: Section, model: ModelConfig, seed: int, inputs: dict, data: DataRef) -> str:
    """The cache key of running `spec` with section `cfg` on `inputs` (see the module docstring)."""
    section = spec.keyed(cfg) if spec.keyed else cfg.model_dump(mode="json")
    payload = {
        "stage": spec.name,
        "section": section,
        "sources": {name: digest_path(path) if Path(path).exists() else None  # user data content (hub: by name)
                    for name, path in _sources(section)},
        "model": model.model_dump(mode="json", exclude={"gradient_checkpointing"}),  # memory, not results
        "seed": seed,
        "inputs": {name: ref_digest(inputs.get(name)) for name in spec.inputs},
        "data": data.digest(spec.reads),
        "code": code_digest(*spec.code),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _sources(tree: dict, prefix: str = ""):
    """(dotted name, path) of every user data source in a section: `source`, `heldout_source`, `samples.source`…"""
    for key, value in tree.items():
        if isinstance(value, dict) and key.endswith("source") and isinstance(value.get("path"), str):
            yield prefix + key, value["path"]
        elif isinstance(value, dict):
            yield from _sources(value, f"{prefix}{key}.")


def output_dir(output_root: str, name: str, key: str) -> Path:
    return Path(output_root).resolve() / "stages" / f"{name}-{key[:16]}"
