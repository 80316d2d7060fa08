# Copyright (c) TLK Model Zoo contributors. Licensed under the Apache License, Version 2.0.
"""Transferrable model (TLK component 5): backbone + adapters + distiller → a dict of named, weighted losses.

TLK's ``nnUNetTrainer_DA_V2`` took five loss weights on the command line, ``--loss_weights 1 0 1 0 0`` =
(source segmentation, target segmentation, encoder adversary, decoder adversary, segmentation-shape adversary).
:class:`TransferrableModel` keeps those five names and adds the label-free output-space terms and distillation:

=================  ==========================================================================  =========
name               term                                                                        default w
=================  ==========================================================================  =========
``source_seg``     segmentation loss on the source batch and its labels                        1
``target_seg``     segmentation loss on target labels (0: this bundle uses no target labels)   0
``encoder_adv``    DANN on the encoder skip maps (TLK's encoder-gan)                           0
``decoder_adv``    DANN on the decoder stage maps (TLK's decoder-gan)                          0
``shape_adv``      segmentation-shape adversary: source label masks vs target predictions      0
``target_entropy`` mean normalised entropy of target predictions                              0
``target_prior``   KL(class-size prior || mean predicted class share) on target               0
``pseudo_label``   cross-entropy on the teacher's confident target predictions                 0
``distill_kd``     temperature-scaled KL to a frozen teacher (on the target batch)             0
``distill_feature``  feature matching to the frozen teacher                                    0
=================  ==========================================================================  =========

``total = Σ w_k · term_k``. A term with weight 0 is neither computed nor returned (a zero weight removes it),
and a forward pass on a domain runs only when some active term needs it.

Class spaces: TLK's network kept AMOS's 15 organs and read "kidney" as ``max(logit_RK, logit_LK)`` against the max
of all other channels. ``target_class_map`` reproduces this for the target-space terms (entropy, prior, pseudo
labels, KD): target class ``k`` gets the max of the logits of the source channels listed in ``target_class_map[k]``
(class 0, background, may be left empty: it then takes every channel not listed elsewhere). None = identity.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss
from torch import nn

from tlk_components.adaptation.backbones import FeatureTaps, tap_points
from tlk_components.adaptation.dann import DomainAdversarialLoss, ShapeAdversarialLoss
from tlk_components.adaptation.distill import Distiller
from tlk_components.adaptation.entropy import ConfidentPseudoLabelLoss, EntropyPriorLoss
from tlk_components.utils.errors import ConfigError
from tlk_components.utils.validation import check_in_range, look_up_option

__all__ = ["DEFAULT_LOSS_WEIGHTS", "LOSS_NAMES", "TransferrableModel", "map_logits"]

LOSS_NAMES = (
    "source_seg",
    "target_seg",
    "encoder_adv",
    "decoder_adv",
    "shape_adv",
    "target_entropy",
    "target_prior",
    "pseudo_label",
    "distill_kd",
    "distill_feature",
)
#: TLK's ``--loss_weights 1 0 1 0 0``.
DEFAULT_LOSS_WEIGHTS = {"source_seg": 1.0, "target_seg": 0.0, "encoder_adv": 1.0, "decoder_adv": 0.0, "shape_adv": 0.0}

_NEEDS = {  # term -> component attribute that must be set when the weight is > 0
    "encoder_adv": "encoder_adversary",
    "decoder_adv": "decoder_adversary",
    "shape_adv": "shape_adversary",
    "target_entropy": "target_adapter",
    "target_prior": "target_adapter",
    "pseudo_label": "pseudo_label_loss",
    "distill_kd": "distiller",
    "distill_feature": "distiller",
}


def _unwrap(module: nn.Module) -> nn.Module:
    while isinstance(module, nn.DataParallel | nn.parallel.DistributedDataParallel):
        module = module.module
    return module


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
    """Wrap a segmentation backbone with adapters and a distiller; compute the named, weighted losses.

    Args:
        backbone: the segmentation network ``(N, C_in, *S) → (N, C, *S)`` logits (what is saved and deployed).
        loss_weights: name -> weight >= 0 for names in :data:`LOSS_NAMES`; unnamed terms get
            :data:`DEFAULT_LOSS_WEIGHTS` or 0.
        seg_loss: loss for ``source_seg``/``target_seg`` (default ``DiceCELoss(to_onehot_y=True, softmax=True)``).
        encoder_adversary / decoder_adversary: :class:`DomainAdversarialLoss` on the encoder / decoder taps.
        shape_adversary: :class:`ShapeAdversarialLoss` (source one-hot labels vs target softmax).
        target_adapter: :class:`EntropyPriorLoss` (terms ``target_entropy``, ``target_prior``).
        pseudo_label_loss: :class:`ConfidentPseudoLabelLoss`; its teacher is ``distiller.teacher`` when a distiller
            is given, else the model's own detached prediction.
        distiller: :class:`Distiller` (terms ``distill_kd``, ``distill_feature``, on the target batch).
        taps: ``{"encoder": [...], "decoder": [...]}`` module names; default :func:`tap_points` of the backbone.
        num_classes: output channels of the backbone (for one-hot labels of the shape adversary), >= 2.
        target_class_map: see the module docstring; None = identity.

    Raises:
        ConfigError: an unknown loss name, a negative weight, or a weight > 0 whose component is missing.

    Example:
        >>> from tlk_components.adaptation.backbones import build_backbone
        >>> net = build_backbone("dynunet", filters=(4, 8, 16), strides=(1, 2, 2))
        >>> model = TransferrableModel(net, loss_weights={"encoder_adv": 0.0})
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
        shape_adversary: ShapeAdversarialLoss | None = None,
        target_adapter: EntropyPriorLoss | None = None,
        pseudo_label_loss: ConfidentPseudoLabelLoss | None = None,
        distiller: Distiller | None = None,
        taps: Mapping[str, Sequence[str]] | None = None,
        num_classes: int = 2,
        target_class_map: Sequence[Sequence[int]] | None = None,
    ) -> None:
        super().__init__()
        weights = dict(DEFAULT_LOSS_WEIGHTS)
        for k, v in (loss_weights or {}).items():
            if k not in LOSS_NAMES:
                look_up_option("loss_weights key", k, LOSS_NAMES)
            weights[k] = check_in_range(f"loss_weights[{k!r}]", v, 0.0)
        self.loss_weights = {k: float(weights.get(k, 0.0)) for k in LOSS_NAMES}
        self.backbone = backbone
        self.seg_loss = seg_loss if seg_loss is not None else DiceCELoss(to_onehot_y=True, softmax=True)
        self.encoder_adversary = encoder_adversary
        self.decoder_adversary = decoder_adversary
        self.shape_adversary = shape_adversary
        self.target_adapter = target_adapter
        self.pseudo_label_loss = pseudo_label_loss
        self.distiller = distiller
        for term, attr in _NEEDS.items():
            if self.loss_weights[term] > 0 and getattr(self, attr) is None:
                raise ConfigError(
                    f"loss_weights[{term!r}]={self.loss_weights[term]} but no {attr} was given; pass {attr} or set "
                    f"the weight to 0"
                )
        self.num_classes = int(check_in_range("num_classes", num_classes, 2))
        self.target_class_map = [list(g) for g in target_class_map] if target_class_map is not None else None
        needed = [g for g, t in (("encoder", "encoder_adv"), ("decoder", "decoder_adv")) if self.active(t)]
        self.taps: FeatureTaps | None = None
        if needed:
            inner = _unwrap(backbone)
            points = dict(taps) if taps is not None else tap_points(inner)
            missing = [g for g in needed if not points.get(g)]
            if missing:
                raise ConfigError(
                    f"taps lack groups {missing} needed by the active adversaries; give their module names"
                )
            self.taps = FeatureTaps(inner, {g: points[g] for g in needed})

    # ------------------------------------------------------------------ helpers
    def active(self, name: str) -> bool:
        """True when the term ``name`` has a weight > 0."""
        return self.loss_weights[name] > 0

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

    def step(self) -> None:
        """Advance the adversaries' warm-start GRL schedules (once per iteration)."""
        for adv in (self.encoder_adversary, self.decoder_adversary):
            if adv is not None:
                adv.step()

    def discriminator_modules(self) -> list[nn.Module]:
        """The trainable modules that are not the backbone (discriminators, distillation projectors)."""
        mods: list[nn.Module] = []
        for m in (self.encoder_adversary, self.decoder_adversary, self.shape_adversary):
            if m is not None:
                mods.append(m)
        if self.distiller is not None and self.distiller.features is not None:
            mods.append(self.distiller.features)
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
    ) -> dict[str, torch.Tensor]:
        """Every active term (unweighted) and ``total`` (weighted sum).

        Args:
            source_image, source_label: ``(N, C_in, *S)`` and ``(N, 1, *S)`` class indices.
            target_image: ``(M, C_in, *S')``. target_label: only for ``target_seg`` (never in this bundle).

        Returns:
            ``{name: scalar for each active term, "total": scalar}``.

        Raises:
            ValueError: an input an active term needs is None.
        """
        w = self.loss_weights
        need_src = any(self.active(k) for k in ("source_seg", "encoder_adv", "decoder_adv", "shape_adv"))
        tgt_terms = tuple(k for k in LOSS_NAMES if k != "source_seg")  # every term that needs a target batch
        need_tgt = any(self.active(k) for k in tgt_terms)
        if need_src and (
            source_image is None or (source_label is None and (self.active("source_seg") or self.active("shape_adv")))
        ):
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
        if need_tgt:
            t_logits, t_feats = self._run(target_image)
        if self.active("source_seg"):
            out["source_seg"] = self.seg_loss(s_logits, source_label)
        if self.active("target_seg"):
            out["target_seg"] = self.seg_loss(t_logits, target_label)
        if self.active("encoder_adv"):
            out["encoder_adv"] = self.encoder_adversary(s_feats["encoder"], t_feats["encoder"])
        if self.active("decoder_adv"):
            out["decoder_adv"] = self.decoder_adversary(s_feats["decoder"], t_feats["decoder"])
        if self.active("shape_adv"):
            real = F.one_hot(source_label[:, 0].long(), self.num_classes).movedim(-1, 1).float()
            out["shape_adv"] = self.shape_adversary(real, torch.softmax(t_logits.float(), 1))
        t_mapped = map_logits(t_logits, self.target_class_map) if t_logits is not None else None
        if self.active("target_entropy") or self.active("target_prior"):
            terms = self.target_adapter(t_mapped)
            for key, name in (("entropy", "target_entropy"), ("prior", "target_prior")):
                if self.active(name):
                    out[name] = terms[key]
        teacher_logits = None
        if self.active("distill_kd") or self.active("distill_feature"):
            feats = t_feats.get("decoder", []) if t_feats else []
            d = self.distiller.losses(target_image, t_logits, feats)
            if self.active("distill_kd"):
                out["distill_kd"] = d["kd"]
            if self.active("distill_feature"):
                out["distill_feature"] = d["feature"]
        if self.active("pseudo_label"):
            if self.distiller is not None:
                with torch.no_grad():
                    teacher_logits = map_logits(self.distiller.teacher(target_image), self.target_class_map)
                    if self.distiller.taps is not None:
                        self.distiller.taps.clear()
            else:
                teacher_logits = t_mapped.detach()
            out["pseudo_label"] = self.pseudo_label_loss(t_mapped, teacher_logits)
        out["total"] = sum(w[k] * v for k, v in out.items())
        return out
