# Copyright (c) TLK Model Zoo contributors. Licensed under the Apache License, Version 2.0.
"""ignite/MONAI engines by concept, as nnU-Net keeps one folder per stage.

``trainers`` (domain adaptation, boxes, co-training, seed study), ``evaluators`` (segmentation, kidney, boxes,
classification, co-training), ``handlers`` (checkpoint, weights, progress, reporting, training safety) and
``inference`` (sliding window, pre/postprocessing and writers, saliency). Modules are imported directly:
``from tlk_components.engines.<concept>.<module> import ...``.
"""
