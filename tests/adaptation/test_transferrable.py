# Copyright (c) TLK Model Zoo contributors. Licensed under the Apache License, Version 2.0.
"""Backbone factory, feature taps, finetuner and the TransferrableModel's weighted losses."""

from __future__ import annotations

import pytest
import torch
from monai.networks.nets import AttentionUnet, FullyConnectedNet, UNet, resnet18

from tests.net_helpers import dynunet
from tlk_components.adaptation.backbones import FeatureTaps, tap_points
from tlk_components.adaptation.dann import DomainAdversarialLoss
from tlk_components.adaptation.discriminator import MultiScaleDomainDiscriminator
from tlk_components.adaptation.entropy import EntropyPriorLoss
from tlk_components.adaptation.finetune import Finetuner, freeze, load_pretrained, param_groups
from tlk_components.adaptation.grl import GradientReverseLayer
from tlk_components.adaptation.transferrable import TransferrableModel, map_logits
from tlk_components.utils.errors import ConfigError, DatasetError
from tlk_components.utils.io import atomic_torch_save


def _net(out_channels: int = 2) -> torch.nn.Module:
    torch.manual_seed(0)
    return dynunet(out_channels=out_channels)


@pytest.mark.parametrize(
    "build,x,enc",
    [
        (dynunet, torch.zeros(1, 1, 8, 8, 8), [4, 8]),
        (lambda: resnet18(spatial_dims=3, n_input_channels=1), torch.zeros(1, 1, 16, 16, 16), [64, 128, 256]),
        (lambda: FullyConnectedNet(4, 2, [8, 6]), torch.zeros(2, 4), [8, 6]),
        (lambda: AttentionUnet(3, 1, 2, channels=(4, 8, 16), strides=(2, 2)), torch.zeros(1, 1, 8, 8, 8), [4, 8]),
    ],
    ids=["dynunet", "resnet18", "mlp", "attention_unet"],
)
def test_feature_taps_capture_without_editing_the_network(build, x: torch.Tensor, enc: list) -> None:
    net = build().eval()
    ref = net(x)
    taps = FeatureTaps(net, tap_points(net))
    out = net(x)
    assert torch.equal(out, ref)  # hooks do not change the output
    feats = taps.pop()
    assert [f.shape[1] for f in feats["encoder"]] == enc
    with pytest.raises(RuntimeError, match="not reached"):
        taps.pop()
    taps.remove()


def test_dynunet_taps_resolutions_and_bad_name() -> None:
    net = _net()
    taps = FeatureTaps(net, tap_points(net))
    net(torch.zeros(1, 1, 16, 16, 16))
    f = taps.pop()
    assert [t.shape[2] for t in f["encoder"]] == [16, 8]
    assert [t.shape[2] for t in f["decoder"]] == [16, 8]
    assert f["bottleneck"][0].shape[1:] == (16, 4, 4, 4)
    with pytest.raises(ConfigError, match="feature tap"):
        FeatureTaps(net, ["input_blok"])


def test_monai_unet_taps_follow_the_nested_levels() -> None:
    net = UNet(3, 1, 2, channels=(4, 8, 16, 32), strides=(2, 2, 2), num_res_units=1, norm="batch")
    names = tap_points(net)
    taps = FeatureTaps(net, names)
    net(torch.zeros(2, 1, 16, 16, 16))
    f = taps.pop()
    assert [tuple(t.shape[1:3]) for t in f["encoder"]] == [(4, 8), (8, 4), (16, 2)]
    assert tuple(f["bottleneck"][0].shape[1:3]) == (32, 2)
    # decoder stages produce features (not the logits of model.2), finest first
    assert "model.2" not in names["decoder"]
    assert [t.shape[2] for t in f["decoder"]] == [8, 4]


def test_finetuner_reports_missing_unexpected_mismatched(tmp_path) -> None:
    src = _net(out_channels=3)
    state = {("module." + k): v for k, v in src.state_dict().items()}
    state["module.extra.weight"] = torch.zeros(1)
    path = atomic_torch_save(state, tmp_path / "pre.pt")
    dst = _net(out_channels=2)
    report = load_pretrained(dst, path, key_map={"module.": ""})
    assert "extra.weight" in report.unexpected
    assert {k for k, _, _ in report.mismatched} == {"output_block.conv.conv.weight", "output_block.conv.conv.bias"}
    assert not report.missing and not report.complete
    assert torch.equal(dst.input_block.conv1.conv.weight, src.input_block.conv1.conv.weight)
    assert "shape-mismatched 2" in report.summary()
    with pytest.raises(ConfigError, match="exactly"):
        load_pretrained(_net(2), path, key_map={"module.": ""}, strict=True)
    excl = load_pretrained(_net(2), path, key_map={"module.": ""}, exclude=["output_block.*"])
    assert not excl.mismatched and len(excl.excluded) == 2
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(DatasetError, match="bad.pt"):
        load_pretrained(_net(2), tmp_path / "bad.pt")


def test_freeze_and_layerwise_lr_groups() -> None:
    net = _net()
    frozen = freeze(net, ["input_block.*"])
    assert frozen and all(not p.requires_grad for n, p in net.named_parameters() if n.startswith("input_block"))
    groups = param_groups(net, 1e-3, {"output_block.*": 10.0})
    assert [g["lr"] for g in groups] == [1e-3, 1e-2]
    n_trainable = sum(p.requires_grad for p in net.parameters())
    assert sum(len(g["params"]) for g in groups) == n_trainable
    with pytest.raises(ConfigError, match="match no"):
        param_groups(net, 1e-3, {"decoder.*": 2.0})
    with pytest.raises(ConfigError, match="matches no"):
        freeze(net, ["nothing.*"])
    ft = Finetuner(pretrained=None, frozen=["bottleneck.*"], lr_multipliers={"output_block.*": 5.0})
    net2 = ft.apply(_net())
    assert not net2.bottleneck.conv1.conv.weight.requires_grad
    assert torch.optim.Adam(ft.param_groups(net2, 1e-3)).param_groups[1]["lr"] == pytest.approx(5e-3)


def _model(weights: dict) -> TransferrableModel:
    net = _net()
    adv = DomainAdversarialLoss(
        MultiScaleDomainDiscriminator([4, 8], strides=[2, 2], base_channels=4), grl=GradientReverseLayer(1.0)
    )
    dec = DomainAdversarialLoss(MultiScaleDomainDiscriminator([4, 8], strides=[2, 2], base_channels=4))
    return TransferrableModel(
        net,
        loss_weights=weights,
        encoder_adversary=adv,
        decoder_adversary=dec,
        target_adapter=EntropyPriorLoss([0.9, 0.1]),
    )


def _batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    torch.manual_seed(1)
    return torch.randn(2, 1, 8, 8, 8), torch.randint(0, 2, (2, 1, 8, 8, 8)).float(), torch.randn(2, 1, 8, 8, 8)


def test_transferrable_total_is_weighted_sum_and_zero_weight_removes_term() -> None:
    xs, ys, xt = _batch()
    full = _model({"source_seg": 1.0, "encoder_adv": 0.5, "decoder_adv": 0.25, "target_prior": 2.0})
    out = full.compute_losses(xs, ys, xt)
    assert set(out) == {"source_seg", "encoder_adv", "decoder_adv", "target_prior", "total"}
    ref = out["source_seg"] + 0.5 * out["encoder_adv"] + 0.25 * out["decoder_adv"] + 2.0 * out["target_prior"]
    assert out["total"].item() == pytest.approx(ref.item(), rel=1e-6)
    # a zero weight removes the term: not returned, not in the total, and no gradient reaches its discriminator
    no_enc = _model({"source_seg": 1.0, "encoder_adv": 0.0, "decoder_adv": 0.25, "target_prior": 2.0})
    out0 = no_enc.compute_losses(xs, ys, xt)
    assert "encoder_adv" not in out0
    out0["total"].backward()
    assert no_enc.encoder_adversary is None  # dropped: not in the state dict or the optimizer
    assert not any(k.startswith("encoder_adversary.") for k in no_enc.state_dict())
    assert any(p.grad is not None for p in no_enc.decoder_adversary.parameters())
    assert no_enc.needs_source and no_enc.needs_target
    # target-only adaptation never needs a source batch
    tgt_only = _model({"source_seg": 0.0, "encoder_adv": 0.0, "target_entropy": 1.0, "target_prior": 1.0})
    assert set(tgt_only.compute_losses(None, None, xt)) == {"target_entropy", "target_prior", "total"}
    assert not tgt_only.needs_source and tgt_only.encoder_adversary is None and tgt_only.decoder_adversary is None


def test_a_missing_loss_weight_is_zero() -> None:
    """Only the named terms are active: no adversary weight appears that the user never set."""
    xs, ys, xt = _batch()
    model = TransferrableModel(
        _net(), loss_weights={"target_entropy": 1.0}, target_adapter=EntropyPriorLoss([0.9, 0.1])
    )
    assert {k for k, w in model.loss_weights.items() if w > 0} == {"target_entropy"}
    assert set(model.compute_losses(None, None, xt)) == {"target_entropy", "total"}
    assert set(TransferrableModel(_net()).loss_weights.values()) == {0.0}


def test_building_an_unused_discriminator_leaves_the_global_rng_alone() -> None:
    torch.manual_seed(3)
    expected = torch.rand(3)
    torch.manual_seed(3)
    MultiScaleDomainDiscriminator([4, 8], strides=[2, 2], base_channels=4)
    assert torch.equal(torch.rand(3), expected)


def test_ill_transferrable_configs() -> None:
    with pytest.raises(ConfigError, match="encoder_adversary"):
        TransferrableModel(_net(), loss_weights={"encoder_adv": 1.0})
    with pytest.raises(ConfigError, match="source_seg"):
        TransferrableModel(_net(), loss_weights={"source_segg": 1.0})
    with pytest.raises(ConfigError, match="expected a number"):
        TransferrableModel(_net(), loss_weights={"source_seg": "x"})
    xs, ys, xt = _batch()
    with pytest.raises(ValueError, match="target labels"):
        TransferrableModel(_net(), loss_weights={"encoder_adv": 0.0, "target_seg": 1.0}).compute_losses(xs, ys, xt)


def test_map_logits_kidney_is_max_of_both_kidneys() -> None:
    logits = torch.tensor([0.0, 1.0, 5.0, 3.0, 2.0]).view(1, 5, 1)
    out = map_logits(logits, [[], [2, 3]])
    assert out.flatten().tolist() == [2.0, 5.0]
