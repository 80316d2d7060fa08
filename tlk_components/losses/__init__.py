# Copyright (c) TLK Model Zoo contributors. Licensed under the Apache License, Version 2.0.
"""tlk_components.losses (modules are imported directly: ``from tlk_components.losses.<module> import ...``)."""
