"""The benchmarks compare like with like: their settings, checked without running them (TRL is a bench extra)."""
import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_time_to_accuracy_gives_trl_the_recipes_grpo_settings():
    from tasks.recipe import load_recipe

    bench = load("grpo_time_to_accuracy")
    a = bench.parser().parse_args([])
    assert a.recipe == "configs/default.yaml" and a.seeds == [0, 1, 2] and a.budget == 240
    recipe = load_recipe(ROOT / a.recipe)
    cfg = recipe.reasoning_rl
    trl = bench.trl_settings(cfg, recipe.model.mixed_precision, seed=1)
    # one rollout batch of the recipe's 32 prompts x G = 8 sequences feeds one optimizer step, as on the r1flow side
    assert trl["per_device_train_batch_size"] == cfg.prompts_per_step * cfg.group_size == 256
    assert trl["num_generations"] == 8 and trl["gradient_accumulation_steps"] == 1 and trl["steps_per_generation"] == 1
    # the recipe's rate, its cosine over its 170 iterations, no KL term, DAPO's clip range and token-mean loss
    assert cfg.steps == 170
    assert (trl["learning_rate"], trl["lr_scheduler_type"], trl["max_steps"], trl["warmup_steps"]) == (1e-4, "cosine", 170, 0)
    assert (trl["beta"], trl["epsilon"], trl["epsilon_high"], trl["loss_type"]) == (0.0, 0.2, 0.28, "dapo")
    assert trl["scale_rewards"] == "group" and trl["num_iterations"] == 1 and trl["seed"] == 1
    assert trl["reward_weights"] == [1.0, 0.2] and trl["max_completion_length"] == 64 and trl["bf16"] is False
    # the bench's first settings, as its docstring gives them: 64 prompts at a constant rate, beta 0.02, bf16
    old = load_recipe(ROOT / a.recipe, ["reasoning_rl.prompts_per_step=64", "reasoning_rl.schedule=constant",
                                        "reasoning_rl.beta=0.02", "reasoning_rl.minibatch_size=512",
                                        "model.mixed_precision=bf16"])
    trl = bench.trl_settings(old.reasoning_rl, old.model.mixed_precision, seed=0)
    assert (trl["per_device_train_batch_size"], trl["lr_scheduler_type"], trl["beta"], trl["bf16"]) == (
        512, "constant", 0.02, True)
    warm = load_recipe(ROOT / a.recipe, ["reasoning_rl.schedule=constant", "reasoning_rl.warmup_steps=10"])
    assert bench.trl_settings(warm.reasoning_rl, "no", 0)["lr_scheduler_type"] == "constant_with_warmup"
    # what TRL cannot do like for like is refused by name, before anything trains
    with pytest.raises(SystemExit, match=r"reasoning_rl.minibatch_size: .* = 512, not prompts_per_step x group_size = 256"):
        bench.main([str(ROOT / a.recipe), "--set", "reasoning_rl.minibatch_size=512", "--start", "missing"])
    odd = load_recipe(ROOT / a.recipe, ["reasoning_rl.advantage=rloo", "reasoning_rl.loss_agg=seq-mean-token-sum"])
    with pytest.raises(SystemExit, match=r"(?s)loss_agg: 'seq-mean-token-sum'.*advantage: 'rloo'"):
        bench.trl_settings(odd.reasoning_rl, "no", 0)
    with pytest.raises(SystemExit, match="cold_strat"):
        bench.main([str(ROOT / a.recipe), "--set", "cold_strat.steps=1"])
    lora = load_recipe(ROOT / a.recipe, ["reasoning_rl.finetune=lora", "reasoning_rl.ppo_epochs=2",
                                         "reasoning_rl.rewards=[{name: exact_int}, {name: overlong}]"])
    with pytest.raises(SystemExit, match=r"(?s)ppo_epochs: 2.*finetune: 'lora'.*rewards: overlong"):
        bench.trl_settings(lora.reasoning_rl, "no", 0)
    # the control: TRL's schedule spans the steps it completes in the budget
    assert bench.trl_settings(cfg, "no", 0, steps=74)["max_steps"] == 74


def test_time_to_accuracy_names_a_bad_flag_or_data_file_before_anything_runs(tmp_path, capsys):
    bench = load("grpo_time_to_accuracy")
    for flag, value, message in [("--trl-steps", "0", "expected a positive integer, got '0'"),
                                 ("--budget", "0", "expected a positive number of seconds, got '0'"),
                                 ("--eval-every", "inf", "expected a positive number of seconds, got 'inf'"),
                                 ("--eval-every", "30s", "expected a positive number of seconds, got '30s'"),
                                 ("--seeds", "0,one", "expected comma-separated integers, got '0,one'")]:
        with pytest.raises(SystemExit):
            bench.parser().parse_args([flag, value])
        assert message in capsys.readouterr().err
    recipe, out = str(ROOT / "configs" / "default.yaml"), tmp_path / "out"
    with pytest.raises(SystemExit, match="--order r1flow,tlr: expected r1flow and/or trl"):
        bench.main([recipe, "--order", "r1flow,tlr", "--out", str(out)])
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "rl_prompts.jsonl").write_text('{"prompt": "1+2", "answer": "3"}\n{"prompt": "1+3"}\n')
    with pytest.raises(SystemExit, match=r"rl_prompts.jsonl.*(line|row) 2.*answer"):
        bench.main([recipe, "--set", f"data.dir={tmp_path / 'data'}", "--out", str(out)])
    (tmp_path / "data" / "rl_prompts.jsonl").write_text('{"prompt": "1+2", "answer": "3"}\n')
    with pytest.raises(SystemExit, match=r"eval.jsonl: file not found"):
        bench.main([recipe, "--set", f"data.dir={tmp_path / 'data'}", "--out", str(out)])
    assert not out.exists()  # nothing written before the runs


def test_time_to_accuracy_ratio_and_summary():
    bench = load("grpo_time_to_accuracy")
    # TRL ends at 0.70 after 240 s; r1flow first reaches 0.70 at its 120 s checkpoint: half the time
    runs = {0: {"r1flow": [(0.0, 0.6), (60.0, 0.66), (120.0, 0.70), (180.0, 0.74)],
                "trl": [(0.0, 0.6), (120.0, 0.65), (240.0, 0.70)]},
            1: {"r1flow": [(0.0, 0.6), (60.0, 0.62), (180.0, 0.64)],
                "trl": [(0.0, 0.6), (240.0, 0.66)]}}
    assert bench.time_ratio(runs[0]) == 0.5 and bench.time_ratio(runs[1]) is None
    # interpolated: 0.66 at 60 s, 0.70 at 120 s, so it crosses 0.70 at 120 s; a target of 0.68 at 90 s
    assert bench.crossing(runs[0]["r1flow"], 0.70) == 120.0 and abs(bench.crossing(runs[0]["r1flow"], 0.68) - 90) < 1e-9
    assert bench.reach(runs[0]["r1flow"], 0.68) == 120.0  # the checkpoint convention: the next checkpoint
    # a TRL run that ends below the start is not "reached" at 0 s by the shared start point
    assert bench.time_ratio({"r1flow": [(0.0, 0.6), (60.0, 0.55)], "trl": [(0.0, 0.6), (240.0, 0.58)]}) is None
    assert abs(bench.crossing([(0.0, 0.6), (60.0, 0.55), (90.0, 0.61)], 0.58) - 75) < 1e-9  # 60 + 30 * 0.03 / 0.06
    assert bench.crossing([(0.0, 0.6), (30.0, 0.62)], 0.58) == 30.0  # start above: the first checkpoint
    out = bench.summarise(runs, start_acc=0.6, every=60.0)
    assert out["r1flow"] == (0.74 + 0.64) / 2
    assert out["checkpoint"]["ratios"] == [0.5, None] and out["checkpoint"]["mean_ratio"] is None
    # the seed-mean curves at the same times (every 60 s up to the side's shortest run's end), each seed
    # interpolated between its checkpoints: TRL's seed 0 is 0.625 at 60 s, seed 1 0.615; r1flow's seed 1 0.63 at 120 s
    trl, r1 = bench.mean_curve(runs, "trl", 60.0), bench.mean_curve(runs, "r1flow", 60.0)
    assert [(t, round(acc, 4)) for t, acc in trl] == [(0.0, 0.6), (60.0, 0.62), (120.0, 0.64), (180.0, 0.66),
                                                      (240.0, 0.68)]
    assert [(t, round(acc, 4)) for t, acc in r1] == [(0.0, 0.6), (60.0, 0.64), (120.0, 0.665), (180.0, 0.69)]
    # TRL's mean ends at 0.68 after 240 s; r1flow's mean is at or above it first at 180 s (180 / 240), and crosses it
    # at 120 + 60 * (0.68 - 0.665) / (0.69 - 0.665) = 156 s (156 / 240)
    assert abs(out["checkpoint"]["pooled_ratio"] - 0.75) < 1e-9 and abs(out["interpolated"]["pooled_ratio"] - 0.65) < 1e-9
    # a mean over seeds that end at different times stops at the shortest (TRL's seed 1 ending at 200 s here)
    runs[1]["trl"] = [(0.0, 0.6), (200.0, 0.66)]
    assert [t for t, _ in bench.mean_curve(runs, "trl", 60.0)] == [0.0, 60.0, 120.0, 200.0]  # 180 s gives way to 200
    runs[1]["trl"] = [(0.0, 0.6), (215.0, 0.66)]
    assert [t for t, _ in bench.mean_curve(runs, "trl", 60.0)] == [0.0, 60.0, 120.0, 180.0, 215.0]
    out = bench.summarise({0: runs[0]}, start_acc=0.6, every=60.0)
    assert out["checkpoint"]["mean_ratio"] == 0.5 and out["interpolated"]["mean_ratio"] == 0.5
    assert out["checkpoint"]["pooled_ratio"] is None  # one seed: its own curves, not a resampled mean
    # TRL never scored after its start (no step in the budget): no ratio rather than a division by zero
    assert bench.time_ratio({"r1flow": [(0.0, 0.6), (60.0, 0.7)], "trl": [(0.0, 0.6)]}) is None


def test_time_to_accuracy_bootstrap_keeps_the_comparison_paired():
    bench = load("grpo_time_to_accuracy")
    # four problems; TRL ends solving 1 and 2; r1flow solves 1 at 60 s and 1, 2, 3 at 120 s. Whatever the
    # resample's weights, r1flow's 120 s checkpoint is at or above TRL's final accuracy and its 60 s one at or
    # below it, so every replicate crosses between 60 and 120 s: a ratio in [0.25, 0.5] every time
    times = {"r1flow": [0.0, 60.0, 120.0], "trl": [0.0, 240.0]}
    outcomes = {0: {"r1flow": [[1, 0, 0, 0], [1, 0, 0, 0], [1, 1, 1, 0]], "trl": [[1, 0, 0, 0], [1, 1, 0, 0]]}}
    runs = {0: {side: [(t, sum(o) / 4) for t, o in zip(times[side], outcomes[0][side])] for side in times}}
    band = bench.resample(runs, outcomes, every=60.0, reps=400)
    assert 0.25 <= band["mean"]["low"] < band["mean"]["high"] <= 0.5 and band["mean"]["at_most_half"] == 1.0
    # ... and the problems are resampled: unresampled, every replicate would be 60 + 60 * 0.25 / 0.5 = 90 s (0.375)
    assert band["pooled"] is None  # one seed: no seed-mean curves
    # twenty problems, none solved at the start; TRL ends solving ten, r1flow none: a replicate reaches TRL's final
    # accuracy only if it draws none of TRL's ten (2 ** -20), so none of 400 does
    never = {0: {"r1flow": [[0] * 20] * 3, "trl": [[0] * 20, [1] * 10 + [0] * 10]}}
    runs = {0: {side: [(t, sum(o) / 20) for t, o in zip(times[side], never[0][side])] for side in times}}
    band = bench.resample(runs, never, every=60.0, reps=400)
    assert band["mean"]["at_most_half"] == 0.0 and band["mean"]["low"] == float("inf")
    # two seeds that disagree: seed 0 as in the first case, seed 1 reaching TRL's final accuracy only at 240 s of
    # 240 (ratio 1) unless the draw leaves TRL no gain (then at 60 s). A mean of 1.0 needs seed 1 drawn twice: the
    # seeds are resampled too (with both kept, the mean is at most (0.5 + 1) / 2)
    two = {0: outcomes[0], 1: {"r1flow": [[1, 0, 0, 0], [1, 0, 0, 0], [1, 0, 0, 0], [1, 1, 0, 0]],
                               "trl": outcomes[0]["trl"]}}
    times2 = {0: times, 1: {"r1flow": [0.0, 60.0, 120.0, 240.0], "trl": [0.0, 240.0]}}
    runs = {s: {side: [(t, sum(o) / 4) for t, o in zip(times2[s][side], two[s][side])] for side in two[s]} for s in two}
    band = bench.resample(runs, two, every=60.0, reps=400)
    assert band["mean"]["low"] < 0.5 < band["mean"]["high"] == 1.0 and 0.2 < band["mean"]["at_most_half"] < 0.8
    assert band["pooled"] is not None
    # the percentile interval itself: of 40 values 0..39, the 2.5th and 97.5th percentiles drop one value each end
    assert bench.band(list(range(40))[::-1]) == {"low": 1.0, "high": 38.0, "at_most_half": 1 / 40}
    assert bench.band([0.4, float("inf")] * 20)["high"] == float("inf")


def test_time_to_accuracy_saves_each_problems_outcome_and_summarises_the_file(tmp_path, capsys):
    bench = load("grpo_time_to_accuracy")
    outcomes = {0: {"r1flow": [[1, 0, 0, 0], [1, 1, 1, 0]], "trl": [[1, 0, 0, 0], [1, 1, 0, 0]]}}
    runs = {0: {"r1flow": [(0.0, 0.25), (120.0, 0.75)], "trl": [(0.0, 0.25), (240.0, 0.5)]}}
    bench.save(tmp_path / "curves.json", runs, outcomes, 30.0, ["--seeds", "0"])
    saved = json.loads((tmp_path / "curves.json").read_text())
    assert saved["outcomes"]["0"]["r1flow"] == ["1000", "1110"] and saved["every"] == 30.0
    out = bench.main(["--summarise", str(tmp_path / "curves.json")])
    # interpolated: 0.25 at 0 s, 0.75 at 120 s, crosses 0.5 at 60 s of TRL's 240
    assert out["checkpoint"]["mean_ratio"] == 0.5 and out["interpolated"]["mean_ratio"] == 0.25
    assert "interval" in out and (tmp_path / "time_to_accuracy.png").exists()
    assert "<= 0.5 in" in capsys.readouterr().out
    # a file written before outcomes were kept: {seed: {side: curve}}; summarised without an interval
    (tmp_path / "old.json").write_text(json.dumps({"0": runs[0]}))
    assert "interval" not in bench.main(["--summarise", str(tmp_path / "old.json")])
    with pytest.raises(SystemExit, match="missing.json"):
        bench.main(["--summarise", str(tmp_path / "missing.json")])
    for bad in ({"runs": {"0": {"trl": [[0.0]]}}}, [1, 2], {"runs": {}},
                {"every": 30.0, "runs": {"0": runs[0]}, "outcomes": {"0": {"r1flow": ["1000"], "trl": ["1000", "1100"]}}}):
        (tmp_path / "bad.json").write_text(json.dumps(bad))
        with pytest.raises(SystemExit, match="bad.json: not a curves.json"):
            bench.main(["--summarise", str(tmp_path / "bad.json")])


def test_time_to_accuracy_clock_scores_a_side_that_ends_early_once():
    bench = load("grpo_time_to_accuracy")
    scores = iter([[1.0, 0.0], [1.0, 1.0], [0.0, 0.0]])
    clock = bench.Clock(budget=1e9, every=1e9, score=lambda model: next(scores))
    assert clock.tick(None) is False and clock.curve == []  # no checkpoint time yet: not scored
    clock.finish(None)  # the side ran out of steps: scored once at its end
    assert [acc for _, acc in clock.curve] == [0.5] and clock.outcomes == [[1.0, 0.0]]
    spent = bench.Clock(budget=0.0, every=1e9, score=lambda model: next(scores))
    assert spent.tick(None) is True and len(spent.curve) == 1
    spent.finish(None)  # the budget's last tick already scored it
    assert len(spent.curve) == 1 and spent.curve[0][1] == 1.0
    with pytest.raises(SystemExit):
        bench.parser().parse_args(["--seeds", "0,0"])


def test_grpo_vs_trl_gives_trl_the_same_steps_batch_and_settings():
    bench = load("grpo_vs_trl")
    a = bench.parser().parse_args([])
    trl = bench.trl_settings(a)
    assert trl["max_steps"] == a.steps == 60 and trl["per_device_train_batch_size"] == a.prompts * a.G
    assert trl["num_generations"] == a.G and trl["steps_per_generation"] == 1 and trl["num_iterations"] == 1
    assert (trl["learning_rate"], trl["beta"], trl["max_completion_length"]) == (a.lr, a.beta, a.max_new)


def test_fact_probe_reads_the_held_out_problems_and_names_a_bad_line(tmp_path):

    bench = load("fact_probe")
    good = tmp_path / "eval.jsonl"
    good.write_text('{"prompt": "7+3*4", "answer": "19", "level": 2}\n')
    [p] = bench.problems_of(str(good))
    assert (p.answer, p.steps, p.level) == (19, ("3*4=12", "7+12=19"), 2)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "1+2", "level": 1}\n{"prompt": "1+2"}\n')
    with pytest.raises(SystemExit, match=r"bad.jsonl: row 2: column 'level': expected an integer, got None"):
        bench.problems_of(str(bad))
    bad.write_text('{"prompt": "one plus two", "level": 1}\n')
    with pytest.raises(SystemExit, match=r"bad.jsonl: row 1: prompt 'one plus two' is not an arithmetic expression"):
        bench.problems_of(str(bad))
    with pytest.raises(SystemExit, match="missing.jsonl: file not found"):
        bench.problems_of(str(tmp_path / "missing.jsonl"))


def test_profile_loops_times_and_ranks_the_operators_of_each_hot_loop(tmp_path, tiny_model, tiny_tokenizer, capsys):
    import json


    bench = load("profile_loops")
    model_dir, data = tmp_path / "model", tmp_path / "data"
    tiny_model.save_pretrained(model_dir)
    tiny_tokenizer.save_pretrained(model_dir)
    data.mkdir()
    (data / "pretrain.jsonl").write_text("".join(json.dumps({"text": f"{i}+1: {i}+1={i + 1}"}) + "\n"
                                                 for i in range(16)))
    (data / "rl_prompts.jsonl").write_text('{"prompt": "1+2", "answer": "3"}\n{"prompt": "3*4-5", "answer": "7"}\n')
    import torch

    small = ["--set", f"data.dir={data}", "--set", "base.batch_size=8", "--set", "reasoning_rl.prompts_per_step=2"]
    threads = torch.get_num_threads()
    try:
        out = bench.main([str(model_dir), *small, "--repeats", "1", "--top", "40", "--threads", "1"])
    finally:
        torch.set_num_threads(threads)
    printed = capsys.readouterr().out
    assert "pretraining batch: 8 documents" in printed  # the recipe's sizes, as overridden
    for loop, title in [("pretrain", "pretraining step"), ("rollout", "rollout"), ("grpo", "GRPO pass")]:
        ops = out[loop]["ops"]
        assert out[loop]["median_s"] > 0 and len(ops) == 40 and title in printed  # of 87-184 operators a loop
        assert [ms for _, ms, _ in ops] == sorted((ms for _, ms, _ in ops), reverse=True)
        assert 0 < sum(share for _, _, share in ops) <= 1 + 1e-9
    # a training pass's matrix products are profiled (where they rank is timing: on a loaded machine a tiny
    # model's products can fall out of the top 3, as they did beside the slow test on 2026-12-07)
    assert "aten::mm" in {op for op, _, _ in out["grpo"]["ops"]}
    # reward scoring: the recipe's rewards over the rollout's samples, as a share of the rollout's time
    assert "reward scoring (16 samples: exact_int, format)" in printed  # 2 prompts x the recipe's G = 8
    assert out["score"]["share_of_rollout"] == out["score"]["median_s"] / out["rollout"]["median_s"] > 0
    # the same pass with each group's prompt computed once: the same gradients, timed side by side
    shared = out["share_prompts"]
    assert shared["ratio"] == shared["plain_s"] / shared["shared_s"] > 0 and shared["max_grad_diff"] < 1e-5
    assert "GRPO pass, each group's prompt once" in printed
    # the recipe's base optimizer (Muon): its step stacked by shape against torch.optim.Muon's, side by side
    muon = out["muon"]
    assert muon["ratio"] == muon["per_matrix_s"] / muon["stacked_s"] > 0
    assert "Muon's step over the 14 hidden matrices (3 shapes)" in printed
    # wrong inputs: one line naming what is wrong
    with pytest.raises(SystemExit, match="nowhere"):
        bench.main([str(tmp_path / "nowhere"), *small])
    with pytest.raises(SystemExit, match="missing/pretrain.jsonl: file not found"):
        bench.main([str(model_dir), "--set", f"data.dir={tmp_path / 'missing'}"])
    with pytest.raises(SystemExit, match="nope.yaml: recipe file not found"):
        bench.main([str(model_dir), str(tmp_path / "nope.yaml")])
    with pytest.raises(SystemExit, match="batch_size"):
        bench.main([str(model_dir), "--set", "base.batch_size=0"])


def test_rollout_bench_times_three_sides_and_the_processes_sample_the_same_tokens(capsys):
    import re

    import torch

    bench = load("rollout")
    threads = torch.get_num_threads()
    try:
        bench.main(["--repeats", "2", "--G", "2", "--max-new-tokens", "6", "--batch-rows", "16", "--threads", "1",
                    "--workers", "2"])
    finally:
        torch.set_num_threads(threads)
    printed = capsys.readouterr().out
    runs = {side: [int(n) for n in re.findall(rf"\] {side}\s*: *(\d+) tokens", printed)]
            for side in ("model.generate loop", "r1flow engine", "r1flow, 2 processes")}
    assert all(len(v) == 2 for v in runs.values()), printed
    assert runs["r1flow engine"] == runs["r1flow, 2 processes"], "the same seeds sample the same tokens"
    assert re.search(r"processes vs one  : median \d+\.\d\dx", printed)
