# Copyright (c) TLK Model Zoo contributors. Licensed under the Apache License, Version 2.0.
"""Inference: sliding window, pre/postprocessing and writers, saliency, per-bundle predictors."""
