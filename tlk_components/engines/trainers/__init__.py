# Copyright (c) TLK Model Zoo contributors. Licensed under the Apache License, Version 2.0.
"""Trainers: one ignite/MONAI engine per training concept (domain adaptation, boxes, co-training, seed study)."""
