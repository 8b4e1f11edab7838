"""The paired gain of one model over another on the same problems, checked by hand."""
import subprocess
import sys
from pathlib import Path

import pytest

from components.evaluation.paired import paired_gain

REPO = Path(__file__).resolve().parents[3]


def test_paired_gain_by_hand():
    """before 1,0,0,1 / after 1,1,1,0: d = 0,1,1,-1, gain 0.25, won 2, lost 1;
    sample variance of d = (0.0625 + 0.5625 + 0.5625 + 1.5625) / 3 = 0.916667 -> se sqrt(0.916667 / 4) = 0.478714.
    Unpaired it would be sqrt(0.5 * 0.5 / 4 + 0.75 * 0.25 / 4) = 0.330719: smaller here, because these
    two models disagree on 3 of 4 problems; models that agree on most problems get a smaller paired one."""
    g = paired_gain([1, 0, 0, 1], [True, True, True, False])
    assert (g.won, g.lost, g.n) == (2, 1, 4)
    assert g.gain == pytest.approx(0.25)
    assert g.stderr == pytest.approx(0.478714, abs=1e-6)
    # 1,000 problems, 700 solved by both, 100 won, 25 lost (the default recipe's GRPO over SFT):
    # gain 0.075, se sqrt((125 - 1000 * 0.075^2) / (1000 * 999)) = 0.010931, against 0.0196 unpaired
    before = [1] * 700 + [0] * 100 + [1] * 25 + [0] * 175
    after = [1] * 700 + [1] * 100 + [0] * 25 + [0] * 175
    big = paired_gain(before, after)
    assert big.gain == pytest.approx(0.075)
    assert big.stderr == pytest.approx(0.010931, abs=1e-6)
    assert paired_gain(after, before).gain == pytest.approx(-0.075)
    assert paired_gain(after, after) == (0.0, 0.0, 0, 0, 1000)
    assert paired_gain([0, 0], [1, 1]) == (1.0, 0.0, 2, 0, 2)  # every difference +1: no spread


def test_bad_outcomes_are_one_clear_error():
    with pytest.raises(ValueError, match="after: expected 2"):
        paired_gain([1, 0], [1])
    with pytest.raises(ValueError, match="at least 2"):
        paired_gain([1], [0])
    with pytest.raises(ValueError, match="outcomes"):
        paired_gain([1, 0.5], [1, 0])


def test_the_pipeline_computes_gains_without_torch():
    """An all-cached `r1flow run` reports every stage's gain; that must not wait for torch (~2 s)."""
    code = ("import sys; import tasks.pipeline, flows.pipeline, flows.evaluate, flows.single_stage\n"
            "print(sorted(m for m in ('torch', 'transformers', 'peft') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
