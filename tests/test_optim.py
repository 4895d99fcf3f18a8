import math

import numpy as np
import pytest
import torch
from torch import nn

from hear_abt.encoders import ViT
from training.optim import LARS, build_optimizer, lr_factor, param_groups, scale_lr, set_lr


def _lars_step(p, grad, mu, lr, wd, eta, momentum):
    """One LARS step in numpy, as written in You et al. / Barlow Twins."""
    g = grad + wd * p
    p_norm, g_norm = np.linalg.norm(p), np.linalg.norm(g)
    trust = eta * p_norm / g_norm if p_norm > 0 and g_norm > 0 else 1.0
    mu = momentum * mu + trust * g
    return p - lr * mu, mu


def test_lars_two_steps_with_adaptation():
    p0, grad = np.array([3.0, 4.0]), np.array([1.0, 2.0])
    lr, wd, eta, m = 0.5, 0.1, 1e-2, 0.9
    # First step by hand: g = [1.3, 2.4], trust = 1e-2 * 5 / sqrt(7.45).
    trust = 1e-2 * 5 / math.sqrt(7.45)
    p1_hand = p0 - lr * trust * np.array([1.3, 2.4])
    p1, mu1 = _lars_step(p0, grad, np.zeros(2), lr, wd, eta, m)
    np.testing.assert_allclose(p1, p1_hand)
    p2, _ = _lars_step(p1, grad, mu1, lr, wd, eta, m)

    param = nn.Parameter(torch.tensor(p0))
    opt = LARS([param], lr=lr, weight_decay=wd, eta=eta, momentum=m, lars_adapt=True)
    for want in (p1, p2):
        param.grad = torch.tensor(grad)
        opt.step()
        np.testing.assert_allclose(param.detach().numpy(), want, rtol=1e-12)


def test_lars_excluded_group_is_sgd_momentum_without_decay():
    b0, grad = np.array([1.0, -1.0]), np.array([0.5, 0.25])
    param = nn.Parameter(torch.tensor(b0))
    # weight_decay set on purpose: an excluded group must ignore it.
    opt = LARS([param], lr=0.1, weight_decay=0.5, momentum=0.9, lars_adapt=False)
    param.grad = torch.tensor(grad)
    opt.step()
    np.testing.assert_allclose(param.detach().numpy(), b0 - 0.1 * grad)
    param.grad = torch.tensor(grad)
    opt.step()
    np.testing.assert_allclose(param.detach().numpy(), b0 - 0.1 * grad - 0.1 * (0.9 * grad + grad))


def test_lars_zero_norm_parameter_uses_unit_trust():
    param = nn.Parameter(torch.zeros(3, dtype=torch.float64))
    opt = LARS([param], lr=0.1, weight_decay=0.1, lars_adapt=True)
    param.grad = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    opt.step()
    np.testing.assert_allclose(param.detach().numpy(), [-0.1, -0.2, -0.3])


def _tiny_model() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(8, 6), nn.LayerNorm(6), nn.Linear(6, 2)
    )


def test_param_groups_exclude_biases_and_norms():
    model = _tiny_model()
    groups = {g["name"]: g for g in param_groups(model, 1.0, 0.01, 1e-3)}
    names = {id(p): n for n, p in model.named_parameters()}
    decay = sorted(names[id(p)] for p in groups["weights"]["params"])
    no_decay = sorted(names[id(p)] for p in groups["no_decay"]["params"])
    assert decay == ["0.weight", "3.weight", "5.weight"]
    assert no_decay == ["0.bias", "1.bias", "1.weight", "3.bias", "4.bias", "4.weight", "5.bias"]
    assert groups["no_decay"]["weight_decay"] == 0.0 and groups["no_decay"]["lars_adapt"] is False
    assert groups["weights"]["weight_decay"] == 1e-3 and groups["weights"]["lars_adapt"] is True
    assert groups["weights"]["base_lr"] == 1.0 and groups["no_decay"]["base_lr"] == 0.01


def test_vit_cls_token_not_decayed_and_frozen_params_skipped():
    vit = ViT(dim=16, depth=1, heads=2)
    vit.norm.weight.requires_grad_(False)
    groups = {g["name"]: g for g in param_groups(vit, 1.0, 1.0, 0.1)}
    no_decay = {id(p) for p in groups["no_decay"]["params"]}
    decay = {id(p) for p in groups["weights"]["params"]}
    assert id(vit.cls_token) in no_decay
    assert id(vit.blocks[0].attn.qkv.weight) in decay
    assert id(vit.norm.weight) not in no_decay | decay


def test_build_optimizer_scales_lr_once():
    model = _tiny_model()
    opt = build_optimizer("lars", model, batch_size=256)
    assert isinstance(opt, LARS)
    lrs = {g["name"]: (g["lr"], g["base_lr"], g["weight_decay"]) for g in opt.param_groups}
    assert lrs["weights"] == pytest.approx((0.8, 0.8, 1e-5))
    assert lrs["no_decay"] == pytest.approx((0.0096, 0.0096, 0.0))
    set_lr(opt, 1.0)  # the schedule must not scale again
    assert opt.param_groups[0]["lr"] == pytest.approx(0.8)
    assert scale_lr(0.4, 64) == pytest.approx(0.2)


def test_build_adamw_defaults():
    opt = build_optimizer("adamw", _tiny_model(), batch_size=128)
    assert isinstance(opt, torch.optim.AdamW)
    groups = {g["name"]: g for g in opt.param_groups}
    assert groups["weights"]["lr"] == pytest.approx(6.25e-5)
    assert groups["no_decay"]["lr"] == pytest.approx(6.25e-5)
    assert groups["weights"]["weight_decay"] == 0.24 and groups["no_decay"]["weight_decay"] == 0.0
    assert groups["weights"]["betas"] == (0.9, 0.999) and groups["weights"]["eps"] == 1e-8
    opt2 = build_optimizer("adamw", _tiny_model(), lr_weights=1e-4, batch_size=64)
    assert [g["lr"] for g in opt2.param_groups] == pytest.approx([5e-5, 5e-5])
    with pytest.raises(ValueError, match="no paper defaults"):
        build_optimizer("sgd", _tiny_model())
    with pytest.raises(ValueError, match="unknown optimizer 'rmsprop'"):
        build_optimizer("rmsprop", _tiny_model(), lr_weights=1e-3, weight_decay=0.0)


@pytest.mark.parametrize("name, cls", [("adam", torch.optim.Adam), ("sgd", torch.optim.SGD)])
def test_adam_and_sgd_of_the_paper_sweeps(name, cls):
    opt = build_optimizer(name, _tiny_model(), lr_weights=1e-3, weight_decay=0.01, batch_size=256)
    assert type(opt) is cls
    groups = {g["name"]: g for g in opt.param_groups}
    # One (scaled) rate for weights and biases; decay only on the weights.
    assert groups["weights"]["lr"] == pytest.approx(2e-3) and groups["no_decay"]["lr"] == pytest.approx(2e-3)
    assert groups["weights"]["weight_decay"] == 0.01 and groups["no_decay"]["weight_decay"] == 0.0


def test_sgd_step_by_hand():
    # SGD with momentum 0.9 and L2 decay, two steps on w (grad g each time):
    # d1 = g + wd*w0; w1 = w0 - lr*d1; d2 = g + wd*w1; buf2 = 0.9*d1 + d2; w2 = w1 - lr*buf2
    w = nn.Parameter(torch.tensor([[1.0, -2.0]]))
    model = nn.Module()
    model.w = w
    opt = build_optimizer("sgd", model, lr_weights=0.1, weight_decay=0.5)
    g = torch.tensor([[0.2, 0.4]])
    w0 = w.detach().clone()
    for _ in range(2):
        w.grad = g.clone()
        opt.step()
    d1 = g + 0.5 * w0
    w1 = w0 - 0.1 * d1
    d2 = g + 0.5 * w1
    assert torch.allclose(w.detach(), w1 - 0.1 * (0.9 * d1 + d2))


def test_lr_schedule_values():
    assert lr_factor(0, 100, 10) == 0.0
    assert lr_factor(5, 100, 10) == pytest.approx(0.5)
    assert lr_factor(10, 100, 10) == pytest.approx(1.0)
    assert lr_factor(55, 100, 10) == pytest.approx(0.5)
    assert lr_factor(100, 100, 10) == pytest.approx(0.0, abs=1e-12)
    assert lr_factor(150, 100, 10, min_factor=0.001) == pytest.approx(0.001)
    assert lr_factor(0, 100, 0) == pytest.approx(1.0)
    factors = [lr_factor(s, 100, 10) for s in range(101)]
    assert all(a <= b for a, b in zip(factors[:10], factors[1:11]))
    assert all(a >= b for a, b in zip(factors[10:], factors[11:]))


def test_set_lr_depends_on_step_only():
    opt = build_optimizer("lars", _tiny_model(), batch_size=128)
    set_lr(opt, lr_factor(30, 100, 10))
    first = [g["lr"] for g in opt.param_groups]
    set_lr(opt, lr_factor(70, 100, 10))
    set_lr(opt, lr_factor(30, 100, 10))
    assert [g["lr"] for g in opt.param_groups] == first
    assert first[0] == pytest.approx(0.4 * lr_factor(30, 100, 10))
