"""Bradley-Terry, Plackett-Luce, process reward loss and ranking metrics."""

import math

import pytest
import torch

from components.algorithms.reward_model import (
    bradley_terry_loss,
    kendall_tau,
    outcome_only_labels,
    pairwise_accuracy,
    plackett_luce_loss,
    process_reward_loss,
    ranking_accuracy,
)

D = torch.float64


def test_bradley_terry_by_hand():
    """r_c - r_r = 1 -> log(1 + e^-1); with margin 1 -> -log sigmoid(0) = log 2."""
    c, r = torch.tensor([1.0, 1.0], dtype=D), torch.tensor([0.0, 0.0], dtype=D)
    torch.testing.assert_close(bradley_terry_loss(c, r), torch.full((2,), math.log1p(math.exp(-1)), dtype=D))
    margin = torch.tensor([1.0, 0.0], dtype=D)
    expected = torch.tensor([math.log(2.0), math.log1p(math.exp(-1))], dtype=D)
    torch.testing.assert_close(bradley_terry_loss(c, r, margin), expected)


def test_bradley_terry_gradcheck():
    torch.manual_seed(0)
    c, r, m = (torch.randn(4, dtype=D, requires_grad=True) for _ in range(3))
    assert torch.autograd.gradcheck(bradley_terry_loss, (c, r, m))


def test_plackett_luce_by_hand():
    """Ranking [2, 1, 0] (best first): [log(e^2+e^1+e^0) - 2] + [log(e^1+e^0) - 1] + [0]
    = log(1 + e^-1 + e^-2) + log(1 + e^-1)."""
    s = torch.tensor([[2.0, 1.0, 0.0]], dtype=D)
    expected = math.log(1 + math.exp(-1) + math.exp(-2)) + math.log(1 + math.exp(-1))
    torch.testing.assert_close(plackett_luce_loss(s), torch.tensor([expected], dtype=D))


def test_plackett_luce_k2_equals_bradley_terry():
    torch.manual_seed(1)
    s = 3 * torch.randn(16, 2, dtype=D)
    torch.testing.assert_close(plackett_luce_loss(s), bradley_terry_loss(s[:, 0], s[:, 1]), rtol=0, atol=1e-12)


def naive_pl(scores, mask):
    out = []
    for b in range(scores.shape[0]):
        s = [scores[b, k].item() for k in range(scores.shape[1]) if mask[b, k]]
        out.append(sum(math.log(sum(math.exp(x) for x in s[k:])) - s[k] for k in range(len(s))))
    return torch.tensor(out, dtype=D)


def test_plackett_luce_equals_naive_loop_with_ragged_masks():
    for seed in range(5):
        torch.manual_seed(seed)
        b, k = torch.randint(1, 5, (1,)).item(), torch.randint(1, 6, (1,)).item()
        s = 2 * torch.randn(b, k, dtype=D)
        mask = torch.rand(b, k) > 0.3
        torch.testing.assert_close(plackett_luce_loss(s, mask), naive_pl(s, mask))


def test_plackett_luce_padding_invariance_and_gradcheck():
    torch.manual_seed(2)
    s = torch.randn(3, 4, dtype=D)
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 1, 1], [1, 1, 0, 0]], dtype=torch.bool)
    junk = torch.where(mask, s, 1e4 * torch.randn(3, 4, dtype=D)).requires_grad_(True)
    out = plackett_luce_loss(junk, mask)
    torch.testing.assert_close(out, plackett_luce_loss(s, mask))
    out.sum().backward()
    assert (junk.grad[~mask] == 0).all() and torch.isfinite(junk.grad).all()
    x = s.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda z: plackett_luce_loss(z, mask), (x,))


def test_process_reward_loss_by_hand():
    """Logit 0 -> BCE log 2 for any label; logit log 3 with label 1 -> -log(3/4); masked step ignored."""
    logits = torch.tensor([[0.0, math.log(3.0), 50.0]], dtype=D)
    labels = torch.tensor([[0.0, 1.0, 0.0]], dtype=D)
    mask = torch.tensor([[1, 1, 0]])
    expected = torch.tensor((math.log(2.0) - math.log(0.75)) / 2, dtype=D)
    torch.testing.assert_close(process_reward_loss(logits, labels, mask), expected)


def test_process_reward_loss_ignores_padding():
    torch.manual_seed(4)
    logits, labels = torch.randn(2, 4, dtype=D), (torch.rand(2, 4) > 0.5).to(D)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 0]], dtype=torch.bool)
    junk = torch.where(mask, logits, 1e3 * torch.randn(2, 4, dtype=D)).requires_grad_(True)
    out = process_reward_loss(junk, torch.where(mask, labels, 7.0), mask)
    torch.testing.assert_close(out, process_reward_loss(logits, labels, mask))
    out.backward()
    assert (junk.grad[~mask] == 0).all()


def test_outcome_only_labels_and_orm_special_case():
    step_mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0]])
    labels, lmask = outcome_only_labels(torch.tensor([1.0, 0.0, 1.0]), step_mask)
    torch.testing.assert_close(labels, torch.tensor([[0.0, 0, 1, 0], [0, 0, 0, 0], [0, 0, 0, 0]]))
    expected_mask = torch.tensor([[False, False, True, False], [True, False, False, False], [False] * 4])
    torch.testing.assert_close(lmask, expected_mask)
    # outcome-only PRM == BCE of the last step's logit against the outcome
    torch.manual_seed(3)
    logits = torch.randn(3, 4, dtype=D)
    loss = process_reward_loss(logits, labels.to(D), lmask)
    last = torch.tensor([logits[0, 2], logits[1, 0]])
    expected = torch.nn.functional.binary_cross_entropy_with_logits(last, torch.tensor([1.0, 0.0], dtype=D))
    torch.testing.assert_close(loss, expected)


def test_pairwise_and_ranking_accuracy_by_hand():
    """Pairs (3>1) win, (1=1) tie counts 1/2, (2<5) loss -> 1.5 / 3 = 0.5."""
    c, r = torch.tensor([3.0, 1.0, 2.0]), torch.tensor([1.0, 1.0, 5.0])
    torch.testing.assert_close(pairwise_accuracy(c, r), torch.tensor(0.5, dtype=torch.float64))
    torch.testing.assert_close(ranking_accuracy(torch.stack([c, r], 1)), torch.tensor(0.5, dtype=torch.float64))
    # [2, 3, 1]: pairs (2,3) wrong, (2,1) right, (3,1) right -> 2/3; second list fully right (3 pairs).
    s = torch.tensor([[2.0, 3.0, 1.0], [3.0, 2.0, 1.0]])
    torch.testing.assert_close(ranking_accuracy(s), torch.tensor(5.0 / 6.0, dtype=torch.float64))


def test_kendall_tau_by_hand():
    """Perfect order -> 1, reversed -> -1, [2, 3, 1] -> (-1 + 1 + 1)/3; padded item ignored."""
    s = torch.tensor([[3.0, 2.0, 1.0], [1.0, 2.0, 3.0], [2.0, 3.0, 1.0], [1.0, 0.0, 9.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 1], [1, 1, 1], [1, 1, 0]])
    torch.testing.assert_close(kendall_tau(s[:3]), torch.tensor((1 - 1 + 1 / 3) / 3))
    torch.testing.assert_close(kendall_tau(s[3:], mask[3:]), torch.tensor(1.0))
    # for untied scores tau-a = 2 * accuracy - 1 on a single list
    torch.testing.assert_close(kendall_tau(s[2:3]), (2 * ranking_accuracy(s[2:3]) - 1).float())


def test_errors():
    with pytest.raises(ValueError, match="rejected_rewards"):
        bradley_terry_loss(torch.zeros(3), torch.zeros(4))
    with pytest.raises(ValueError, match="margin"):
        bradley_terry_loss(torch.zeros(3), torch.zeros(3), torch.zeros(2))
    with pytest.raises(ValueError, match="scores"):
        plackett_luce_loss(torch.zeros(3))
    with pytest.raises(ValueError, match="mask"):
        plackett_luce_loss(torch.zeros(2, 3), torch.ones(2, 2))
    with pytest.raises(ValueError, match="step_mask"):
        process_reward_loss(torch.zeros(2, 3), torch.zeros(2, 3), torch.ones(2, 4))
    with pytest.raises(ValueError, match="mask"):
        kendall_tau(torch.zeros(2, 3), torch.tensor([[1, 0, 0], [0, 0, 1]]))


def test_bradley_terry_ranking_by_hand_and_k2_equals_pairs():
    """[2, 1, 0] with margin 1: pairs (2,1) (2,0) (1,0) have diffs 1, 2, 1 -> minus the margin 0, 1, 0:
    l = [log 2 + log(1 + e^-1) + log 2] / 3; a padded third item leaves one pair: log(1 + e^-1)."""
    from components.algorithms.reward_model import bradley_terry_ranking_loss

    s = torch.tensor([[2.0, 1.0, 0.0], [2.0, 1.0, 99.0]], dtype=D)
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    got = bradley_terry_ranking_loss(s, mask, margin=torch.tensor([1.0, 0.0], dtype=D))
    expected = torch.tensor([(2 * math.log(2.0) + math.log1p(math.exp(-1))) / 3, math.log1p(math.exp(-1))],
                            dtype=D)
    torch.testing.assert_close(got, expected)
    torch.manual_seed(5)
    pairs, m = 3 * torch.randn(8, 2, dtype=D), torch.randn(8, dtype=D)
    torch.testing.assert_close(bradley_terry_ranking_loss(pairs, margin=m), bradley_terry_loss(pairs[:, 0], pairs[:, 1], m))
    torch.testing.assert_close(bradley_terry_ranking_loss(pairs), plackett_luce_loss(pairs))
    single = bradley_terry_ranking_loss(torch.tensor([[1.0, 2.0]]), torch.tensor([[1, 0]]))
    assert single.tolist() == [0.0], "a list with one valid item has nothing to compare"
    with pytest.raises(ValueError, match="margin: expected 2 values"):
        bradley_terry_ranking_loss(s, mask, margin=torch.zeros(3, dtype=D))
