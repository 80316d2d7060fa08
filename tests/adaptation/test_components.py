# Copyright (c) TLK Model Zoo contributors. Licensed under the Apache License, Version 2.0.
"""Reference checks of the Transfer Learning Kit components (GRL, discriminators, DANN, entropy, KD)."""

from __future__ import annotations

import math

import pytest
import torch

from tlk_components.adaptation.dann import DomainAdversarialLoss, binary_domain_accuracy
from tlk_components.adaptation.discriminator import MultiScaleDomainDiscriminator
from tlk_components.adaptation.entropy import (
    ConfidentPseudoLabelLoss,
    EntropyPriorLoss,
    class_prior_from_labels,
    class_prior_from_predictions,
)
from tlk_components.adaptation.grl import GradientReverseLayer, WarmStartGradientReverseLayer, warm_start_coeff
from tlk_components.utils.errors import ConfigError


@pytest.mark.parametrize("coeff", [0.0, 0.3, 1.0, 2.5])
def test_grl_backward_is_minus_lambda_grad(coeff: float) -> None:
    torch.manual_seed(0)
    x = torch.randn(4, 3, requires_grad=True)
    g = torch.randn(4, 3)
    y = GradientReverseLayer(coeff)(x)
    assert torch.equal(y, x)
    y.backward(g)
    assert torch.allclose(x.grad, -coeff * g)


def test_warm_start_schedule_and_explicit_step() -> None:
    grl = WarmStartGradientReverseLayer(alpha=1.0, lo=0.0, hi=1.0, max_iters=100)
    assert grl.coeff == 0.0
    x = torch.ones(2, requires_grad=True)
    for _ in range(3):
        grl(x)  # forward passes do not advance the schedule
    assert grl.iter_num == 0
    grl.step(100)
    expected = 2.0 / (1.0 + math.exp(-1.0)) - 1.0
    assert grl.coeff == pytest.approx(expected)
    grl(x).sum().backward()
    assert torch.allclose(x.grad, torch.full_like(x, -expected))
    assert warm_start_coeff(10**9, hi=0.7) == pytest.approx(0.7)
    # the counter is part of the state dict, so a resumed run continues the schedule
    other = WarmStartGradientReverseLayer(max_iters=100)
    other.load_state_dict(grl.state_dict())
    assert other.iter_num == 100


def test_ill_grl_arguments() -> None:
    with pytest.raises(ConfigError, match="coeff"):
        GradientReverseLayer(-1.0)
    with pytest.raises(ConfigError, match="hi"):
        WarmStartGradientReverseLayer(lo=0.5, hi=0.1)


def test_multiscale_discriminator_shapes_and_errors() -> None:
    feats = [torch.randn(3, 4, 16, 16, 8), torch.randn(3, 8, 8, 8, 4), torch.randn(3, 16, 4, 4, 4)]
    d = MultiScaleDomainDiscriminator([4, 8, 16], strides=[2, (2, 2, 1), 2], base_channels=5)
    assert d(feats).shape == (3, 1)
    tlk = MultiScaleDomainDiscriminator([4, 8, 16], strides=[2, (2, 2, 1), 2], base_channels=5, head=False)
    assert tlk(feats).shape == (3, 15)  # TLK: every pooled channel is a domain logit
    with pytest.raises(ValueError, match="strides"):
        MultiScaleDomainDiscriminator([4, 8, 16], strides=[1, 2, 2])(feats)
    with pytest.raises(ConfigError, match="strides"):
        MultiScaleDomainDiscriminator([4, 8], strides=[2])


def test_dann_loss_value_gradient_sign_and_accuracy() -> None:
    torch.manual_seed(0)
    disc = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))  # any module works
    loss_fn = DomainAdversarialLoss(disc, grl=GradientReverseLayer(1.0))
    f_s = torch.randn(5, 4, requires_grad=True)
    f_t = torch.randn(6, 4)
    d_s, d_t = loss_fn.logits(f_s, f_t)
    ref = 0.5 * (
        torch.nn.functional.binary_cross_entropy(torch.sigmoid(d_s), torch.ones_like(d_s))
        + torch.nn.functional.binary_cross_entropy(torch.sigmoid(d_t), torch.zeros_like(d_t))
    )
    loss = loss_fn(f_s, f_t)
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5)
    loss.backward()
    # the discriminator descends the loss; the features receive the reversed gradient
    f_plain = f_s.detach().clone().requires_grad_(True)
    DomainAdversarialLoss(disc, grl=torch.nn.Identity())(f_plain, f_t).backward()
    assert torch.allclose(f_s.grad, -f_plain.grad, atol=1e-7)
    assert 0.0 <= binary_domain_accuracy(d_s, d_t) <= 1.0
    assert binary_domain_accuracy(torch.ones(2, 1), -torch.ones(2, 1)) == 1.0


def test_entropy_prior_terms() -> None:
    loss = EntropyPriorLoss([0.75, 0.25])
    # uniform predictions: entropy 1 (normalised), prior KL(π || [0.5, 0.5])
    out = loss(torch.zeros(2, 2, 4, 4, 4))
    assert out["entropy"].item() == pytest.approx(1.0)
    assert out["prior"].item() == pytest.approx(0.75 * math.log(1.5) + 0.25 * math.log(0.5))
    # predictions that match the prior exactly and are confident: prior term 0, entropy near 0
    logits = torch.full((1, 2, 4, 4, 4), -20.0)
    logits[:, 0, :3] = 20.0
    logits[:, 1, 3:] = 20.0
    out = loss(logits)
    assert out["prior"].item() == pytest.approx(0.0, abs=1e-6)
    assert out["entropy"].item() < 1e-6
    with pytest.raises(ConfigError, match="class_prior"):
        EntropyPriorLoss([0.5, 0.6])
    with pytest.raises(ValueError, match="class prior"):
        loss(torch.zeros(1, 3, 2, 2, 2))


def test_class_priors() -> None:
    labels = [torch.tensor([[0, 0, 0, 1]]), torch.tensor([[0, 1, 0, 0]])]
    assert class_prior_from_labels(labels, 2) == pytest.approx([0.75, 0.25])
    probs = [torch.tensor([[0.5, 1.0], [0.5, 0.0]])]
    assert class_prior_from_predictions(probs) == pytest.approx([0.75, 0.25])


def test_pseudo_label_uses_only_confident_voxels() -> None:
    loss = ConfidentPseudoLabelLoss(threshold=0.9)
    teacher = torch.zeros(1, 2, 2, 2, 2)  # p = 0.5 everywhere: nothing confident
    assert loss(torch.randn(1, 2, 2, 2, 2), teacher).item() == 0.0
    teacher[:, 1] = 10.0
    student = torch.zeros(1, 2, 2, 2, 2)
    assert loss(student, teacher).item() == pytest.approx(math.log(2.0))


def test_size_range_prior_is_zero_inside_and_quadratic_outside() -> None:
    loss = EntropyPriorLoss([0.9, 0.1], size_range=(0.5, 2.0))
    logits = torch.full((1, 2, 10, 1, 1), -20.0)
    logits[:, 0, 1:] = 20.0
    logits[:, 1, :1] = 20.0  # kidney share 0.1 = prior: inside the range
    assert loss(logits)["prior"].item() == pytest.approx(0.0, abs=1e-6)
    logits[:, 0] = -20.0
    logits[:, 1] = 20.0  # kidney share 1.0: ratio 10, range upper bound 2
    assert loss(logits)["prior"].item() == pytest.approx(math.log(5.0) ** 2, rel=1e-4)
    with pytest.raises(ConfigError, match="size_range"):
        EntropyPriorLoss([0.9, 0.1], size_range=(1.5, 2.0))


def test_entropy_prior_running_share_averages_batches() -> None:
    """momentum m: the size term sees m * (previous share, no gradient) + (1 - m) * (this batch's share)."""
    loss = EntropyPriorLoss([0.9, 0.1], size_range=(1.0, 1.0), momentum=0.75)
    a = torch.zeros(1, 2, 2, 2, 2)
    a[:, 1] = 3.0  # kidney-heavy batch
    b = torch.zeros(1, 2, 2, 2, 2, requires_grad=True)  # share 0.5
    loss(a)
    out = loss(b)
    q = 0.75 * float(torch.softmax(a, 1)[:, 1].mean()) + 0.25 * 0.5
    assert float(out["prior"]) == pytest.approx((math.log(q) - math.log(0.1)) ** 2, rel=1e-5)
    out["prior"].backward()
    assert b.grad is not None and float(b.grad.abs().sum()) > 0
    loss.eval()  # evaluation: the batch's own share
    assert float(loss(b.detach())["prior"]) == pytest.approx((math.log(0.5) - math.log(0.1)) ** 2, rel=1e-5)
    with pytest.raises(ConfigError, match="momentum"):
        EntropyPriorLoss([0.9, 0.1], momentum=1.0)
