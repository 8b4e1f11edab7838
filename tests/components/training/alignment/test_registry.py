"""The registry: six methods by name, one signature, a typed config each; the Trainer pieces
the methods rely on (per-module clipping, optimizer-free updates)."""
from __future__ import annotations

import inspect

import pytest
import torch
from pydantic import BaseModel

from components.config import Section
from components.training.alignment import ALIGNMENT_METHODS, get_alignment_method
from components.training.alignment.trpo import optimizer_free
from components.training.loop import Trainer


def test_six_methods_by_name_with_one_signature():
    assert sorted(ALIGNMENT_METHODS) == ["dpo", "grpo_rm", "oreo", "orpo", "ppo", "trpo"]
    shapes = {tuple((p.name, p.kind, p.default) for p in inspect.signature(m.run).parameters.values())
              for m in ALIGNMENT_METHODS.values()}
    assert len(shapes) == 1, "the stage calls every method the same way"
    for name, m in ALIGNMENT_METHODS.items():
        assert m.name == name and issubclass(m.config, Section) and m.inputs <= {"reference", "reward_fn", "critic", "replay"}
        assert m.data in {"preference", "prompts", "trajectory"}
        params = inspect.signature(m.run).parameters
        assert list(params)[:6] == ["policy", "tokenizer", "data", "cfg", "ckpt_dir", "seed"]
        assert all(params[k].kind is inspect.Parameter.KEYWORD_ONLY for k in
                   ("reference", "reward_fn", "critic", "replay", "log", "progress", "stop_after"))


def test_unknown_method_lists_the_names():
    with pytest.raises(ValueError, match="unknown alignment method 'rlhf'; valid names: dpo, grpo_rm, oreo, orpo"):
        get_alignment_method("rlhf")


@pytest.mark.parametrize("name", sorted(ALIGNMENT_METHODS))
def test_every_config_field_is_described_and_unknown_fields_are_errors(name):
    config = ALIGNMENT_METHODS[name].config
    undocumented = [f for f, info in config.model_fields.items() if not info.description
                    and not (isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel))]
    if name != "grpo_rm":  # grpo_rm reuses the existing RLConfig's fields as they are
        assert undocumented == []
    with pytest.raises(ValueError, match="steps"):
        config(steps=0)
    with pytest.raises(ValueError, match="Extra inputs are not permitted"):
        config(lr_critic=1.0)


def test_each_module_is_clipped_on_its_own(tmp_path):
    policy, critic = torch.nn.Linear(2, 1, bias=False), torch.nn.Linear(2, 1, bias=False)
    cfg = optimizer_free(type("C", (), {"steps": 1, "ckpt_every": 1, "log_every": 1})())
    cfg.max_grad_norm, cfg.lr = 1.0, 0.0
    trainer = Trainer({"policy": policy, "critic": critic}, cfg, tmp_path)
    x = torch.tensor([[3.0, 4.0]])
    stats = trainer.step([lambda: ((policy(x) * 0.1 + critic(x) * 100).sum(), {})])
    # policy grad = 0.1 * x (norm 0.5, kept); critic grad = 100 * x (norm 500, clipped to 1)
    assert float(stats["grad_norm/policy"]) == pytest.approx(0.5)
    assert float(stats["grad_norm/critic"]) == pytest.approx(500.0)
    assert float(stats["grad_norm"]) == pytest.approx((0.5**2 + 500.0**2) ** 0.5)
    assert torch.allclose(policy.weight.grad, 0.1 * x) and torch.allclose(critic.weight.grad.norm(), torch.tensor(1.0))


def test_optimizer_free_updates_are_counted_only_when_they_change_the_weights(tmp_path):
    model = torch.nn.Linear(2, 1)
    cfg = optimizer_free(type("C", (), {"steps": 2, "ckpt_every": 1, "log_every": 1})())
    trainer = Trainer({"policy": model}, cfg, tmp_path, require_update=True)
    assert trainer.update(lambda: (False, {"tried": 1.0})) == {"tried": 1.0} and trainer.updates == 0

    def write():
        model.weight.add_(1.0)
        assert not torch.is_grad_enabled()
        return True, {}

    trainer.update(write)
    assert trainer.updates == 1
