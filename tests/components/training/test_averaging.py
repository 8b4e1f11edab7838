"""Averaging with the start: the weights land at start + alpha * (trained - start), exactly."""
from __future__ import annotations

import copy

import pytest
import torch

from components.config import LoraConfig
from components.modeling.models import add_lora
from components.training.averaging import average_with_start_


def trained_copy(model, shift: float):
    """A 'trained' model: every parameter of `model` moved by a known, parameter-dependent amount."""
    trained = copy.deepcopy(model)
    with torch.no_grad():
        for i, p in enumerate(trained.parameters()):
            p.add_(shift * (i + 1))
    return trained


def test_each_weight_lands_at_the_given_fraction_of_its_change(tiny_model):
    trained = trained_copy(tiny_model, 0.01)
    start = dict(tiny_model.named_parameters())
    before = {n: p.detach().clone() for n, p in trained.named_parameters()}
    changed = average_with_start_(trained, tiny_model, 0.25)
    assert changed == len(before)
    for name, p in trained.named_parameters():
        torch.testing.assert_close(p, start[name] + 0.25 * (before[name] - start[name]))
    # by hand for the first element: the change of parameter i is 0.01 (i + 1), a quarter of it is kept
    first = next(iter(before))
    assert (trained.get_parameter(first) - start[first]).flatten()[0].item() == pytest.approx(0.0025, abs=1e-6)


def test_alpha_one_keeps_the_trained_weights(tiny_model):
    trained = trained_copy(tiny_model, 0.01)
    before = copy.deepcopy(trained.state_dict())
    assert average_with_start_(trained, tiny_model, 1.0) == 0
    for k, v in trained.state_dict().items():
        assert torch.equal(v, before[k])


def test_a_lora_change_is_scaled_exactly_through_its_b_matrices(tiny_model):
    policy = add_lora(copy.deepcopy(tiny_model), LoraConfig(r=4, alpha=8, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():  # a trained adapter (B is zero at initialisation)
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn_like(p) * 0.5)
    full = dict(copy.deepcopy(policy).merge_and_unload().named_parameters())
    assert average_with_start_(policy, None, 0.5) == 4  # q and v in each of 2 layers
    halfway = dict(policy.merge_and_unload().named_parameters())
    adapted = 0
    for name, w0 in tiny_model.named_parameters():
        torch.testing.assert_close(halfway[name], w0 + 0.5 * (full[name] - w0))
        adapted += not torch.equal(full[name], w0)
    assert adapted == 4


def test_bad_alpha_or_a_start_that_is_not_the_models_raise(tiny_model):
    trained = trained_copy(tiny_model, 0.01)
    for alpha in (0.0, -0.5, 1.5):
        with pytest.raises(ValueError, match="alpha must lie in"):
            average_with_start_(trained, tiny_model, alpha)
    with pytest.raises(ValueError, match="needs its starting weights"):
        average_with_start_(trained, None, 0.5)
    other = torch.nn.Linear(3, 3)
    with pytest.raises(ValueError, match="not the model this one was trained from"):
        average_with_start_(trained, other, 0.5)
