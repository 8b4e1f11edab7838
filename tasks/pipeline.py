"""A pipeline run: the data version, the parent MLflow run, the stages it ran, the champion gate.

Inside `with pipeline(recipe, root) as run:` a stage called like a function (`cold_start(policy=base)`)
goes through `PipelineRun.call`: a stage the recipe does not enable hands its `passthrough`
input on; an enabled one runs as the Prefect task `stage_task`, cached on `tasks.stage.stage_key`,
in its own MLflow run nested under the pipeline's; every new model it produces is then scored
on the held-out set by the `evaluate` stage (`evaluate_models` fans several evaluations out on
the recipe's task runner), and a stage that trained a model it was given (its `passthrough`
input, itself evaluated earlier in the run) gets its gain over that model, problem by problem on
the same held-out set, with the standard error of the paired difference. What happened is
collected as rows of the summary table the CLI prints and the report logged to the parent run;
`gate_champion` ends a run by offering its final model to the registry's quality gate
(`tasks/champion.py`).

The parent MLflow run is named like the Prefect flow run, so one name finds a run in both UIs.
Before it starts, runs that a killed process left RUNNING are marked KILLED (and their Prefect
flow runs Crashed). Two pipelines at once share outputs safely: a stage's output folder is named
by its cache key and a per-key file lock lets one process at a time run that stage.
"""
from __future__ import annotations

import contextlib
import contextvars
import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import mlflow
from prefect import task
from prefect.context import get_run_context

from components.config import Section
from components.evaluation.paired import paired_gain
from components.io import digest_path
from tasks import champion, tracking
from tasks.console import say, summary_table
from tasks.locks import file_lock, file_locks
from tasks.refs import DatasetRef, EvalRef, ModelRef
from tasks.runners import get_task_runner
from tasks.stage import Stage, alias_of, output_dir, stage_key
from tasks.stage_task import output_label, run_id_of, stage_task
from tasks.stages import get_stage
from tasks.versioning import DataRef, check_data_section, data_version, git_commit

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
    compute_s: float = 0.0               # the stage function's own time (0 when cached; tracking excluded)
    preference: float | None = None      # true preference rate (the house rules), when evaluated
    preference_se: float | None = None
    evaluation_of: str | None = None   # set on an evaluation's own row (the table folds it into that stage's)
    gain: float | None = None            # held-out accuracy gain over the model the stage started from
    gain_se: float | None = None         # its paired standard error (the same problems score both models)
    gain_over: str | None = None         # the label of that model's stage


@dataclass
class PipelineRun:
    recipe: Section
    root: Path
    data: DataRef
    parent_run_id: str
    records: list[StageRecord] = field(default_factory=list)
    metrics: dict[str, dict] = field(default_factory=dict)     # evaluated stage -> held-out metrics
    evaluated: dict[str, EvalRef] = field(default_factory=dict)  # model digest -> its evaluation
    evaluated_as: dict[str, str] = field(default_factory=dict)   # model digest -> the label it was evaluated under
    gains: dict[str, dict] = field(default_factory=dict)         # stage label -> paired gain over its starting model
    champion: dict | None = None                                 # the quality gate's decision, if offered
    files: dict[str, str] = field(default_factory=dict)          # report figures logged beside report/report.md
    started: float = field(default_factory=time.perf_counter)    # when the pipeline run began (its wall time)

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
            self.gain(label or spec.name, inputs.get(spec.passthrough), result)
        return result

    def evaluate(self, model: ModelRef, label: str) -> EvalRef:
        """Score `model` (the output of stage `label`) on the held-out set, once per distinct model."""
        if model.digest not in self.evaluated:
            self._scored(model, label, self.run_stage(get_stage("evaluate"), {"model": model}, f"evaluate/{label}"))
        return self.evaluated[model.digest]

    def evaluate_models(self, models: dict[str, ModelRef]) -> dict[str, EvalRef]:
        """Score several models ({label: model}) side by side on the recipe's task runner."""
        spec = get_stage("evaluate")
        scores = self._fan_out(spec, {label: ({"model": m}, f"evaluate/{label}", None) for label, m in models.items()})
        for label, result in scores.items():
            self._scored(models[label], label, result)
        return {label: self.evaluated[m.digest] for label, m in models.items()}

    def call_variants(self, spec: Stage, inputs: dict, sections: dict[str, Section],
                      report_files: bool = True) -> dict[str, ModelRef]:
        """Run `spec` once per {label: section} on the same inputs, side by side on the recipe's task
        runner (cached like any stage), then evaluate each model; returns {label: output}.
        `report_files=False`: the caller reports the variants' figures itself (combined)."""
        _check_inputs(spec, inputs, True)
        outputs = self._fan_out(spec, {label: (inputs, label, section) for label, section in sections.items()},
                                report_files)
        for label, model in outputs.items():
            if spec.evaluate and isinstance(model, ModelRef):
                self.evaluate(model, label)
                self.gain(label, inputs.get(spec.passthrough), model)
        return outputs

    def gain(self, label: str, start, model: ModelRef) -> dict | None:
        """Held-out accuracy gain of `model` (stage `label`'s output) over `start`, the model the stage
        trained from, paired problem by problem, and where both were scored on the same preference
        prompts the true preference rate's gain, paired prompt by prompt; None when `start` was not
        evaluated in this run or was scored on another held-out set."""
        if not isinstance(start, ModelRef) or start.digest == model.digest or start.digest not in self.evaluated:
            return None
        before, after = (_outcomes(self.evaluated[m.digest]) for m in (start, model))
        if before is None or after is None or before["eval_set"] != after["eval_set"]:
            return None
        g = paired_gain(before["correct"], after["correct"])
        over = self.evaluated_as[start.digest]
        self.gains[label] = gain = {"over": over, "gain": g.gain, "gain_se": g.stderr, "won": g.won, "lost": g.lost,
                                    "n": g.n}
        row = next((r for r in reversed(self.records) if r.label in (label, f"evaluate/{label}")
                    and not r.evaluation_of), None)  # the row that shows the model's accuracy
        if row is not None:
            row.gain, row.gain_se, row.gain_over = g.gain, g.stderr, over
        mlflow.log_metrics({f"{label}.accuracy_gain": g.gain, f"{label}.accuracy_gain_se": g.stderr,
                            f"{label}.problems_won": g.won, f"{label}.problems_lost": g.lost})
        say(f"  {label}: {_described(g, f' over {over}', 'problems')}")
        if "follows_rules" in before and before.get("pref_set") == after.get("pref_set"):
            p = paired_gain(before["follows_rules"], after["follows_rules"])
            gain.update(preference_gain=p.gain, preference_gain_se=p.stderr, preference_won=p.won,
                        preference_lost=p.lost)
            mlflow.log_metrics({f"{label}.preference_gain": p.gain, f"{label}.preference_gain_se": p.stderr})
            say(f"  {label}: house rules {_described(p, '', 'prompts')}")
        return gain

    def _scored(self, model: ModelRef, label: str, scores: EvalRef) -> None:
        evaluation = next(r for r in reversed(self.records) if r.label == f"evaluate/{label}")
        row = next((r for r in reversed(self.records) if r.label == label), None)
        if row is not None:  # fold the evaluation into its stage's row of the summary
            evaluation.evaluation_of = label
            row.seconds += evaluation.seconds
        else:
            row = evaluation
        self.evaluated[model.digest] = scores
        self.evaluated_as[model.digest] = label
        self.metrics[label] = m = scores.metrics
        row.accuracy, row.accuracy_se = m.get("accuracy"), m.get("accuracy_se")
        row.preference, row.preference_se = m.get("preference_rate"), m.get("preference_rate_se")
        if model.registered and model.registered.startswith("models:/") and "@" not in model.registered:
            held_out = champion.heldout_set(self.data.files.get("eval.jsonl", ""),
                                            self.recipe.evaluate.model_dump(mode="json"))
            champion.record_heldout(model.registered, m, held_out)
        rules = (f", house rules {100 * m['preference_rate']:.1f} % ± {100 * m['preference_rate_se']:.1f}"
                 if "preference_rate" in m else "")
        say(f"  {label}: held-out accuracy {100 * m['accuracy']:.1f} % ± {100 * m['accuracy_se']:.1f} "
            f"(n={int(m['n'])}), format {100 * m.get('format_rate', 0):.0f} %{rules}")

    def gate_champion(self, model: ModelRef | None) -> dict:
        """Offer the run's final model to the registry's quality gate (see tasks/champion.py)."""
        if model is None or not (model.registered or "").startswith("models:/") or "@" in model.registered:
            decision = {"decision": "kept", "reason": "the run produced no registered model"}
        elif champion.parse(model.registered)[0] != self.recipe.run.name:  # a cache hit of another recipe's stage
            decision = {"decision": "kept", "reason": f"the final model is {model.registered}, another recipe's"}
        else:
            with file_lock(self.root / ".r1flow" / "locks" / "champion.lock"):
                decision = champion.gate(model.registered)
        mlflow.set_tags({f"r1flow.champion.{k}": v for k, v in decision.items()})
        say(f"champion: {decision['decision']} ({decision['reason']})")
        self.champion = decision
        return decision

    def _output(self, spec: Stage, inputs: dict, section: Section | None) -> tuple[Section, Path]:
        """The stage's config section and its output folder (named by its cache key)."""
        cfg = section if section is not None else self.recipe.section(spec.name)
        run = self.recipe.run
        return cfg, output_dir(run.output_dir, spec.name, stage_key(spec, cfg, self.recipe.model, run.seed, inputs,
                                                                      self.data))

    def _task(self, spec: Stage, inputs: dict, label: str, cfg: Section, out: Path):
        """(task, parameters) of running `spec` with section `cfg` on `inputs` as the cached `stage_task`;
        `cfg, out` are `_output`'s. Made once the stage's lock is held: whether `out` is done decides
        between a cache hit and a run."""
        params = dict(name=spec.name, cfg=cfg, model=self.recipe.model, run=self.recipe.run, inputs=inputs,
                      data=self.data, parent_run_id=self.parent_run_id, label=label)
        return stage_task.with_options(task_run_name=label, refresh_cache=not (out / "result.json").exists()), params

    def run_stage(self, spec: Stage, inputs: dict, label: str, section: Section | None = None):
        cfg, out = self._output(spec, inputs, section)
        # The same stage and key in two pipelines at once: one runs it, the other then finds it done (cached).
        with file_lock(_lock_path(out)):
            task, params = self._task(spec, inputs, label, cfg, out)
            t0 = time.perf_counter()
            return self._collect(spec, label, task(**params, return_state=True), t0, out=out)

    def _fan_out(self, spec: Stage, jobs: dict[str, tuple[dict, str, Section | None]],
                 report_files: bool = True) -> dict:
        """Run `spec` once per {key: (inputs, label, section)} side by side on the recipe's task runner;
        returns {key: output}. Each stage key is locked as in `run_stage`, all of them before any
        starts, taken in sorted order so that two processes fanning out overlapping jobs never
        wait on each other; whichever comes second finds the shared ones done (cached)."""
        outputs = {key: self._output(spec, inputs, section) for key, (inputs, _, section) in jobs.items()}
        with (file_locks(_lock_path(out) for _, out in outputs.values()),
              get_task_runner(self.recipe.runner) as runner):
            started = {}
            for key, (inputs, label, _) in jobs.items():
                task, params = self._task(spec, inputs, label, *outputs[key])
                started[key] = (runner.submit(task, params), time.perf_counter())
            results = {}
            for key, (future, t0) in started.items():
                future.wait()
                results[key] = self._collect(spec, jobs[key][1], future.state, t0, report_files, outputs[key][1],
                                             queued=True)
        return results

    def _collect(self, spec: Stage, label: str, state, t0: float, report_files: bool = True,
                 out: Path | None = None, queued: bool = False):
        """Record a finished stage task. `queued`: it was submitted beside others, so the time since `t0`
        includes waiting for a worker; its wall is then the time the task itself recorded."""
        result = state.result()  # raises the stage's own error if it failed
        cached = state.name == "Cached"
        seconds = time.perf_counter() - t0
        if queued and not cached and out is not None:
            seconds = _recorded(out, "wall_s") or seconds
        if cached:
            say(f"◆ {label}  cached  (MLflow run {run_id_of(result)[:12]})")
            if isinstance(result, ModelRef):
                result = replace(result, registered=tracking.claim(result.registered, self.recipe.run.name,
                                                                   alias_of(label)))
        compute = 0.0 if cached or out is None else _recorded(out, "compute_s")
        self.records.append(StageRecord(label, spec.name, "cached" if cached else "ran", seconds, run_id_of(result),
                                        output_label(result), compute_s=compute))
        _record_on_parent(label, result)
        for name, path in getattr(result, "files", {}).items() if report_files else ():
            mlflow.log_artifact(path, "report")
            self.files[name] = path
        return result

    def report(self) -> dict:
        wall = time.perf_counter() - self.started
        compute = sum(r.compute_s for r in self.records)
        return {"recipe": self.recipe.run.name, "data_md5": self.data.md5, "parent_run_id": self.parent_run_id,
                "stages": [asdict(r) for r in self.records], "metrics": self.metrics, "gains": self.gains,
                "champion": self.champion,
                "time": {"wall_s": wall, "compute_s": compute, "overhead_s": wall - compute,
                         "overhead_share": (wall - compute) / wall if wall else 0.0}}


def _lock_path(out: Path) -> Path:
    """The lock file of a stage's output folder (beside it, so `runs/` cleanup keeps working)."""
    return out.parent / f".{out.name}.lock"


def _described(g, over: str, items: str) -> str:
    """A paired gain as the pipeline prints it: `+6.0 points over sft (paired s.e. 1.2, +5.2 s.e.; 98
    problems won, 38 lost)`."""
    ratio = (f"{g.gain / g.stderr:+.1f} s.e." if g.stderr else
             f"every changed {items[:-1]} moved the same way" if g.won or g.lost else f"no {items[:-1]} changed")
    return f"{100 * g.gain:+.1f} points{over} (paired s.e. {100 * g.stderr:.1f}, {ratio}; {g.won} {items} won, {g.lost} lost)"


def _outcomes(evaluation: EvalRef) -> dict | None:
    """An evaluation's per_problem.json ({"eval_set", "correct"}, and with the house rules scored
    {"pref_set", "follows_rules"}), or None if it kept none."""
    path = Path(evaluation.scores) if evaluation.scores else None
    return json.loads(path.read_text()) if path is not None and path.is_file() else None


def current_pipeline() -> PipelineRun:
    try:
        return _CURRENT.get()
    except LookupError:
        raise RuntimeError("a stage was called outside `with pipeline(recipe, root):`") from None


@contextlib.contextmanager
def pipeline(recipe: Section, root: str | Path):
    """Open a pipeline run: check the data version, start the parent MLflow run, collect the summary."""
    started = time.perf_counter()
    root = Path(root).resolve()
    # Outputs live under the project, wherever the process runs (a worker runs flows in the code folder).
    outputs = str(root / recipe.run.output_dir)
    recipe = recipe.model_copy(update={"run": recipe.run.model_copy(update={"output_dir": outputs})})
    reap_killed_runs()
    check_data_section(root, recipe.data)
    data = data_task(str(root), recipe.data.dir)
    flow_run = get_run_context().flow_run
    tags = {"mlflow.source.git.commit": git_commit(root), "r1flow.data_md5": data.md5, "r1flow.kind": "pipeline",
            "prefect.flow_run_id": str(flow_run.id), "r1flow.recipe": recipe.run.name}
    with tracking.run(flow_run.name, recipe.run.experiment, params=recipe.model_dump(mode="json"), tags=tags) as run_id:
        say(f"r1flow · recipe {recipe.run.name} · data {data.md5[:8]} · MLflow run {run_id[:12]}")
        run = PipelineRun(recipe, root, data, run_id, started=started)
        token = _CURRENT.set(run)
        try:
            yield run
        finally:
            _CURRENT.reset(token)
            report = run.report()
            mlflow.log_text(json.dumps(report, indent=2), "report/report.json")
            figures = "".join(f"\n![{name}]({name})\n" for name in run.files)
            mlflow.log_text(f"# {recipe.run.name}\n\n```\n{summary_table(report['stages'])}\n```\n{figures}",
                            "report/report.md")


@task(retries=1, retry_delay_seconds=2)
def data_task(root: str, folder: str = "data") -> DataRef:
    """The DVC data version of `folder` (pulled first if the folder is missing)."""
    return data_version(Path(root), folder)


def reap_killed_runs() -> None:
    """Mark KILLED the MLflow runs a killed process left RUNNING, and Crashed their Prefect flow runs."""
    from prefect.client.orchestration import get_client
    from prefect.states import Crashed

    reaped = tracking.reap_orphaned_runs()
    flow_runs = {r.data.tags["prefect.flow_run_id"] for r in reaped if "prefect.flow_run_id" in r.data.tags
                 and r.data.tags.get("r1flow.kind") == "pipeline"}
    if not flow_runs:
        return
    with get_client(sync_client=True) as client:
        for flow_run_id in flow_runs:
            with contextlib.suppress(Exception):  # a flow run on another (gone) server: nothing to mark
                if client.read_flow_run(flow_run_id).state.is_running():
                    client.set_flow_run_state(flow_run_id, Crashed(message="its process was killed"), force=True)
    say(f"marked {len(reaped)} MLflow run(s) of killed processes KILLED")


def starting_model(recipe: Section) -> ModelRef | None:
    """The model the recipe names (then the base stage is skipped), or None to pretrain one."""
    name = recipe.model.name_or_path
    if not name:
        return None
    path = Path(name).expanduser()
    if path.is_dir():
        return ModelRef(uri=str(path.resolve()), digest=digest_path(path), stage="given")
    return ModelRef(uri=name, digest=f"hub:{name}@{recipe.model.revision or 'main'}", stage="given")


def _check_inputs(spec: Stage, inputs: dict, enabled: bool) -> None:
    unknown = sorted(set(inputs) - set(spec.inputs))
    if unknown:
        raise ValueError(f"{spec.name}: unknown input(s) {unknown}; it takes {list(spec.inputs)}")
    missing = [n for n in spec.inputs if inputs.get(n) is None and n not in spec.optional]
    if missing and enabled:
        raise ValueError(f"{spec.name}: no {', '.join(missing)} to run on (the stage before it produced nothing)")


def _recorded(out: Path, field: str) -> float:
    """A time the stage's task recorded in result.json: `compute_s` (the stage function's own work)
    or `wall_s` (the whole task); 0.0 if missing (a result written before the field existed)."""
    try:
        return float(json.loads((out / "result.json").read_text()).get(field, 0.0))
    except (OSError, ValueError):
        return 0.0


def _record_on_parent(label: str, result) -> None:
    """Point the parent run at a stage's result (also when it came from the cache)."""
    if isinstance(result, EvalRef):  # e.g. cold_start.accuracy: one key per evaluated stage, in every run
        mlflow.log_metrics({f"{label.removeprefix('evaluate/')}.{k}": v for k, v in result.metrics.items()})
    mlflow.set_tag(f"r1flow.run.{label.replace('/', '.')}", run_id_of(result))
    if isinstance(result, (ModelRef, DatasetRef)):
        mlflow.set_tag(f"r1flow.output.{label.replace('/', '.')}", output_label(result))
