"""Recipes: one YAML per recipe, typed sections built from the stage registry, one-line errors."""
import subprocess
import sys
from pathlib import Path

import pytest

from components.config import RecipeError, TrainConfig
from tasks.recipe import Recipe, load_recipe
from tasks.stages import registry

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO / "configs").glob("*.yaml")))
def test_every_shipped_recipe_validates_and_names_its_command(name):
    path = REPO / "configs" / name
    assert isinstance(load_recipe(path), Recipe)
    assert path.read_text().splitlines()[0] == f"# r1flow run configs/{name}"


def test_overrides_are_typed_and_nested():
    r = load_recipe(REPO / "configs/tiny.yaml", ["cold_start.lr=0.5", "model.arch.num_layers=3",
                                                  "run.stages=[base]", "cold_start.source="])
    assert r.cold_start.lr == 0.5 and r.model.arch.num_layers == 3 and r.run.stages == ["base"]
    assert r.cold_start.source is None


def test_a_bare_no_is_the_precision_mode_not_false(tmp_path):
    """YAML 1.1 reads `no` as false; `model.mixed_precision: no` is the documented way to turn it off."""
    assert load_recipe(REPO / "configs/tiny.yaml", ["model.mixed_precision=no"]).model.mixed_precision == "no"
    (tmp_path / "r.yaml").write_text("extends: %s\nmodel: {mixed_precision: no}\n" % (REPO / "configs/tiny.yaml"))
    assert load_recipe(tmp_path / "r.yaml").model.mixed_precision == "no"
    with pytest.raises(RecipeError, match="model.mixed_precision: Input should be 'no' or 'bf16'"):
        load_recipe(REPO / "configs/tiny.yaml", ["model.mixed_precision=yes"])


@pytest.mark.parametrize("override, message", [
    ("cold_start.lrr=1", "cold_start.lrr: Extra inputs are not permitted (did you mean cold_start.lr?)"),
    ("sft.stpes=3", "sft.stpes: Extra inputs are not permitted (did you mean sft.steps?)"),
    ("model.arch.hiden_size=64", "model.arch.hiden_size: Extra inputs are not permitted (did you mean "
     "model.arch.hidden_size?)"),
    ("reasoning_rl.rollout.batchsize=8", "(did you mean reasoning_rl.rollout.batch_size?)"),
    ("reasonng_rl.steps=3", "reasonng_rl: Extra inputs are not permitted (did you mean reasoning_rl?)"),
    ("cold_start.lr=abc", "cold_start.lr: Input should be a valid number"),
    ("cold_start.lr=-1", "cold_start.lr: Input should be greater than 0"),
    ("cold_start.finetune=half", "cold_start.finetune: Input should be 'full', 'lora' or 'qlora'"),
    ("base.optimizer=sgd", "base.optimizer: Input should be 'adamw' or 'muon'"),
    ("model.arch.hidden_size=33", "model.arch: Value error, hidden_size 33 is not divisible by num_heads"),
    ("run.stages=[base, warmup]", "run: Value error, unknown stage 'warmup' in run.stages; choose from"),
    ("run.stages=[base, cold_strat]", "unknown stage 'cold_strat' in run.stages; did you mean 'cold_start'?"),
    ("base.steps=true", "base.steps: Value error, expected a number, got true"),  # not 1
    ("evaluate.limit=false", "evaluate.limit: Value error, expected a number, got false"),
    ("cold_start.lr=true", "cold_start.lr: Value error, expected a number, got true"),
    ("data.levels=[1, true]", "data.levels: Value error, item 1: expected a number, got true"),
    ("run.stages=[cold_start]", "run.stages has no 'base' and model.name_or_path is empty"),
    ("rejection_sampling.rollout.backend=sglang", "rejection_sampling.rollout.backend: Input should be"),
    ("data.levels=[9]", "data.levels: Value error, unknown level(s) [9]"),
    ("reasoning_rl.pass_rate_band=[0.9, 0.1]", "reasoning_rl.pass_rate_band: Value error, expected 0 <= low <= high"),
    ("rejection_sampling.samples_per_prompt=0",
     "rejection_sampling.samples_per_prompt: Input should be greater than or equal to 1"),
    ("reasoning_rl.rewards=[{weight: 1}]", "reasoning_rl.rewards.0.name: Field required"),
    ("reasoning_rl.share_prompts=maybe", "reasoning_rl.share_prompts: Input should be a valid boolean"),
    ("alignment.average_with_start=0", "alignment.average_with_start: Input should be greater than 0"),
    ("alignment.average_with_start=1.5", "alignment.average_with_start: Input should be less than or equal to 1"),
    ("reasoning_rl.share_prompt=true", "(did you mean reasoning_rl.share_prompts?)"),
    ("reasoning_rl={beta: 0.04, kl_estimator: k1}", "reasoning_rl: Value error, kl_estimator: 'k1' as a loss term has"),
    ("evaluate.source={path: x.jsonl, splt: test}",
     "evaluate.source.splt: Extra inputs are not permitted (did you mean evaluate.source.split?)"),
    ("cold_start.source={path: ''}", "cold_start.source.path: String should have at least 1 character"),
    ("model.gradient_checkpointing=maybe", "model.gradient_checkpointing: Input should be a valid boolean"),
    ("student_base.init=prun", "student_base.init: Input should be 'scratch' or 'prune'"),
    ("student_base.calibration_rows=0", "student_base.calibration_rows: Input should be greater than or equal to 1"),
    ("distill.pack=maybe", "distill.pack: Input should be a valid boolean"),
    ("reasoning_rl.rewards=[{name: exact_intt}]", "reasoning_rl.rewards.0.name: Value error, unknown reward 'exact_intt'"),
    ("rejection_sampling.verifier=exactint", "rejection_sampling.verifier: Value error, unknown reward 'exactint'"),
    ("evaluate.correctness=nope", "evaluate.correctness: Value error, unknown reward 'nope'"),
    ("tts_eval.cells=[{strategy: beam_search, budgets: [4], options: {wdth: 2}}]",
     "beam_search has no option(s) ['wdth']; its options: ['agg', 'lookahead', 'width']"),
])
def test_invalid_values_name_file_and_dotted_field(override, message):
    with pytest.raises(RecipeError) as err:
        load_recipe(REPO / "configs/tiny.yaml", [override])
    assert str(err.value).startswith(str(REPO / "configs/tiny.yaml"))
    assert message in str(err.value)


def test_an_alignment_comparison_needs_the_house_rules_evaluation():
    with pytest.raises(RecipeError, match="alignment.compare compares the methods' true preference rates"):
        load_recipe(REPO / "configs/alignment_compare.yaml", ["evaluate.house_rules=false"])


def test_bad_files(tmp_path):
    with pytest.raises(RecipeError, match="recipe file not found$"):
        load_recipe(tmp_path / "nope.yaml")
    (tmp_path / "default.yaml").write_text("run: {name: x}\n")
    with pytest.raises(RecipeError, match=f"defualt.yaml: recipe file not found; did you mean {tmp_path}/default.yaml"):
        load_recipe(tmp_path / "defualt.yaml")
    (tmp_path / "bad.yaml").write_text("run: [unclosed")
    with pytest.raises(RecipeError, match="invalid YAML"):
        load_recipe(tmp_path / "bad.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n")
    with pytest.raises(RecipeError, match="a recipe is a mapping"):
        load_recipe(tmp_path / "list.yaml")
    with pytest.raises(RecipeError, match="expected section.field=value"):
        load_recipe(None, ["cold_start.lr"])
    with pytest.raises(RecipeError, match="an empty name"):
        load_recipe(None, ["base..lr=3"])
    with pytest.raises(RecipeError, match="the value is not valid YAML"):
        load_recipe(None, ["base.lr=[1"])
    (tmp_path / "twice.yaml").write_text("base: {steps: 3}\ncold_start: {lr: 0.5}\nbase: {lr: 0.1}\n")
    with pytest.raises(RecipeError, match="(?s)twice.yaml: invalid YAML: duplicate key 'base'.*line 3"):
        load_recipe(tmp_path / "twice.yaml")
    with pytest.raises(RecipeError, match="cannot read the recipe"):
        load_recipe(tmp_path)  # a directory


def test_a_recipe_extends_another_key_by_key(tmp_path):
    (tmp_path / "parent.yaml").write_text("run: {name: p, seed: 3}\ncold_start: {lr: 0.5, steps: 7}\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "child.yaml").write_text("extends: ../parent.yaml\nrun: {name: c}\ncold_start: {lr: 0.25}\n")
    r = load_recipe(tmp_path / "sub" / "child.yaml", ["cold_start.steps=9"])
    assert (r.run.name, r.run.seed, r.cold_start.lr, r.cold_start.steps) == ("c", 3, 0.25, 9)


def test_extends_errors_name_the_file(tmp_path):
    (tmp_path / "a.yaml").write_text("extends: b.yaml\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\n")
    with pytest.raises(RecipeError, match="extends itself"):
        load_recipe(tmp_path / "a.yaml")
    (tmp_path / "c.yaml").write_text("extends: missing.yaml\n")
    with pytest.raises(RecipeError, match=r"missing.yaml: recipe file not found \(extended by .*c.yaml\)"):
        load_recipe(tmp_path / "c.yaml")
    (tmp_path / "d.yaml").write_text("extends: [a.yaml]\n")
    with pytest.raises(RecipeError, match="extends: expected the path of another recipe"):
        load_recipe(tmp_path / "d.yaml")


def test_every_registered_stage_has_its_typed_section_with_the_stage_defaults():
    recipe = load_recipe(None)
    for name, spec in registry().items():
        section = recipe.section(name)
        assert isinstance(section, spec.config), name
        for field, value in spec.defaults.items():
            assert getattr(section, field) == value, (name, field)
    assert isinstance(recipe.base, TrainConfig) and recipe.base.steps == 1500 and recipe.cold_start.steps == 150


def test_a_recipe_is_validated_once_into_typed_objects():
    recipe = load_recipe(REPO / "configs/tiny.yaml")
    assert type(recipe) is Recipe
    assert Recipe.model_validate(recipe) is recipe, "no second validation of an already typed recipe"


def test_loading_every_recipe_imports_no_torch():
    """`r1flow run` of an all-cached recipe, `r1flow stages` and a typo's error never wait for torch: the
    stage sections live apart from the trainers, and stage modules import them inside their functions."""
    code = ("import sys, pathlib; from tasks.recipe import load_recipe\n"
            "[load_recipe(p) for p in sorted(pathlib.Path('configs').glob('*.yaml'))]\n"
            "print(sorted(m for m in ('torch', 'transformers', 'peft') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_a_registry_name_a_recipe_sets_is_still_checked():
    with pytest.raises(RecipeError, match=r"alignment.dpo.loss_type: .*unknown DPO loss 'sigmod'; choose from \['hinge'"):
        load_recipe(None, ["alignment.dpo.loss_type=sigmod"])
    with pytest.raises(RecipeError, match=r"distill.divergence: .*unknown distillation loss 'kl'"):
        load_recipe(None, ["distill.divergence=kl"])
    with pytest.raises(RecipeError, match=r"reward_model.objective: Input should be 'bradley_terry' or 'plackett_luce'"):
        load_recipe(None, ["reward_model.objective=elo"])
    assert load_recipe(None, ["alignment.dpo.loss_type=ipo"]).alignment.dpo.loss_type == "ipo"
    with pytest.raises(RecipeError, match=r"reasoning_rl.policy_loss: .*unknown policy loss 'clipped'; choose from "):
        load_recipe(None, ["reasoning_rl.policy_loss=clipped"])
    with pytest.raises(RecipeError, match=r"reasoning_rl.advantage: .*unknown advantage estimator 'dr_grpo'"):
        load_recipe(None, ["reasoning_rl.advantage=dr_grpo"])
    assert load_recipe(None, ["reasoning_rl.advantage=dr-grpo"]).reasoning_rl.advantage == "dr-grpo"


def test_the_torch_free_names_match_their_registries():
    from typing import get_args

    from components.training.alignment import ALIGNMENT_METHODS
    from components.training.reward_model import OBJECTIVES
    from components.training.configs import RewardModelConfig
    from tasks.stages.alignment import METHODS

    assert set(METHODS) == set(ALIGNMENT_METHODS)
    assert set(get_args(RewardModelConfig.model_fields["objective"].annotation)) == set(OBJECTIVES)


def test_accurate_keeps_the_grpo_and_dpo_settings_it_was_measured_with():
    """configs/accurate.yaml extends the default recipe; its README figures (90.0 % after GRPO)
    were measured with the default's GRPO and DPO settings of 2026-12-04, which it pins, so that a
    later change of the default (e.g. dropping the pass-rate probes) does not change it."""
    accurate = load_recipe(REPO / "configs" / "accurate.yaml")
    rl, dpo = accurate.reasoning_rl, accurate.alignment.dpo
    assert (rl.steps, rl.prompts_per_step, rl.schedule, rl.beta, rl.limit) == (100, 64, "constant", 0.02, 12000)
    assert (rl.pass_rate_band, rl.pass_rate_samples) == ((0.1, 0.9), 4)
    assert (dpo.steps, dpo.lr, dpo.beta, accurate.alignment.average_with_start) == (150, 2e-5, 0.5, 1.0)
    assert (accurate.base.optimizer, accurate.base.lr, accurate.base.steps) == ("adamw", 1e-3, 3000)


# The settings each shipped chain's figures were measured with (configs/fast.yaml: 83.1 % after GRPO in 413 s;
# the default recipe's reasoning stages from a Muon base, docs/performance.md, "Muon for the base"; configs/adamw.yaml:
# the default's chain until 2026-12-07, 86.0 / 85.7 / 84.3 % on seeds 0-2): the base's optimizer and rate, the data, base
# steps and completion-only loss, cold-start steps and rows, rejection-sampling prompts, SFT steps, then GRPO's
# iterations and rate.
MEASURED_CHAINS = {
    "fast.yaml": (("data-weighted", 2000, {4: 3}), 2000, False, 150, None, 6000, 600, 30, 3e-5),
    "default.yaml": (("data", 400, {4: 3}), 1400, True, 75, None, 2000, 300, 170, 1e-4),
    "adamw.yaml": (("data", 400, {4: 3}), 2200, True, 150, None, 2000, 300, 170, 1e-4),
}
BASE_OPTIMIZER = {"default.yaml": ("muon", 2e-3)}  # the others: AdamW at lr 1e-3


@pytest.mark.parametrize("name", sorted(MEASURED_CHAINS))
def test_a_measured_chain_keeps_the_settings_of_its_figures(name):
    """A change of the default recipe that reaches a chain through `extends` fails here, so its header is
    measured again (and a change of the default's own chain, so its README figures are)."""
    r = load_recipe(REPO / "configs" / name)
    assert r.run.stages[:5] == ["base", "cold_start", "rejection_sampling", "sft", "reasoning_rl"]
    assert (r.base.optimizer, r.base.lr) == BASE_OPTIMIZER.get(name, ("adamw", 1e-3))
    assert (r.base.batch_size, r.base.pack) == (64, True)
    rl = r.reasoning_rl
    assert ((r.data.dir, r.data.n_cold_start, r.data.pretrain_level_weights), r.base.steps, r.base.completion_only_loss,
            r.cold_start.steps, r.cold_start.limit, r.rejection_sampling.limit, r.sft.steps, rl.steps,
            rl.lr) == MEASURED_CHAINS[name]
    assert (rl.prompts_per_step, rl.group_size, rl.schedule) == (32, 8, "cosine")
    assert (rl.beta, rl.pass_rate_band, rl.share_prompts) == (0.0, None, True)


STUDENTS = {"default.yaml": ("prune", 3, "muon", 600, 3e-3, True), "adamw.yaml": ("scratch", 4, "adamw", 1500, 1e-3, True),
            "accurate.yaml": ("scratch", 4, "adamw", 1500, 1e-3, False)}


@pytest.mark.parametrize("name", sorted(STUDENTS))
def test_a_recipe_that_distills_keeps_the_student_base_of_its_figures(name):
    """The student's start and pretraining decide how much of the teacher distillation keeps (AdamW's student from
    scratch: 77.5 / 71.8 % on seeds 0 / 1; Muon's: 85.9 / 86.9 %; pruned from the base, 600 Muon steps: 88.3 / 87.9 %),
    so a recipe whose figures name a student keeps the one they came from."""
    r = load_recipe(REPO / "configs" / name)
    s = r.student_base
    assert {"student_base", "distill", "distill_control"} <= set(r.run.stages)
    assert (s.init, s.arch.num_heads, s.optimizer, s.steps, s.lr, s.completion_only_loss) == STUDENTS[name]
    assert (s.batch_size, s.pack, s.arch.hidden_size, s.arch.num_layers) == (64, True, 96, 3)


def test_the_default_and_the_weighted_data_share_the_curated_rows_and_the_corpus(tmp_path):
    """data-weighted/ (fast, accurate) differs from the default's data/ only by 1,600 more cold-start rows: the
    first 400 are the default's, and the pretraining corpus is the same (the generator draws each file from its
    own seeded stream), so the chains' bases are comparable."""
    from components.data.curate import build

    small = {"n_rl": 5, "n_general": 5, "n_preferences": 5, "n_rankings": 5, "n_align": 5, "n_eval": 5,
             "n_pref_eval": 5, "n_pretrain": 300}
    rows = {}
    for name in ("default", "fast"):
        recipe = load_recipe(REPO / "configs" / f"{name}.yaml")
        build(recipe.data.model_copy(update=small), tmp_path / name)
        rows[name] = {f: (tmp_path / name / f).read_text().splitlines() for f in ("cold_start.jsonl", "pretrain.jsonl")}
    assert len(rows["default"]["cold_start.jsonl"]) == 400 and len(rows["fast"]["cold_start.jsonl"]) == 2000
    assert rows["fast"]["cold_start.jsonl"][:400] == rows["default"]["cold_start.jsonl"]
    assert rows["fast"]["pretrain.jsonl"] == rows["default"]["pretrain.jsonl"]
