"""Data-parallel stages: run a supervised stage in `run.num_processes` processes under `accelerate launch`.

The parent (`launch_stage`, called by `tasks/stage_task.py` inside the stage's MLflow run) writes
what the stage's `StageContext` holds to `<ckpt dir>/launch.json` and runs

    accelerate launch --config_file F --num_processes N -m tasks.launch <ckpt dir>/launch.json

Each process (`main` below) joins the process group, rebuilds the context and calls the stage
function; the `Trainer` splits every optimizer step's micro-batches across the processes
(components/training/loop.py). Rank 0 alone records: it logs to the stage's MLflow run (its id
is in the payload), saves and registers the model (`tasks.common.finish`) and writes the
returned record to `launch-result.json`, which the parent reads back. The other ranks record
nothing. The payload is plain JSON, so a failed launch can be rerun by hand with that command
(plus ACCELERATE_USE_CPU=true for cpu_ddp.yaml).

Only stages declared `distributed=True` (the ones that train through `run_sft`) run this way, on
one machine, with replicated data parallelism (cpu_ddp.yaml, ddp.yaml): sharded configs (FSDP,
DeepSpeed) are refused, since the trainer does not shard the model.
"""
from __future__ import annotations

import collections
import dataclasses
import functools
import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

from components.config import ModelConfig, RunConfig
from components.io import write_json
from tasks.refs import DatasetRef, ModelRef
from tasks.stage import Stage, StageContext

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "infra" / "accelerate"
REPLICATED = ("MULTI_GPU", "MULTI_CPU")  # accelerate distributed types whose processes hold the whole model
REFS = {cls.__name__: cls for cls in (ModelRef, DatasetRef)}
TAIL_LINES = 40


def runs_data_parallel(spec: Stage, run: RunConfig) -> bool:
    """Whether `spec` runs in `run.num_processes` processes (the first stage that cannot says so, once)."""
    if run.num_processes > 1 and not spec.distributed:
        _say_single_process(run.num_processes)
    return run.num_processes > 1 and spec.distributed


@functools.cache
def _say_single_process(n: int) -> None:
    from tasks.console import say
    from tasks.stages import registry

    parallel = ", ".join(sorted(name for name, s in registry().items() if s.distributed))
    say(f"  run.num_processes={n} applies to {parallel}; the other stages run in one process")


def launch_stage(spec: Stage, ctx: StageContext, inputs: dict, run: RunConfig, label: str):
    """Run the stage in `run.num_processes` processes; returns rank 0's result (see the module docstring)."""
    import mlflow

    n = run.num_processes
    if ctx.cfg.grad_accum % n:
        raise ValueError(f"{spec.name}.grad_accum={ctx.cfg.grad_accum} cannot be split across run.num_processes={n} "
                         f"processes: make it a multiple of {n} (the global batch is batch_size x grad_accum)")
    config, use_cpu = accelerate_config(run)
    ctx.ckpt_dir.mkdir(parents=True, exist_ok=True)
    payload, result_file = ctx.ckpt_dir / "launch.json", ctx.ckpt_dir / "launch-result.json"
    result_file.unlink(missing_ok=True)
    write_json(payload, {
        "stage": spec.name, "module": spec.fn.__module__, "label": label, "cfg": ctx.cfg.model_dump(mode="json"),
        "model": ctx.model.model_dump(mode="json"), "seed": ctx.seed, "recipe_name": ctx.recipe_name,
        "data": dataclasses.asdict(ctx.data), "out_dir": str(ctx.out_dir), "ckpt_dir": str(ctx.ckpt_dir),
        "run_id": ctx.run_id, "tracking_uri": mlflow.get_tracking_uri(), "registry_uri": mlflow.get_registry_uri(),
        "inputs": {name: encode_ref(inputs.get(name)) for name in spec.inputs}, "result": str(result_file)})
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config),
               "--num_processes", str(n), "--main_process_port", "0",  # a free port: stages may run side by side
               "-m", "tasks.launch", str(payload)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1",  # lines reach the parent as they are written
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    if use_cpu:
        env["ACCELERATE_USE_CPU"] = "true"
    code, tail = _run_forwarding(command, env)
    if code != 0:
        raise RuntimeError(f"{label}: `accelerate launch` ({n} processes, {config.name}) exited with {code}; "
                           f"its last lines:\n" + "".join(tail))
    if not result_file.exists():
        raise RuntimeError(f"{label}: the launched processes exited without rank 0's result ({result_file})")
    return decode_ref(json.loads(result_file.read_text()))


def accelerate_config(run: RunConfig) -> tuple[Path, bool]:
    """(config file, CPU only) of `run.accelerate_config` (default: cpu_ddp.yaml without a GPU, ddp.yaml
    with one); a sharded or several-machine config is refused."""
    import torch
    from accelerate.commands.config.config_args import load_config_from_file

    if run.accelerate_config:
        path = Path(run.accelerate_config)
    else:
        path = CONFIGS / ("ddp.yaml" if torch.cuda.is_available() else "cpu_ddp.yaml")
    if not path.is_file():
        raise ValueError(f"run.accelerate_config: {path} not found")
    config = load_config_from_file(str(path))
    kind = str(config.distributed_type).split(".")[-1]
    if kind not in REPLICATED:
        raise ValueError(f"run.accelerate_config: {path.name} is {kind}, which shards the model; r1flow's trainer "
                         "replicates it (data parallel): use cpu_ddp.yaml or ddp.yaml")
    if config.num_machines != 1:
        raise ValueError(f"run.accelerate_config: {path.name} spans {config.num_machines} machines; a stage is "
                         "launched on the machine that runs it only")
    return path, bool(config.use_cpu)


def _run_forwarding(command: list[str], env: dict) -> tuple[int, list[str]]:
    """Run `command`, copying its output to this process's stderr line by line (progress stays
    visible); returns (exit code, the last TAIL_LINES lines)."""
    from tasks.private_server import die_with_parent
    from tasks.servers import kill_group

    tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
    preexec = die_with_parent if sys.platform.startswith("linux") else None  # even if this process is SIGKILLed
    with subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          start_new_session=True, preexec_fn=preexec) as proc:
        try:
            for line in proc.stdout:
                tail.append(line)
                sys.stderr.write(line)
        except BaseException:  # Ctrl-C or SIGTERM here: the launched processes stop now, not when the stage ends
            kill_group(proc.pid, grace=10)
            raise
    return proc.returncode, list(tail)


def encode_ref(value):
    if value is None:
        return None
    if type(value).__name__ not in REFS:
        raise TypeError(f"a data-parallel stage takes model and dataset records, not {type(value).__name__}")
    return {"ref": type(value).__name__, **dataclasses.asdict(value)}


def decode_ref(value):
    if value is None:
        return None
    fields = dict(value)
    return REFS[fields.pop("ref")](**fields)


# -- in each launched process ------------------------------------------------------------------


def pin_device() -> bool:
    """Before CUDA starts: each process sees only its own GPU (models go to `cuda:0`), or none on
    the CPU (ACCELERATE_USE_CPU, or no GPU). Returns whether this process runs on the CPU."""
    if os.environ.get("ACCELERATE_USE_CPU", "").lower() not in ("1", "true", "yes"):
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        visible = [d for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
        os.environ["CUDA_VISIBLE_DEVICES"] = visible[local_rank] if visible else str(local_rank)
        import torch

        if torch.cuda.is_available():
            return False
    os.environ["CUDA_VISIBLE_DEVICES"] = ""
    return True


def rank_context(p: dict, spec: Stage) -> StageContext:
    """The StageContext of this process: rank 0 logs to the stage's MLflow run, the others nowhere."""
    from components.training import distributed as dist
    from components.training.loop import no_log, no_progress
    from tasks import tracking
    from tasks.console import StageReporter
    from tasks.versioning import DataRef

    log, progress = no_log, no_progress
    if dist.is_main():
        log, progress = tracking.metric_logger(p["run_id"]), StageReporter(p["label"]).progress
    return StageContext(p["stage"], spec.config.model_validate(p["cfg"]), ModelConfig.model_validate(p["model"]),
                        p["seed"], p["recipe_name"], DataRef(**p["data"]), Path(p["out_dir"]), Path(p["ckpt_dir"]),
                        p["run_id"], log, progress, p["label"])


def _record_nothing(*args, **kwargs) -> None:
    """What the tracking calls a stage makes do on ranks other than 0."""


def main(payload: str) -> None:
    """One launched process: join the group (gloo on CPU, NCCL on GPU) and run the stage of `payload`."""
    cpu = pin_device()
    import mlflow
    import torch.distributed

    from components.training import distributed as dist
    from tasks import tracking
    from tasks.console import quiet_libraries

    quiet_libraries()  # as in one process: no per-file progress bars from every rank
    p = json.loads(Path(payload).read_text())
    spec = getattr(importlib.import_module(p["module"]), p["stage"])  # its module only: the others cost seconds
    torch.distributed.init_process_group("gloo" if cpu else "nccl")
    try:
        mlflow.set_tracking_uri(p["tracking_uri"])
        mlflow.set_registry_uri(p["registry_uri"])
        inputs = {name: decode_ref(value) for name, value in p["inputs"].items()}
        if dist.is_main():
            # the parent's stage run (MLflow ends it at this process's exit; the parent's end, later, sets its status)
            mlflow.start_run(run_id=p["run_id"])
            write_json(p["result"], encode_ref(spec.run(rank_context(p, spec), inputs)))
        else:
            # The datasets a stage reads and the model it writes are recorded by rank 0 alone: tasks/common.py
            # calls these through the module, so here they do nothing (finish also writes nothing off rank 0).
            for name in ("log_dataset", "log_table", "log_model"):
                setattr(tracking, name, _record_nothing)
            spec.run(rank_context(p, spec), inputs)
        dist.barrier()
    finally:
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
