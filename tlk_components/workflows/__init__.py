# Copyright (c) TLK Model Zoo contributors. Licensed under the Apache License, Version 2.0.
"""Workflows: what the bundles and the main job run on top of the engines (the kidney stages, the main job).

Modules are imported directly: ``from tlk_components.workflows.<module> import ...``.
"""
