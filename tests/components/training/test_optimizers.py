"""The trainer's optimizers: which parameters Muon takes, one scheduler over both halves, resume."""
import copy

import pytest
import torch

from components.config import TrainConfig
from components.training.loop import Trainer
from components.training.optimizers import MuonWithAdamW, StackedMuon, build_optimizer, hidden_matrices, newton_schulz
from components.training.sft import run_sft

ROWS = [{"messages": [{"role": "user", "content": f"{a}+{b}"},
                      {"role": "assistant", "content": f"<think>{a}+{b}={a + b}</think><answer>{a + b}</answer>"}]}
        for a in range(5) for b in range(5)]


def test_muon_takes_the_hidden_matrices_and_adamw_the_rest(tiny_model):
    names = {id(p): n for n, p in tiny_model.named_parameters()}
    muon = {names[i] for i in hidden_matrices({"model": tiny_model})}
    # 2 layers x (q, k, v, o, gate, up, down)
    assert len(muon) == 14 and all(n.startswith("model.layers.") and n.endswith("_proj.weight") for n in muon)
    rest = set(names.values()) - muon
    assert "model.embed_tokens.weight" in rest and all("norm" in n or "embed" in n or "lm_head" in n for n in rest)
    opt = build_optimizer("muon", [{"params": list(tiny_model.parameters()), "lr": 1e-3, "name": "model"}],
                          {"model": tiny_model}, lr=1e-3, weight_decay=0.0)
    assert isinstance(opt, MuonWithAdamW) and isinstance(opt.muon, StackedMuon)
    assert {id(p) for g in opt.muon.param_groups for p in g["params"]} == hidden_matrices({"model": tiny_model})
    assert all(g["name"] == "model" for g in opt.param_groups)


def test_one_scheduler_sets_the_rate_of_both_halves(tiny_model):
    cfg = TrainConfig(steps=4, lr=2e-3, warmup_steps=2, optimizer="muon")
    trainer = Trainer({"model": tiny_model}, cfg, "unused")
    opt = trainer.optimizer
    assert [g["lr"] for g in opt.muon.param_groups + opt.adamw.param_groups] == [1e-3, 1e-3]  # warmup 1/2
    trainer.scheduler.step()
    assert [g["lr"] for g in opt.muon.param_groups + opt.adamw.param_groups] == [2e-3, 2e-3]


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_a_killed_run_resumes_to_the_same_weights(optimizer, tiny_model, tiny_tokenizer, tmp_path):
    cfg = TrainConfig(steps=6, batch_size=4, lr=3e-3, warmup_steps=2, ckpt_every=2, log_every=1, optimizer=optimizer)
    straight = copy.deepcopy(tiny_model)
    run_sft(straight, tiny_tokenizer, ROWS, cfg, tmp_path / "a", seed=1)
    run_sft(copy.deepcopy(tiny_model), tiny_tokenizer, ROWS, cfg, tmp_path / "b", seed=1, stop_after=3)
    restarted = copy.deepcopy(tiny_model)
    assert run_sft(restarted, tiny_tokenizer, ROWS, cfg, tmp_path / "b", seed=1).resumed_from == 3
    for (name, a), b, start in zip(straight.state_dict().items(), restarted.state_dict().values(),
                                   tiny_model.state_dict().values()):
        assert torch.equal(a, b), name
    moved = [n for (n, a), s in zip(straight.state_dict().items(), tiny_model.state_dict().values())
             if not torch.equal(a, s)]
    assert "model.layers.0.mlp.up_proj.weight" in moved and "model.embed_tokens.weight" in moved


def test_muon_steps_differ_from_adamw_steps(tiny_model, tiny_tokenizer, tmp_path):
    runs = {}
    for optimizer in ("adamw", "muon"):
        model = copy.deepcopy(tiny_model)
        cfg = TrainConfig(steps=3, batch_size=4, lr=3e-3, optimizer=optimizer)
        run_sft(model, tiny_tokenizer, ROWS, cfg, tmp_path / optimizer, seed=1)
        runs[optimizer] = dict(model.named_parameters())
    name = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(runs["adamw"][name], runs["muon"][name])
    norm = "model.layers.0.input_layernorm.weight"  # AdamW in both: the same first steps (same grads at step 1)
    assert not torch.equal(runs["muon"][norm], tiny_model.state_dict()[norm])


def test_a_checkpoint_of_another_optimizer_is_refused_by_name(tiny_model, tiny_tokenizer, tmp_path):
    run_sft(copy.deepcopy(tiny_model), tiny_tokenizer, ROWS, TrainConfig(steps=4, batch_size=4, ckpt_every=2),
            tmp_path, seed=1, stop_after=2)
    with pytest.raises(ValueError, match="written by another optimizer"):
        run_sft(copy.deepcopy(tiny_model), tiny_tokenizer, ROWS,
                TrainConfig(steps=4, batch_size=4, ckpt_every=2, optimizer="muon"), tmp_path, seed=1)


def test_muon_without_hidden_matrices_fails_clearly():
    head = torch.nn.Linear(8, 1)
    with pytest.raises(ValueError, match="no trainable 2-D hidden weight matrices"):
        build_optimizer("muon", [{"params": list(head.parameters())}], {"head": head}, lr=1e-3, weight_decay=0.0)


@pytest.mark.parametrize("dtype, atol", [(torch.bfloat16, 0.06), (torch.float32, 1e-5)])
def test_newton_schulz_maps_each_singular_value_by_the_quintic(dtype, atol):
    """On a diagonal matrix the iteration acts on each singular value alone: s <- a s + b s^3 + c s^5,
    from s / ||G||_F. Five steps take 1, 0.5 and 0.1 to ~0.7-1.2 each, signs and axes kept; to bfloat16's
    rounding in bfloat16, exactly in float32."""
    coefficients = (3.4445, -4.7750, 2.0315)
    g = torch.diag(torch.tensor([1.0, -0.5, 0.1]))
    expected = []
    for s in (1.0, 0.5, 0.1):
        s = s / (1.0 ** 2 + 0.5 ** 2 + 0.1 ** 2) ** 0.5
        for _ in range(5):
            s = 3.4445 * s - 4.7750 * s ** 3 + 2.0315 * s ** 5
        expected.append(s)
    out = newton_schulz(g, coefficients, steps=5, eps=1e-7, dtype=dtype)
    assert out.dtype == dtype
    out = out.float()
    assert torch.allclose(out.diagonal(), torch.tensor(expected) * torch.tensor([1.0, -1.0, 1.0]), atol=atol)
    assert torch.count_nonzero(out - torch.diag(out.diagonal())) == 0
    assert all(0.65 < abs(v) < 1.25 for v in out.diagonal().tolist())


def test_newton_schulz_of_a_stack_is_that_of_each_matrix_and_tall_ones_are_transposed():
    torch.manual_seed(0)
    stack = torch.randn(3, 16, 8)  # tall: orthogonalised as the transpose
    out = newton_schulz(stack, (3.4445, -4.7750, 2.0315), steps=5, eps=1e-7)
    assert out.shape == stack.shape and out.dtype == torch.bfloat16
    for g, o in zip(stack, out):
        alone = newton_schulz(g, (3.4445, -4.7750, 2.0315), steps=5, eps=1e-7)
        assert torch.allclose(o.float(), alone.float(), atol=0.02)
        assert torch.allclose(o.float(), newton_schulz(g.T, (3.4445, -4.7750, 2.0315), 5, 1e-7).T.float(), atol=0.02)
        singular = torch.linalg.svdvals(o.float())
        assert singular.min() > 0.5 and singular.max() < 1.3


@pytest.mark.parametrize("native, tolerance", [(True, 2e-3), (False, 0.05)])
def test_stacked_muon_takes_torch_muons_steps(monkeypatch, native, tolerance):
    """Three shapes, two matrices of each: ten steps of StackedMuon land where torch.optim.Muon's land,
    with the same momentum buffers in the state. Where StackedMuon iterates in bfloat16 (native) it
    makes torch's own fused products, batched: the same steps (to the bit on the 2-core CPU; the
    iteration written out, aX + (bA + cA^2)X, lands 1.3-1.9 % of the way off); in float32, up to
    torch's bfloat16 rounding."""
    import components.training.optimizers as optimizers

    monkeypatch.setattr(optimizers, "native_bf16", lambda device_type: native)
    torch.manual_seed(0)
    shapes = [(32, 32), (64, 32), (32, 64)] * 2
    ours = [torch.nn.Parameter(torch.randn(s)) for s in shapes]
    theirs = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    start = [p.detach().clone() for p in ours]
    kwargs = dict(lr=1e-2, weight_decay=0.1, adjust_lr_fn="match_rms_adamw")
    a, b = StackedMuon(ours, **kwargs), torch.optim.Muon(theirs, **kwargs)
    for _ in range(10):
        for p, q in zip(ours, theirs):
            p.grad = torch.randn_like(p)
            q.grad = p.grad.clone()
        a.step()
        b.step()
    for p, q, s, shape in zip(ours, theirs, start, shapes):
        moved, apart = (p.detach() - s).abs().max(), (q.detach() - p.detach()).abs().max()
        assert moved > 3e-2 and apart < tolerance * moved, shape  # ten steps moved it to where torch's moved it
        assert torch.allclose(a.state[p]["momentum_buffer"], b.state[q]["momentum_buffer"])


@pytest.mark.parametrize("native", [True, False])
def test_stacked_muon_iterates_in_bfloat16_only_where_its_matmuls_are_native(monkeypatch, native):
    """Emulated bfloat16 (a CPU without AVX512-BF16 or AMX) made Muon's step ~17x slower than float32:
    there the iterations run in float32. One step of one matrix lands where the update
    (Nesterov: g + m (buf - g), buf = (1 - m) g) orthogonalised in that dtype takes it."""
    import components.training.optimizers as optimizers

    monkeypatch.setattr(optimizers, "native_bf16", lambda device_type: native)
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(16, 8))
    start, p.grad = p.detach().clone(), torch.randn(16, 8)
    lr, wd, m = 1e-2, 0.1, 0.95
    StackedMuon([p], lr=lr, weight_decay=wd, momentum=m, adjust_lr_fn="match_rms_adamw").step()
    update = p.grad + m * ((1 - m) * p.grad - p.grad)
    coefficients = (3.4445, -4.7750, 2.0315)

    def landing(dtype):
        ortho = newton_schulz(update, coefficients, 5, 1e-7, dtype)
        return start * (1 - lr * wd) - lr * 0.2 * 16 ** 0.5 * ortho.float()

    used, other = (torch.bfloat16, torch.float32) if native else (torch.float32, torch.bfloat16)
    assert torch.allclose(p.detach(), landing(used), atol=1e-6, rtol=0)  # float32's rounding of the momentum
    assert (p.detach() - landing(other)).abs().max() > 3e-5
