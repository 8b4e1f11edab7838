"""What the user sees: periodic progress lines without a terminal, the end-of-run table."""
from __future__ import annotations

import logging

import pytest

from tasks import console


@pytest.fixture()
def lines(monkeypatch):
    said = []
    monkeypatch.setattr(console, "say", lambda message, **kw: said.append((message, kw)))
    monkeypatch.setattr(console, "interactive", lambda: False)
    return said


def test_without_a_terminal_progress_is_a_line_every_tenth(lines):
    reporter = console.StageReporter("cold_start")
    for step in range(1, 101):
        reporter.progress(step, 100, {"loss": 1.0 / step, "lr": 0.1, "grad_norm": 3})
    shown = [m for m, _ in lines]
    assert len(shown) == 10, shown
    assert shown[0].split() [:3] == ["cold_start", "10/100", "(10%)"]
    assert "loss 0.1" in shown[0] and "lr" not in shown[0] and "eta" in shown[0]
    assert shown[-1].split()[1] == "100/100"
    assert all(kw == {"prefect": False} for _, kw in lines), "progress lines stay in the terminal"


def test_a_new_phase_starts_its_own_count(lines):
    reporter = console.StageReporter("reasoning_rl")
    reporter.progress(50, 100, {"tok/s": 1000.0}, phase="sampling")
    reporter.progress(1, 10, {"reward/mean": 0.5})
    assert "reasoning_rl · sampling  50/100" in lines[0][0] and "tok/s 1000" in lines[0][0]
    assert lines[1][0].strip().startswith("reasoning_rl  1/10")


def test_metric_lines_go_to_the_prefect_log_only(lines):
    console.StageReporter("sft").log({"loss": 0.25, "lr": 1e-3}, 20)
    assert lines == [("  sft step 20: loss 0.25", {"console": False})]


def test_summary_table_folds_evaluations_into_their_stage():
    rows = [dict(label="base", status="ran", seconds=12.0, accuracy=0.181, accuracy_se=0.012, run_id="abcdef1234567890",
                 evaluation_of=None),
            dict(label="evaluate/base", status="ran", seconds=1.0, accuracy=None, run_id="x", evaluation_of="base"),
            dict(label="rejection_sampling", status="cached", seconds=0.1, accuracy=None, run_id="r", evaluation_of=None)]
    table = console.summary_table(rows).splitlines()
    assert table[0].split() == ["stage", "status", "wall", "held-out", "accuracy", "MLflow", "run"]
    assert table[2].split() == ["base", "ran", "12.0", "s", "18.1", "%", "±", "1.2", "abcdef123456"]
    assert table[3].split() == ["rejection_sampling", "cached", "0.1", "s", "r"]
    assert len(table) == 4


def test_summary_table_shows_the_house_rules_column_only_when_measured():
    rows = [dict(label="sft", status="ran", seconds=3.0, accuracy=0.5, accuracy_se=0.01, preference=0.351,
                 preference_se=0.019, run_id="a", evaluation_of=None),
            dict(label="reward_model", status="ran", seconds=2.0, run_id="b", evaluation_of=None)]
    table = console.summary_table(rows).splitlines()
    assert "house rules" in table[0]
    assert table[2].split() == ["sft", "ran", "3.0", "s", "50.0", "%", "±", "1.0", "35.1", "%", "±", "1.9", "a"]
    assert table[3].split() == ["reward_model", "ran", "2.0", "s", "b"]


def test_summary_table_shows_each_stages_paired_gain_over_its_start():
    rows = [dict(label="sft", status="ran", seconds=3.0, accuracy=0.70, accuracy_se=0.014, run_id="a", evaluation_of=None),
            dict(label="reasoning_rl", status="ran", seconds=9.0, accuracy=0.775, accuracy_se=0.013, gain=0.075,
                 gain_se=0.0109, gain_over="sft", run_id="b", evaluation_of=None)]
    table = console.summary_table(rows).splitlines()
    assert "gain (paired)" in table[0]
    assert table[2].split() == ["sft", "ran", "3.0", "s", "70.0", "%", "±", "1.4", "a"]
    assert table[3].split() == ["reasoning_rl", "ran", "9.0", "s", "77.5", "%", "±", "1.3", "+7.5", "±", "1.1", "over",
                                "sft", "b"]


def test_lines_reach_the_terminal_handler(capsys):
    console.setup()
    handler = next(h for h in console.LOGGER.handlers if isinstance(h, console._ConsoleHandler))
    record = logging.LogRecord("r1flow", logging.INFO, __file__, 1, "hello", None, None)
    handler.emit(record)
    record.console = False
    handler.emit(record)
    assert capsys.readouterr().err.count("hello") == 1


def test_the_bar_reads_metrics_at_most_every_half_second(monkeypatch):
    """Reading a metric (a tensor on a GPU) waits for the queued work: the bar does it twice a
    second at most, and at the last step, not at every step."""
    class Counted:
        reads = 0

        def __float__(self):
            Counted.reads += 1
            return 0.5

    class Bar:
        n, total, postfix = 0, 0, None

        def update(self, k):
            self.n += k

        def set_postfix_str(self, text, refresh):
            self.postfix = text

    clock = iter(float(t) for t in range(10_000))  # 1 s per call to the clock
    reporter = console.StageReporter("base")
    reporter.phase, reporter.bar = "train", Bar()
    monkeypatch.setattr(console.time, "monotonic", lambda: 0.0)
    for step in range(1, 100):
        reporter.progress(step, 100, {"loss": Counted()})
    assert Counted.reads == 1 and reporter.bar.n == 99  # the first step; then the clock stood still
    monkeypatch.setattr(console.time, "monotonic", lambda: next(clock))
    reporter.progress(100, 100, {"loss": Counted()})
    assert Counted.reads == 2 and reporter.bar.postfix == "loss 0.5"
