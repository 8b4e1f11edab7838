"""infra/accelerate/: each config loads through accelerate's own loader, goes through
`accelerate launch`'s argument handling to the environment it would hand the processes, and
builds the FSDP / DeepSpeed plugin the training processes would build from it (no GPU, no
DeepSpeed install needed). The CPU config really launches two gloo processes."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from accelerate.commands.config.config_args import ClusterConfig, load_config_from_file
from accelerate.commands.launch import _validate_launch_command, launch_command_parser
from accelerate.utils import DeepSpeedPlugin, DistributedType, FullyShardedDataParallelPlugin
from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "infra" / "accelerate"
EXPECTED = {  # file: (distributed_type, num_processes)
    "ddp.yaml": (DistributedType.MULTI_GPU, 8),
    "fsdp.yaml": (DistributedType.FSDP, 8),
    "zero2.yaml": (DistributedType.DEEPSPEED, 8),
    "zero3.yaml": (DistributedType.DEEPSPEED, 8),
    "cpu_ddp.yaml": (DistributedType.MULTI_GPU, 2),  # the torchrun launcher; MULTI_CPU at run time
}


def unknown_keys(config_file: Path) -> list[str]:
    """Keys of the nested fsdp/deepspeed sections that `accelerate launch` has no argument for:
    accelerate copies them onto its arguments without complaint, so a typo is silently ignored."""
    dests = {action.dest for action in launch_command_parser()._actions}
    config = load_config_from_file(str(config_file))
    keys = [k if k.startswith("fsdp_") else f"fsdp_{k}" for k in config.fsdp_config]
    return sorted(k for k in keys + list(config.deepspeed_config) if k not in dests)


def launch_env(config_file: Path, monkeypatch) -> dict[str, str]:
    """The environment `accelerate launch --config_file …` gives the training processes, applied
    to this process (monkeypatch restores it)."""
    monkeypatch.chdir(REPO)  # DeepSpeed JSON paths are relative to the project root
    args = launch_command_parser().parse_args(["--config_file", str(config_file), "train.py"])
    args, defaults, precision_from_config = _validate_launch_command(args)
    if args.use_deepspeed:  # as `accelerate launch` does: which DeepSpeed settings the yaml made
        fields = list(defaults.deepspeed_config) + ["mixed_precision"] * precision_from_config
        args.deepspeed_fields_from_accelerate_config = ",".join(fields)
        _, env = prepare_deepspeed_cmd_env(args)
    else:
        env = prepare_multi_gpu_env(args)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env


def test_every_config_is_covered():
    assert sorted(p.name for p in CONFIGS.glob("*.yaml")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_config_loads_through_accelerate(name):
    config = load_config_from_file(str(CONFIGS / name))
    assert isinstance(config, ClusterConfig)
    assert (config.distributed_type, config.num_processes) == EXPECTED[name]
    assert unknown_keys(CONFIGS / name) == []
    comments = [line for line in (CONFIGS / name).read_text().splitlines() if line.startswith("#")]
    assert any("accelerate launch --config_file infra/accelerate/" + name in line for line in comments)


def test_typo_in_a_nested_key_is_caught(tmp_path):
    broken = tmp_path / "fsdp.yaml"
    broken.write_text((CONFIGS / "fsdp.yaml").read_text().replace("fsdp_auto_wrap_policy", "fsdp_autowrap_policy"))
    assert unknown_keys(broken) == ["fsdp_autowrap_policy"]


def test_fsdp_full_shard_llama_layers_bf16(monkeypatch):
    env = launch_env(CONFIGS / "fsdp.yaml", monkeypatch)
    plugin = FullyShardedDataParallelPlugin()
    assert (plugin.fsdp_version, plugin.reshard_after_forward) == (2, True)  # FSDP2 full shard
    assert plugin.transformer_cls_names_to_wrap == ["LlamaDecoderLayer"]
    assert env["ACCELERATE_MIXED_PRECISION"] == "bf16" and env["FSDP_STATE_DICT_TYPE"] == "FULL_STATE_DICT"


@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_zero_stage_matches_its_name(stage, monkeypatch):
    launch_env(CONFIGS / f"zero{stage}.yaml", monkeypatch)
    plugin = DeepSpeedPlugin()
    assert plugin.zero_stage == stage and plugin.zero3_init_flag == (stage == 3)
    # bf16 is set in the JSON: with a DeepSpeed file, accelerate ignores its own mixed_precision
    assert plugin.deepspeed_config["bf16"] == {"enabled": True}


@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_json_parses_with_its_stage(stage):
    config = json.loads((CONFIGS / f"zero{stage}.json").read_text())
    assert config["zero_optimization"]["stage"] == stage
    assert config["train_micro_batch_size_per_gpu"] == config["gradient_accumulation_steps"] == "auto"
    if stage == 3:  # whole 16-bit weights on save, so checkpoints are plain safetensors
        assert config["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True


def test_precision_beside_a_deepspeed_file_is_refused(tmp_path, monkeypatch):
    """Why zero*.yaml carry no mixed_precision: next to a DeepSpeed JSON accelerate refuses it."""
    broken = tmp_path / "zero2.yaml"
    broken.write_text((CONFIGS / "zero2.yaml").read_text() + "mixed_precision: bf16\n")
    launch_env(broken, monkeypatch)
    with pytest.raises(ValueError, match="deepspeed_config_file"):
        DeepSpeedPlugin()


WORKER = """
import json, os, sys, torch, torch.distributed as dist
from accelerate import Accelerator
acc = Accelerator()
total = torch.tensor([float(acc.process_index + 1)])
dist.all_reduce(total)
json.dump({"rank": acc.process_index, "world": acc.num_processes, "type": str(acc.distributed_type),
           "backend": dist.get_backend(), "sum": total.item()},
          open(os.path.join(sys.argv[1], f"rank{acc.process_index}.json"), "w"))
acc.wait_for_everyone()
acc.end_training()  # destroys the process group: exiting with a live gloo group can abort
"""


def test_cpu_ddp_really_runs_two_gloo_processes(tmp_path):
    (tmp_path / "worker.py").write_text(WORKER)
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                           str(CONFIGS / "cpu_ddp.yaml"), "--main_process_port", "0",
                           str(tmp_path / "worker.py"), str(tmp_path)],
                          env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["rank"] for r in ranks] == [0, 1]
    assert all(r["world"] == 2 and r["backend"] == "gloo" and r["type"] == "DistributedType.MULTI_CPU"
               and r["sum"] == 3.0 for r in ranks)  # 1 + 2, all-reduced across both processes
