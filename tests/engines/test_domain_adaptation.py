# Copyright (c) TLK Model Zoo contributors. Licensed under the Apache License, Version 2.0.
"""DomainAdaptationTrainer, PairedLoader and the label-free stopping rule, on tiny tensors."""

from __future__ import annotations

import json

import pytest
import torch
from ignite.engine import Events

from tests.net_helpers import dynunet
from tlk_components.adaptation.dann import DomainAdversarialLoss
from tlk_components.adaptation.discriminator import MultiScaleDomainDiscriminator
from tlk_components.adaptation.entropy import EntropyPriorLoss
from tlk_components.adaptation.transferrable import TransferrableModel
from tlk_components.engines.handlers.checkpoint import FinalModelSaver
from tlk_components.engines.handlers.reporting import WallTimeRecorder
from tlk_components.engines.trainers.domain_adaptation import DomainAdaptationTrainer, PairedLoader
from tlk_components.utils.errors import ConfigError
from tlk_components.utils.io import load_weights


class _NoLabel(dict):
    """A target batch whose label entry explodes when read."""

    def __getitem__(self, key: str) -> torch.Tensor:
        if key == "label":
            raise AssertionError("the trainer read a target label")
        return super().__getitem__(key)

    def get(self, key: str, default: object = None) -> object:
        if key == "label":
            raise AssertionError("the trainer read a target label")
        return super().get(key, default)


def _loaders() -> tuple[list, list]:
    g = torch.Generator().manual_seed(0)
    src = [
        {"image": torch.randn(2, 1, 8, 8, 8, generator=g), "label": torch.randint(0, 2, (2, 1, 8, 8, 8), generator=g)}
        for _ in range(3)
    ]
    tgt = [_NoLabel(image=torch.randn(2, 1, 8, 8, 8, generator=g), label=torch.zeros(2, 1, 8, 8, 8)) for _ in range(2)]
    return src, tgt


def test_paired_loader_cycles_and_validates() -> None:
    src, tgt = _loaders()
    pairs = list(PairedLoader(src, tgt, epoch_length=5))
    assert len(pairs) == 5
    assert pairs[3]["source"] is src[0] and pairs[2]["target"] is tgt[0]
    assert [p["source"] for p in PairedLoader(None, tgt)] == [None, None]
    with pytest.raises(ConfigError, match="source_loader"):
        PairedLoader(None, None)
    with pytest.raises(ConfigError, match="target loader has no batches"):
        PairedLoader(src, [])


def test_trainer_optimises_weighted_losses_without_reading_target_labels(tmp_path) -> None:
    torch.manual_seed(0)
    net = dynunet()
    adv = DomainAdversarialLoss(MultiScaleDomainDiscriminator([4, 8], strides=[2, 2], base_channels=4))
    model = TransferrableModel(
        net,
        loss_weights={"source_seg": 1.0, "encoder_adv": 0.5, "target_prior": 1.0},
        encoder_adversary=adv,
        target_adapter=EntropyPriorLoss([0.8, 0.2]),
    )
    opt = torch.optim.Adam(model.param_groups(1e-3, 1e-2))
    assert [g["name"] for g in opt.param_groups] == ["segmenter", "discriminator"]
    src, tgt = _loaders()
    before = net.input_block.conv1.conv.weight.detach().clone()
    trainer = DomainAdaptationTrainer(
        "cpu",
        2,
        PairedLoader(src, tgt, epoch_length=3),
        model,
        opt,
        grad_clip=1.0,
        train_handlers=[FinalModelSaver(tmp_path, net), WallTimeRecorder(tmp_path / "t.json")],
    )
    outputs = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: outputs.append(e.state.output))
    trainer.run()
    assert len(outputs) == 6
    assert set(outputs[0]) == {"loss", "source_seg", "encoder_adv", "target_prior", "grl_coeff"}
    assert outputs[-1]["grl_coeff"] > outputs[0]["grl_coeff"] == 0.0  # stepped once per iteration
    assert adv.grl.iter_num == 6
    assert not torch.equal(before, net.input_block.conv1.conv.weight)
    saved = load_weights(tmp_path / "model.pt")
    assert set(saved) == set(net.state_dict())  # the backbone alone is deployed
    assert json.loads((tmp_path / "t.json").read_text())["iterations"] == 6
    with pytest.raises(ConfigError, match="TransferrableModel"):
        DomainAdaptationTrainer("cpu", 1, PairedLoader(src, tgt), net, opt)

    # the loaders follow the model's needs: a target-only adapter never draws a source batch, and an active
    # source term without a source loader is refused at construction, naming the fix
    tgt_only = TransferrableModel(net, loss_weights={"target_prior": 1.0}, target_adapter=EntropyPriorLoss([0.8, 0.2]))
    paired = PairedLoader(src, tgt, epoch_length=2)
    DomainAdaptationTrainer("cpu", 1, paired, tgt_only, opt)
    assert all(p["source"] is None for p in paired)
    with pytest.raises(ConfigError, match="need source batches.*source_loader"):
        DomainAdaptationTrainer("cpu", 1, PairedLoader(None, tgt), model, opt)


def test_trainer_passes_the_strong_view_and_names_a_missing_one() -> None:
    from tlk_components.adaptation.entropy import ConfidentPseudoLabelLoss  # noqa: PLC0415
    from tlk_components.adaptation.teacher import MeanTeacher  # noqa: PLC0415

    torch.manual_seed(0)
    net = dynunet()
    model = TransferrableModel(
        net,
        loss_weights={"pseudo_label": 1.0},
        pseudo_label_loss=ConfidentPseudoLabelLoss(0.5),
        teacher=MeanTeacher(net, decay=1.0),
    )
    seen = []
    original = model.compute_losses

    def spy(*args, **kwargs):
        seen.append(kwargs.get("target_image_strong"))
        return original(*args, **kwargs)

    model.compute_losses = spy
    _, tgt = _loaders()
    for b in tgt:
        b["image_strong"] = b["image"] + 1.0
    opt = torch.optim.Adam(model.param_groups(1e-3))
    DomainAdaptationTrainer("cpu", 1, PairedLoader(None, tgt), model, opt, strong_view_key="image_strong").run()
    assert len(seen) == 2 and all(s is not None for s in seen)
    torch.testing.assert_close(seen[0], tgt[0]["image"] + 1.0)
    seen.clear()  # "" (a command line's none) and None: no strong view
    for key in ("", None):
        DomainAdaptationTrainer("cpu", 1, PairedLoader(None, tgt), model, opt, strong_view_key=key).run()
    assert len(seen) == 4 and all(s is None for s in seen)
    with pytest.raises(ConfigError, match="'view'.*strong_intensity_view"):
        DomainAdaptationTrainer("cpu", 1, PairedLoader(None, tgt), model, opt, strong_view_key="view").run()
