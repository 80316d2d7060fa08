# Copyright (c) TLK Model Zoo contributors. Licensed under the Apache License, Version 2.0.
"""Mean-teacher self-training: the EMA teacher, frozen BatchNorm statistics, the strong view and the Dice term."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from monai.losses import DiceLoss
from monai.networks.nets import UNet
from monai.transforms import Compose

from tests.net_helpers import dynunet
from tlk_components.adaptation.entropy import ConfidentPseudoLabelLoss
from tlk_components.adaptation.teacher import MeanTeacher, freeze_batchnorm_statistics
from tlk_components.adaptation.transferrable import TransferrableModel
from tlk_components.data.transforms import strong_intensity_view
from tlk_components.utils.errors import ConfigError


def _bn_net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv3d(1, 2, 3, padding=1), torch.nn.BatchNorm3d(2))


def _shift_weights(net: torch.nn.Module, by: float) -> None:
    with torch.no_grad():
        for p in net.parameters():
            p.add_(by)


@pytest.mark.parametrize("decay", [0.0, 0.5, 1.0])
def test_teacher_is_the_exponential_moving_average(decay: float) -> None:
    student = _bn_net()
    teacher = MeanTeacher(student, decay=decay)
    w0 = student[0].weight.detach().clone()
    _shift_weights(student, 1.0)
    teacher.update(student)
    _shift_weights(student, 1.0)
    teacher.update(student)
    # AveragedModel's EMA copies the student at its first update, then averages: after updates at w0+1 and w0+2,
    # teacher = d * (w0 + 1) + (1 - d) * (w0 + 2); decay 1 never updates (the initial weights stay)
    expected = w0 if decay == 1.0 else decay * (w0 + 1) + (1 - decay) * (w0 + 2)
    torch.testing.assert_close(teacher.model.module[0].weight, expected)
    assert not any(p.requires_grad for p in teacher.parameters())


def test_teacher_predicts_in_eval_mode_without_gradients() -> None:
    student = _bn_net()
    teacher = MeanTeacher(student, decay=1.0)
    teacher.train()
    assert not teacher.model.training
    x = torch.randn(2, 1, 4, 4, 4)
    student.eval()
    out = teacher(x)
    torch.testing.assert_close(out, student(x).detach())
    assert not out.requires_grad
    for bad in (-0.1, 1.5, "x"):
        with pytest.raises(ConfigError, match="decay"):
            MeanTeacher(student, decay=bad)


def test_freeze_batchnorm_statistics_keeps_running_stats_in_training() -> None:
    torch.manual_seed(0)
    net = UNet(3, 1, 2, channels=(4, 8), strides=(2,), num_res_units=1, norm="batch")  # the kidney bundle's kind
    model = TransferrableModel(
        net,
        loss_weights={"pseudo_label": 1.0},
        pseudo_label_loss=ConfidentPseudoLabelLoss(0.5),
        freeze_bn_stats=True,
    )
    stats = {k: v.clone() for k, v in net.state_dict().items() if "running" in k}
    assert stats, "the test network has no BatchNorm statistics"
    model.train()
    assert net.training and all(
        not m.training for m in net.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
    )
    model.compute_losses(None, None, torch.randn(2, 1, 8, 8, 8) * 5 + 3)
    for k, v in stats.items():
        torch.testing.assert_close(net.state_dict()[k], v)
    # without the flag the same step moves them
    free = TransferrableModel(net, loss_weights={"pseudo_label": 1.0}, pseudo_label_loss=ConfidentPseudoLabelLoss(0.5))
    free.train()
    free.compute_losses(None, None, torch.randn(2, 1, 8, 8, 8) * 5 + 3)
    assert any(not torch.equal(net.state_dict()[k], v) for k, v in stats.items())
    assert freeze_batchnorm_statistics(torch.nn.Conv3d(1, 1, 1)) == 0


def test_pseudo_label_dice_term() -> None:
    g = torch.Generator().manual_seed(0)
    student = torch.randn(2, 2, 4, 4, 4, generator=g)
    teacher = torch.randn(2, 2, 4, 4, 4, generator=g) * 10  # confident almost everywhere
    ce_only = ConfidentPseudoLabelLoss(0.9)(student, teacher)
    both = ConfidentPseudoLabelLoss(0.9, dice_weight=2.0)(student, teacher)
    conf, target = torch.softmax(teacher, 1).max(1)
    mask = (conf >= 0.9).unsqueeze(1).float()
    ce = F.cross_entropy(student, target, reduction="none")[mask[:, 0].bool()].mean()
    dice = DiceLoss(include_background=False, batch=True, smooth_nr=1e-5, smooth_dr=1e-5)(
        torch.softmax(student, 1) * mask, F.one_hot(target, 2).movedim(-1, 1).float() * mask
    )
    torch.testing.assert_close(ce_only, ce)
    torch.testing.assert_close(both, ce + 2.0 * dice)
    # the student agreeing with the teacher: the Dice term is ~0
    agree = ConfidentPseudoLabelLoss(0.9, dice_weight=1.0)(teacher * 10, teacher)
    assert agree.item() < 1e-3
    with pytest.raises(ConfigError, match="dice_weight"):
        ConfidentPseudoLabelLoss(0.9, dice_weight=-1.0)


def test_teacher_labels_the_plain_view_and_follows_the_backbone() -> None:
    torch.manual_seed(0)
    net = dynunet()
    teacher = MeanTeacher(net, decay=0.0)
    model = TransferrableModel(
        net, loss_weights={"pseudo_label": 1.0}, pseudo_label_loss=ConfidentPseudoLabelLoss(0.5), teacher=teacher
    )
    assert model.teacher is teacher
    x = torch.randn(2, 1, 8, 8, 8)
    strong = x * 1.3 + 0.2
    model.train()
    out = model.compute_losses(None, None, x, target_image_strong=strong)
    # the same loss computed by hand: the teacher's labels of x, the student's logits of the strong view
    net.train()
    ref = ConfidentPseudoLabelLoss(0.5)(net(strong), teacher(x))
    torch.testing.assert_close(out["pseudo_label"], ref)
    with pytest.raises(ValueError, match="strong view"):
        model.compute_losses(None, None, x, target_image_strong=strong[:, :, :4])
    _shift_weights(net, 0.01)
    model.step()  # decay 0: the teacher is now the backbone
    torch.testing.assert_close(teacher.model.module.input_block.conv1.conv.weight, net.input_block.conv1.conv.weight)
    # a teacher without an active pseudo_label term is dropped; a teacher of the wrong type is refused
    unused = TransferrableModel(net, loss_weights={"source_seg": 1.0}, teacher=teacher)
    assert unused.teacher is None
    with pytest.raises(ConfigError, match="MeanTeacher"):
        TransferrableModel(
            net, loss_weights={"pseudo_label": 1.0}, pseudo_label_loss=ConfidentPseudoLabelLoss(), teacher=net
        )


def test_strong_intensity_view_copies_and_perturbs_in_place() -> None:
    t = Compose(strong_intensity_view())
    t.set_random_state(3)
    x = torch.randn(1, 6, 6, 6)
    out = t({"image": x.clone()})
    torch.testing.assert_close(torch.as_tensor(out["image"]), x)  # the teacher's view is untouched
    view = torch.as_tensor(out["image_strong"])
    assert view.shape == x.shape and not torch.allclose(view, x)
    t2 = Compose(strong_intensity_view())
    t2.set_random_state(3)
    torch.testing.assert_close(torch.as_tensor(t2({"image": x.clone()})["image_strong"]), view)  # seeded
    with pytest.raises(ConfigError, match="view_key"):
        strong_intensity_view(view_key="image")
    with pytest.raises(ConfigError, match="contrast"):
        strong_intensity_view(contrast=1.0)
    with pytest.raises(ConfigError, match="gamma"):
        strong_intensity_view(gamma=(1.5, 0.7))
