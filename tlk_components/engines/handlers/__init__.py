# Copyright (c) TLK Model Zoo contributors. Licensed under the Apache License, Version 2.0.
"""ignite handlers shared by the bundles: checkpoints, weights, progress, reporting, training safety."""
