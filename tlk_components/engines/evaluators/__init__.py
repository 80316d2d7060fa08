# Copyright (c) TLK Model Zoo contributors. Licensed under the Apache License, Version 2.0.
"""Evaluators and metrics: segmentation, kidney (KiTS19/AMOS22), boxes, classification, co-training."""
