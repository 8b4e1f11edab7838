"""The cache key: each ingredient changes exactly the keys it should, and nothing else does.

A fake distillation stage takes two model inputs (teacher and student) and reads one data file;
its key must follow each of them and ignore everything it does not read.
"""
from __future__ import annotations

import pytest

import tasks.stage as stage_module
from components.config import ModelConfig, TrainConfig
from tasks.recipe import load_recipe
from tasks.refs import DatasetRef, ModelRef
from tasks.stage import stage, stage_key
from tasks.versioning import DataRef


@stage(config=TrainConfig, inputs=("teacher", "student"), reads=("cold_start.jsonl",), code=("components/io.py",))
def fake_distill(ctx, teacher, student):
    """A stage with two model inputs."""


@stage(config=TrainConfig, inputs=("policy", "dataset"), optional=("dataset",), code=("components/io.py",))
def fake_sft(ctx, policy, dataset):
    """A stage with a model and an optional dataset input."""


DATA = DataRef(path="/data", md5="d0", files={"cold_start.jsonl": "a1", "eval.jsonl": "b2", "pretrain.jsonl": "c3"})
TEACHER = ModelRef(uri="/t", digest="teacher-1", stage="alignment")
STUDENT = ModelRef(uri="/s", digest="student-1", stage="student_base")


def key(spec=fake_distill, cfg=None, model=None, seed=0, inputs=None, data=DATA):
    return stage_key(spec, cfg or TrainConfig(), model or ModelConfig(), seed,
                     {"teacher": TEACHER, "student": STUDENT} if inputs is None else inputs, data)


def test_the_key_is_deterministic():
    assert key() == key()


@pytest.mark.parametrize("change", [
    dict(cfg=TrainConfig(lr=2e-3)),
    dict(cfg=TrainConfig(lora={"r": 4})),
    dict(model=ModelConfig(dtype="bfloat16")),
    dict(model=ModelConfig(arch={"num_layers": 3})),
    dict(seed=1),
    dict(inputs={"teacher": ModelRef(uri="/t", digest="teacher-2", stage="alignment"), "student": STUDENT}),
    dict(inputs={"teacher": TEACHER, "student": ModelRef(uri="/s", digest="student-2", stage="student_base")}),
    dict(data=DataRef(path="/data", md5="d1", files={**DATA.files, "cold_start.jsonl": "a9"})),
], ids=["section", "nested-section", "model-dtype", "model-arch", "seed", "teacher", "student", "file-it-reads"])
def test_each_ingredient_it_depends_on_changes_the_key(change):
    assert key(**change) != key()


@pytest.mark.parametrize("change", [
    dict(data=DataRef(path="/data", md5="d2", files={**DATA.files, "eval.jsonl": "b9"})),
    dict(data=DataRef(path="/elsewhere", md5="d0", files=DATA.files)),
    dict(inputs={"teacher": ModelRef(uri="/moved", digest="teacher-1", stage="x", run_id="r"), "student": STUDENT}),
], ids=["file-it-does-not-read", "data-folder-path", "input-location-not-content"])
def test_what_it_does_not_read_leaves_the_key_alone(change):
    assert key(**change) == key()


def test_an_unrelated_stage_config_leaves_the_key_alone():
    a = load_recipe(None, ["cold_start.lr=0.001"])
    b = load_recipe(None, ["cold_start.lr=0.002", "reasoning_rl.beta=0.1"])
    assert key(cfg=a.sft) == key(cfg=b.sft)
    assert key(cfg=a.cold_start) != key(cfg=b.cold_start)


def test_the_code_hash_is_part_of_the_key(monkeypatch):
    before = key()
    monkeypatch.setattr(stage_module, "code_digest", lambda *paths: "edited")
    assert key() != before


def test_the_content_of_a_user_source_file_is_part_of_the_key(tmp_path):
    source = tmp_path / "mine.jsonl"
    source.write_text('{"text": "a"}\n')
    cfg = TrainConfig(source=str(source))
    first = key(cfg=cfg)
    source.write_text('{"text": "b"}\n')
    assert key(cfg=cfg) != first


def test_an_optional_dataset_input_is_keyed_by_its_content():
    policy = ModelRef(uri="/p", digest="p1", stage="cold_start")
    rows = lambda digest: DatasetRef(uri="/d.jsonl", digest=digest, rows=3, stage="rejection_sampling")  # noqa: E731
    base = key(spec=fake_sft, inputs={"policy": policy, "dataset": None})
    assert key(spec=fake_sft, inputs={"policy": policy, "dataset": rows("x")}) != base
    assert key(spec=fake_sft, inputs={"policy": policy, "dataset": rows("x")}) == \
        key(spec=fake_sft, inputs={"policy": policy, "dataset": rows("x")})
    assert key(spec=fake_sft, inputs={"policy": policy, "dataset": rows("y")}) != \
        key(spec=fake_sft, inputs={"policy": policy, "dataset": rows("x")})


def test_imports_inside_functions_are_followed(monkeypatch, tmp_path):
    import tasks.versioning as v

    (tmp_path / "components").mkdir()
    (tmp_path / "components" / "a.py").write_text("def f():\n    from components import b\n")
    (tmp_path / "components" / "b.py").write_text("from .c import g\n")
    (tmp_path / "components" / "c.py").write_text("g = 1\n")
    monkeypatch.setattr(v, "PROJECT_ROOT", tmp_path)
    v.module_sources.cache_clear(), v._imports.cache_clear(), v._files_of.cache_clear()
    try:
        assert v.module_sources("components.a") == ("components/a.py", "components/b.py", "components/c.py")
    finally:
        v.module_sources.cache_clear(), v._imports.cache_clear(), v._files_of.cache_clear()


def test_a_stage_is_keyed_on_the_code_it_imports_and_not_on_the_rest():
    from tasks.stages import get_stage

    base, tts, align = (set(get_stage(n).code) for n in ("base", "tts_eval", "alignment"))
    assert {"tasks/stages/base.py", "components/training/sft.py", "components/modeling/tokenizer.py"} <= base
    assert "components/search/mcts.py" in tts and "components/search/mcts.py" not in base
    assert "components/training/alignment/dpo.py" in align and "components/training/alignment/dpo.py" not in base
    assert "components/modeling/reward_models.py" in align
    # the orchestration that calls a stage is not part of it, nor the framework that declares, tracks and saves it
    assert not {"tasks/pipeline.py", "tasks/stage_task.py", "tasks/stages/__init__.py", "tasks/stage.py",
                "tasks/common.py", "tasks/tracking.py"} & (base | tts | align)
    # ... but what the framework calls in components is: finish() saves through components/modeling/models.py
    assert "components/modeling/models.py" in base
    # editing the RL code leaves pretraining cached: the framework's helpers import no trainer
    rl = set(get_stage("reasoning_rl").code)
    assert "components/training/grpo.py" in rl
    assert not {"components/training/grpo.py", "components/training/rejection.py"} & base


@pytest.mark.parametrize("stage_name, field, inputs", [
    ("distill", "distill.samples.source", ("teacher", "student")),
    ("reward_model", "reward_model.heldout_source", ("policy",)),
])
def test_the_content_of_a_nested_user_source_file_is_part_of_the_key(tmp_path, stage_name, field, inputs):
    from tasks.stages import get_stage

    source = tmp_path / "mine.jsonl"
    source.write_text('{"a": 1}\n')
    recipe = load_recipe(None, [f"{field}={source}"])
    spec = get_stage(stage_name)
    data = DataRef(path="/data", md5="d0", files={n: "x" for n in spec.reads})
    refs = {n: ModelRef(uri="/m", digest="m1", stage="x") for n in inputs}
    first = stage_key(spec, recipe.section(stage_name), ModelConfig(), 0, refs, data)
    source.write_text('{"a": 2}\n')
    assert stage_key(spec, recipe.section(stage_name), ModelConfig(), 0, refs, data) != first


def test_a_memory_setting_of_the_model_reruns_nothing():
    from tasks.stages import get_stage

    spec = get_stage("sft")
    data = DataRef(path="/data", md5="d0", files={n: "x" for n in spec.reads})
    refs = {n: ModelRef(uri="/m", digest="m1", stage="x") for n in spec.inputs}
    cfg = load_recipe(None, []).section("sft")
    keys = {stage_key(spec, cfg, ModelConfig(gradient_checkpointing=flag), 0, refs, data) for flag in (False, True)}
    assert len(keys) == 1
    assert stage_key(spec, cfg, ModelConfig(dtype="bfloat16"), 0, refs, data) not in keys
