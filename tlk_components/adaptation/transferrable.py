# Copyright (c) TLK Model Zoo contributors. Licensed under the Apache License, Version 2.0.
"""Transferrable model (TLK component 5): backbone + adapters → a dict of named, weighted losses.

TLK's ``nnUNetTrainer_DA_V2`` took five loss weights on the command line, ``--loss_weights 1 0 1 0 0`` =
(source segmentation, target segmentation, encoder adversary, decoder adversary, segmentation-shape adversary).
:class:`TransferrableModel` keeps the first four names (the shape adversary, TLK's "seg-gan", is not carried
over: no bundle used it) and adds the label-free output-space terms:

=================  ==========================================================================  =========
name               term                                                                        default w
=================  ==========================================================================  =========
``source_seg``     segmentation loss on the source batch and its labels                        0
``target_seg``     segmentation loss on target labels (0: this bundle uses no target labels)   0
``encoder_adv``    DANN on the encoder skip maps (TLK's encoder-gan)                           0
``decoder_adv``    DANN on the decoder stage maps (TLK's decoder-gan)                          0
``target_entropy`` mean normalised entropy of target predictions                              0
``target_prior``   class-size prior on the mean predicted class share of the target            0
``pseudo_label``   cross-entropy on confident target pseudo-labels (a mean teacher's, or the   0
                   model's own)
=================  ==========================================================================  =========

``total = Σ w_k · term_k``. A weight left out is 0 (TLK's ``--loss_weights 1 0 1 0 0`` is
``{"source_seg": 1, "encoder_adv": 1}``). A term with weight 0 is neither computed nor returned, a component
(adversary, adapter) that no active term uses is dropped, and a forward pass on a domain runs only when
some active term needs it (:attr:`TransferrableModel.needs_source`, :attr:`TransferrableModel.needs_target`).

Class spaces: TLK's network kept AMOS's 15 organs and read "kidney" as ``max(logit_RK, logit_LK)`` against the max
of all other channels. ``target_class_map`` reproduces this for the target-space terms (entropy, prior, pseudo
labels): target class ``k`` gets the max of the logits of the source channels listed in ``target_class_map[k]``
(class 0, background, may be left empty: it then takes every channel not listed elsewhere). None = identity.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from monai.losses import DiceCELoss
from torch import nn

from tlk_components.adaptation.backbones import FeatureTaps, tap_points
from tlk_components.adaptation.dann import DomainAdversarialLoss
from tlk_components.adaptation.entropy import ConfidentPseudoLabelLoss, EntropyPriorLoss
from tlk_components.adaptation.teacher import MeanTeacher, freeze_batchnorm_statistics
from tlk_components.utils.distributed import unwrap_model
from tlk_components.utils.errors import ConfigError
from tlk_components.utils.validation import check_in_range, look_up_option

__all__ = ["LOSS_NAMES", "SOURCE_TERMS", "TransferrableModel", "map_logits"]

LOSS_NAMES = (
    "source_seg",
    "target_seg",
    "encoder_adv",
    "decoder_adv",
    "target_entropy",
    "target_prior",
    "pseudo_label",
)
#: The terms that need a source batch (every term but ``source_seg`` needs a target batch).
SOURCE_TERMS = ("source_seg", "encoder_adv", "decoder_adv")

logger = logging.getLogger(__name__)

_NEEDS = {  # term -> component attribute that must be set when the weight is > 0
    "encoder_adv": "encoder_adversary",
    "decoder_adv": "decoder_adversary",
    "target_entropy": "target_adapter",
    "target_prior": "target_adapter",
    "pseudo_label": "pseudo_label_loss",
}


def map_logits(logits: torch.Tensor, class_map: Sequence[Sequence[int]] | None) -> torch.Tensor:
    """Collapse source-class logits ``(N, C_src, *S)`` to target classes ``(N, len(class_map), *S)`` by max.

    An empty group 0 means "every channel not named in another group" (background).
    """
    if class_map is None:
        return logits
    named = {c for group in class_map[1:] for c in group}
    out = []
    for k, group in enumerate(class_map):
        idx = list(group) if (group or k > 0) else [c for c in range(logits.shape[1]) if c not in named]
        out.append(logits[:, idx].amax(1))
    return torch.stack(out, 1)


class TransferrableModel(nn.Module):
    """Wrap a segmentation backbone with adapters; compute the named, weighted losses.

    Args:
        backbone: the segmentation network ``(N, C_in, *S) → (N, C, *S)`` logits (what is saved and deployed).
        loss_weights: name -> weight >= 0 for names in :data:`LOSS_NAMES`; a name left out has weight 0.
        seg_loss: loss for ``source_seg``/``target_seg`` (default ``DiceCELoss(to_onehot_y=True, softmax=True)``).
        encoder_adversary / decoder_adversary: :class:`DomainAdversarialLoss` on the encoder / decoder taps.
        target_adapter: :class:`EntropyPriorLoss` (terms ``target_entropy``, ``target_prior``).
        pseudo_label_loss: :class:`ConfidentPseudoLabelLoss`; its teacher is ``teacher`` when given, else the
            model's own detached prediction.
        teacher: :class:`MeanTeacher` of the backbone (built after the pretrained weights are loaded): it labels the
            plain target view for ``pseudo_label`` and follows the backbone after each :meth:`step`. Kept only when
            ``pseudo_label`` is active.
        freeze_bn_stats: keep the backbone's BatchNorm running statistics (the source's) during training: its
            BatchNorm layers stay in eval mode in :meth:`train` (affine parameters are still trained). Default False.
        taps: ``{"encoder": [...], "decoder": [...]}`` module names; default :func:`tap_points` of the backbone.

    Components that no active term uses are dropped (set to None; not in the state dict or the optimizer), the
    others are moved to the backbone's device, so a config may build them all and let the weights choose.
        target_class_map: see the module docstring; None = identity.

    Raises:
        ConfigError: an unknown loss name, a negative weight, or a weight > 0 whose component is missing.

    Example:
        >>> from monai.networks.nets import UNet
        >>> net = UNet(3, 1, 2, channels=(4, 8, 16), strides=(2, 2), num_res_units=1)
        >>> model = TransferrableModel(net, loss_weights={"source_seg": 1.0})
        >>> out = model.compute_losses(torch.zeros(1, 1, 8, 8, 8), torch.zeros(1, 1, 8, 8, 8), torch.zeros(1, 1, 8, 8, 8))
        >>> sorted(out)
        ['source_seg', 'total']
    """

    def __init__(
        self,
        backbone: nn.Module,
        loss_weights: Mapping[str, float] | None = None,
        seg_loss: nn.Module | None = None,
        encoder_adversary: DomainAdversarialLoss | None = None,
        decoder_adversary: DomainAdversarialLoss | None = None,
        target_adapter: EntropyPriorLoss | None = None,
        pseudo_label_loss: ConfidentPseudoLabelLoss | None = None,
        taps: Mapping[str, Sequence[str]] | None = None,
        target_class_map: Sequence[Sequence[int]] | None = None,
        teacher: MeanTeacher | None = None,
        freeze_bn_stats: bool = False,
    ) -> None:
        super().__init__()
        weights: dict[str, float] = {}
        for k, v in (loss_weights or {}).items():
            if k not in LOSS_NAMES:
                look_up_option("loss_weights key", k, LOSS_NAMES)
            weights[k] = check_in_range(f"loss_weights[{k!r}]", v, 0.0)
        self.loss_weights = {k: float(weights.get(k, 0.0)) for k in LOSS_NAMES}
        self.backbone = backbone
        self.seg_loss = seg_loss if seg_loss is not None else DiceCELoss(to_onehot_y=True, softmax=True)
        given = {
            "encoder_adversary": encoder_adversary,
            "decoder_adversary": decoder_adversary,
            "target_adapter": target_adapter,
            "pseudo_label_loss": pseudo_label_loss,
        }
        device = next((p.device for p in backbone.parameters()), None)
        for attr, module in given.items():
            terms = [t for t, a in _NEEDS.items() if a == attr and self.active(t)]
            if terms and module is None:
                raise ConfigError(
                    f"loss_weights[{terms[0]!r}]={self.loss_weights[terms[0]]} but no {attr} was given; pass {attr} "
                    "or set the weight to 0"
                )
            if terms and device is not None and isinstance(module, nn.Module):
                module = module.to(device)
            setattr(self, attr, module if terms else None)
        if teacher is not None and not isinstance(teacher, MeanTeacher):
            raise ConfigError(f"teacher: expected a MeanTeacher, got {type(teacher).__name__}")
        self.teacher = teacher if self.active("pseudo_label") else None
        if self.teacher is not None and device is not None:
            self.teacher = self.teacher.to(device)
        self.freeze_bn_stats = bool(freeze_bn_stats)
        self.target_class_map = [list(g) for g in target_class_map] if target_class_map is not None else None
        needed = [g for g, t in (("encoder", "encoder_adv"), ("decoder", "decoder_adv")) if self.active(t)]
        self.taps: FeatureTaps | None = None
        if needed:
            inner = unwrap_model(backbone)
            points = dict(taps) if taps is not None else tap_points(inner)
            missing = [g for g in needed if not points.get(g)]
            if missing:
                raise ConfigError(
                    f"taps lack groups {missing} needed by the active adversaries; give their module names"
                )
            self.taps = FeatureTaps(inner, {g: points[g] for g in needed})
        logger.info(f"adapter: {self.describe()}")

    def describe(self) -> str:
        """One line: the active terms and their weights, the teacher and the BatchNorm mode (logged at construction)."""
        terms = ", ".join(f"{k} {w:g}" for k, w in self.loss_weights.items() if w > 0) or "no active term"
        parts = [f"loss terms {terms}"]
        if self.teacher is not None:
            kind = "fixed (the initial weights)" if self.teacher.decay == 1.0 else f"EMA, decay {self.teacher.decay:g}"
            parts.append(f"pseudo-label teacher {kind}")
        if self.freeze_bn_stats:
            parts.append("BatchNorm statistics frozen")
        return "; ".join(parts)

    # ------------------------------------------------------------------ helpers
    def active(self, name: str) -> bool:
        """True when the term ``name`` has a weight > 0."""
        return self.loss_weights[name] > 0

    @property
    def needs_source(self) -> bool:
        """True when an active term needs a source batch (:data:`SOURCE_TERMS`)."""
        return any(self.active(k) for k in SOURCE_TERMS)

    @property
    def needs_target(self) -> bool:
        """True when an active term needs a target batch (every term but ``source_seg``)."""
        return any(self.active(k) for k in LOSS_NAMES if k != "source_seg")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of the backbone (inference; identical in train and eval mode)."""
        out = self.backbone(x)
        if self.taps is not None:
            self.taps.clear()
        return out

    def _run(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, list[torch.Tensor]]]:
        logits = self.backbone(x)
        feats = self.taps.pop() if self.taps is not None else {}
        return logits, feats

    def train(self, mode: bool = True) -> TransferrableModel:
        """Train/eval mode; with ``freeze_bn_stats`` the backbone's BatchNorm layers stay in eval mode."""
        super().train(mode)
        if mode and self.freeze_bn_stats:
            freeze_batchnorm_statistics(self.backbone)
        return self

    def step(self) -> None:
        """After each optimiser step: advance the adversaries' warm-start GRL schedules and move the teacher."""
        for adv in (self.encoder_adversary, self.decoder_adversary):
            if adv is not None:
                adv.step()
        if self.teacher is not None:
            self.teacher.update(unwrap_model(self.backbone))

    def discriminator_modules(self) -> list[nn.Module]:
        """The trainable modules that are not the backbone (the discriminators)."""
        mods: list[nn.Module] = []
        for m in (self.encoder_adversary, self.decoder_adversary):
            if m is not None:
                mods.append(m)
        return mods

    def param_groups(
        self, lr: float, discriminator_lr: float | None = None, backbone_groups: list[dict[str, Any]] | None = None
    ) -> list[dict[str, Any]]:
        """Optimizer groups: the backbone (``backbone_groups`` when given, e.g. from a Finetuner) and the adversaries.

        Args:
            lr: backbone learning rate > 0.
            discriminator_lr: learning rate of discriminators and projectors (default: ``lr``).
            backbone_groups: precomputed groups for the backbone (layer-wise multipliers).
        """
        groups = backbone_groups or [
            {"params": [p for p in self.backbone.parameters() if p.requires_grad], "lr": lr, "name": "segmenter"}
        ]
        d_params = [p for m in self.discriminator_modules() for p in m.parameters() if p.requires_grad]
        if d_params:
            groups = [*groups, {"params": d_params, "lr": discriminator_lr or lr, "name": "discriminator"}]
        return groups

    # ------------------------------------------------------------------ losses
    def compute_losses(
        self,
        source_image: torch.Tensor | None,
        source_label: torch.Tensor | None,
        target_image: torch.Tensor | None,
        target_label: torch.Tensor | None = None,
        target_image_strong: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Every active term (unweighted) and ``total`` (weighted sum).

        Args:
            source_image, source_label: ``(N, C_in, *S)`` and ``(N, 1, *S)`` class indices.
            target_image: ``(M, C_in, *S')``. target_label: only for ``target_seg`` (never in this bundle).
            target_image_strong: a strongly perturbed view of ``target_image`` (same shape and geometry), or None.
                When given, the backbone's target terms see it and the teacher labels ``target_image``.

        Returns:
            ``{name: scalar for each active term, "total": scalar}``.

        Raises:
            ValueError: an input an active term needs is None.
        """
        w = self.loss_weights
        need_src, need_tgt = self.needs_source, self.needs_target
        if need_src and (source_image is None or (source_label is None and self.active("source_seg"))):
            raise ValueError("the active loss terms need a source image and label batch")
        if need_tgt and target_image is None:
            raise ValueError("the active loss terms need a target image batch")
        if self.active("target_seg") and target_label is None:
            raise ValueError(
                "loss_weights['target_seg'] > 0 needs target labels; set it to 0 for label-free adaptation"
            )
        out: dict[str, torch.Tensor] = {}
        s_logits = s_feats = t_logits = t_feats = None
        if need_src:
            s_logits, s_feats = self._run(source_image)
        teacher_logits = None
        if self.active("pseudo_label") and self.teacher is not None:
            teacher_logits = map_logits(self.teacher(target_image), self.target_class_map)
            if self.taps is not None:
                self.taps.clear()
        if need_tgt:
            if target_image_strong is not None and target_image_strong.shape != target_image.shape:
                raise ValueError(
                    f"target_image_strong {tuple(target_image_strong.shape)} and target_image "
                    f"{tuple(target_image.shape)} differ: the strong view must be the same patch"
                )
            t_logits, t_feats = self._run(target_image if target_image_strong is None else target_image_strong)
        if self.active("source_seg"):
            out["source_seg"] = self.seg_loss(s_logits, source_label)
        if self.active("target_seg"):
            out["target_seg"] = self.seg_loss(t_logits, target_label)
        if self.active("encoder_adv"):
            out["encoder_adv"] = self.encoder_adversary(s_feats["encoder"], t_feats["encoder"])
        if self.active("decoder_adv"):
            out["decoder_adv"] = self.decoder_adversary(s_feats["decoder"], t_feats["decoder"])
        t_mapped = map_logits(t_logits, self.target_class_map) if t_logits is not None else None
        if self.active("target_entropy") or self.active("target_prior"):
            terms = self.target_adapter(t_mapped)
            for key, name in (("entropy", "target_entropy"), ("prior", "target_prior")):
                if self.active(name):
                    out[name] = terms[key]
        if self.active("pseudo_label"):
            teacher_logits = t_mapped.detach() if teacher_logits is None else teacher_logits
            out["pseudo_label"] = self.pseudo_label_loss(t_mapped, teacher_logits)
        out["total"] = sum(w[k] * v for k, v in out.items())
        return out
