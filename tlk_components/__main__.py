# Copyright (c) TLK Model Zoo contributors. Licensed under the Apache License, Version 2.0.
"""``python -m tlk_components``: the zoo's command line (see :mod:`tlk_components.cli`)."""

from tlk_components.cli import main

if __name__ == "__main__":
    main()
