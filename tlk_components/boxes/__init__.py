# Copyright (c) TLK Model Zoo contributors. Licensed under the Apache License, Version 2.0.
"""tlk_components.boxes (modules are imported directly: ``from tlk_components.boxes.<module> import ...``)."""
