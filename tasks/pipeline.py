"""A pipeline run: the data version, the parent MLflow run, and the one cached task every stage runs in.

Inside `with pipeline(recipe, root) as run:` a stage called like a function (`cold_start(policy=base)`)
goes through `PipelineRun.call`: a stage the recipe does not enable hands its `passthrough`
input on; an enabled one runs as the Prefect task `stage_task`, cached on `tasks.stage.stage_key`,
in its own MLflow run nested under the pipeline's; every new model it produces is then scored
on the held-out set by the `evaluate` stage. What happened is collected as rows of the summary
table the CLI prints and the report logged to the parent run.
"""
from __future__ import annotations

import contextlib
import contextvars
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import mlflow
from prefect import task
from prefect.context import get_run_context

from components.config import ModelConfig, RunConfig, Section
from components.io import digest_path, write_json
from tasks import tracking
from tasks.console import StageReporter, say, summary_table
from tasks.refs import DatasetRef, EvalRef, ModelRef
from tasks.stage import Stage, StageContext, output_dir, stage_key
from tasks.stages import get_stage
from tasks.versioning import DataRef, code_digest, data_version, git_commit

_CURRENT: contextvars.ContextVar["PipelineRun"] = contextvars.ContextVar("r1flow_pipeline")


@dataclass
class StageRecord:
    """One row of the run's summary."""

    label: str
    stage: str
    status: str            # "ran" | "cached"
    seconds: float
    run_id: str | None
    output: str
    accuracy: float | None = None
    accuracy_se: float | None = None
    evaluation_of: str | None = None   # set on an evaluation's own row (the table folds it into that stage's)


@dataclass
class PipelineRun:
    recipe: Section
    root: Path
    data: DataRef
    parent_run_id: str
    records: list[StageRecord] = field(default_factory=list)
    metrics: dict[str, dict] = field(default_factory=dict)     # evaluated stage -> held-out metrics
    evaluated: dict[str, EvalRef] = field(default_factory=dict)  # model digest -> its evaluation

    def call(self, spec: Stage, inputs: dict, *, label: str | None = None, section: Section | None = None,
             force: bool = False):
        """Run `spec` on `inputs` (or pass its `passthrough` input on when the recipe skips it)."""
        enabled = force or spec.name in self.recipe.run.stages
        _check_inputs(spec, inputs, enabled)
        if not enabled:
            return inputs.get(spec.passthrough) if spec.passthrough else None
        result = self.run_stage(spec, inputs, label or spec.name, section)
        if spec.evaluate and isinstance(result, ModelRef):
            self.evaluate(result, label or spec.name)
        return result

    def evaluate(self, model: ModelRef, label: str) -> EvalRef:
        """Score `model` (the output of stage `label`) on the held-out set, once per distinct model."""
        if model.digest not in self.evaluated:
            row = next(r for r in reversed(self.records) if r.label == label)
            scores = self.run_stage(get_stage("evaluate"), {"model": model}, f"evaluate/{label}")
            self.records[-1].evaluation_of = label
            row.seconds += self.records[-1].seconds
            self.evaluated[model.digest] = scores
            self.metrics[label] = m = scores.metrics
            row.accuracy, row.accuracy_se = m.get("accuracy"), m.get("accuracy_se")
            say(f"  {label}: held-out accuracy {100 * m['accuracy']:.1f} % ± {100 * m['accuracy_se']:.1f} "
                f"(n={int(m['n'])}), format {100 * m.get('format_rate', 0):.0f} %")
        return self.evaluated[model.digest]

    def run_stage(self, spec: Stage, inputs: dict, label: str, section: Section | None = None):
        cfg = section if section is not None else self.recipe.section(spec.name)
        run = self.recipe.run
        key = stage_key(spec, cfg, self.recipe.model, run.seed, inputs, self.data)
        done = (output_dir(run.output_dir, spec.name, key) / "result.json").exists()
        t0 = time.perf_counter()
        state = stage_task.with_options(task_run_name=label, refresh_cache=not done)(
            spec.name, cfg, self.recipe.model, run, inputs, self.data, self.parent_run_id, label, return_state=True)
        result = state.result()  # raises the stage's own error if it failed
        cached = state.name == "Cached"
        seconds = time.perf_counter() - t0
        if cached:
            say(f"◆ {label}  cached  (MLflow run {_run_id(result)[:12]})")
        self.records.append(StageRecord(label, spec.name, "cached" if cached else "ran", seconds, _run_id(result),
                                        _output(result)))
        _record_on_parent(label, result)
        return result

    def report(self) -> dict:
        return {"recipe": self.recipe.run.name, "data_md5": self.data.md5, "parent_run_id": self.parent_run_id,
                "stages": [asdict(r) for r in self.records], "metrics": self.metrics}


def current_pipeline() -> PipelineRun:
    try:
        return _CURRENT.get()
    except LookupError:
        raise RuntimeError("a stage was called outside `with pipeline(recipe, root):`") from None


@contextlib.contextmanager
def pipeline(recipe: Section, root: str | Path):
    """Open a pipeline run: check the data version, start the parent MLflow run, collect the summary."""
    root = Path(root).resolve()
    data = data_task(str(root))
    tags = {"mlflow.source.git.commit": git_commit(root), "r1flow.data_md5": data.md5,
            "prefect.flow_run_id": str(get_run_context().flow_run.id), "r1flow.recipe": recipe.run.name}
    name = f"{recipe.run.name}-{data.md5[:8]}"
    with tracking.run(name, recipe.run.experiment, params=recipe.model_dump(mode="json"), tags=tags) as run_id:
        say(f"r1flow · recipe {recipe.run.name} · data {data.md5[:8]} · MLflow run {run_id[:12]}")
        run = PipelineRun(recipe, root, data, run_id)
        token = _CURRENT.set(run)
        try:
            yield run
        finally:
            _CURRENT.reset(token)
            report = run.report()
            mlflow.log_text(json.dumps(report, indent=2), "report/report.json")
            mlflow.log_text(f"# {recipe.run.name}\n\n```\n{summary_table(report['stages'])}\n```\n",
                            "report/report.md")


@task(retries=1, retry_delay_seconds=2)
def data_task(root: str) -> DataRef:
    """The DVC data version (pulled first if the folder is missing)."""
    return data_version(Path(root))


def starting_model(recipe: Section) -> ModelRef | None:
    """The model the recipe names (then the base stage is skipped), or None to pretrain one."""
    name = recipe.model.name_or_path
    if not name:
        return None
    path = Path(name).expanduser()
    if path.is_dir():
        return ModelRef(uri=str(path.resolve()), digest=digest_path(path), stage="given")
    return ModelRef(uri=name, digest=f"hub:{name}@{recipe.model.revision or 'main'}", stage="given")


# --------------------------------------------------------------------------- the one cached task


def _cache_key(context, parameters: dict) -> str:
    spec = get_stage(parameters["name"])
    return stage_key(spec, parameters["cfg"], parameters["model"], parameters["run"].seed, parameters["inputs"],
                     parameters["data"])


@task(cache_key_fn=_cache_key, persist_result=True, retries=0)
def stage_task(name: str, cfg: Section, model: ModelConfig, run: RunConfig, inputs: dict, data: DataRef,
               parent_run_id: str, label: str):
    """Run one stage in its own MLflow run (nested under the pipeline's), named `label`."""
    spec = get_stage(name)
    key = stage_key(spec, cfg, model, run.seed, inputs, data)
    out = output_dir(run.output_dir, name, key)
    tags = {"r1flow.stage": name, "r1flow.cache_key": key, "r1flow.data_md5": data.md5,
            "r1flow.code_hash": code_digest(*spec.code)[:16], "mlflow.source.git.commit": git_commit(Path.cwd()),
            "prefect.flow_run_id": str(get_run_context().task_run.flow_run_id),
            **{f"r1flow.input.{k}": _output(v) for k, v in inputs.items() if v is not None}}
    say(f"▶ {label}  started  (key {key[:12]})")
    reporter = StageReporter(label)
    t0 = time.perf_counter()
    try:
        with tracking.run(label, run.experiment, parent_run_id=parent_run_id, params={name: cfg.model_dump(mode="json")},
                          tags=tags) as run_id:
            log = tracking.metric_logger(run_id, echo=reporter.log)
            ctx = StageContext(name, cfg, model, run.seed, run.name, data, out, out.parent / f".ckpt-{out.name}",
                               run_id, log, reporter.progress)
            result = spec.fn(ctx, **{n: inputs.get(n) for n in spec.inputs})
    finally:
        reporter.close()
    write_json(out / "result.json", {"run_id": run_id, "key": key})
    say(f"✔ {label}  done in {time.perf_counter() - t0:.1f} s  → {_output(result)}")
    return result


def _check_inputs(spec: Stage, inputs: dict, enabled: bool) -> None:
    unknown = sorted(set(inputs) - set(spec.inputs))
    if unknown:
        raise ValueError(f"{spec.name}: unknown input(s) {unknown}; it takes {list(spec.inputs)}")
    missing = [n for n in spec.inputs if inputs.get(n) is None and n not in spec.optional]
    if missing and enabled:
        raise ValueError(f"{spec.name}: no {', '.join(missing)} to run on (the stage before it produced nothing)")


def _run_id(result) -> str:
    return getattr(result, "run_id", None) or ""


def _output(result) -> str:
    if isinstance(result, (ModelRef, DatasetRef)):
        return result.registered if isinstance(result, ModelRef) and result.registered else result.uri
    if isinstance(result, EvalRef):
        return f"accuracy {result.metrics.get('accuracy', float('nan')):.3f}"
    return str(result)


def _record_on_parent(label: str, result) -> None:
    """Point the parent run at a stage's result (also when it came from the cache)."""
    if isinstance(result, EvalRef):
        mlflow.log_metrics({f"{result.model.stage}.{k}": v for k, v in result.metrics.items()})
    mlflow.set_tag(f"r1flow.run.{label.replace('/', '.')}", _run_id(result))
    if isinstance(result, (ModelRef, DatasetRef)):
        mlflow.set_tag(f"r1flow.output.{label.replace('/', '.')}", _output(result))
