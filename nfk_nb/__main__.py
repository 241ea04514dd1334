"""``python -m nfk_nb ...`` is the ``nfk-nb`` command (so ``torchrun -m nfk_nb fit ...`` works)."""

import sys

from .cli import main

sys.exit(main())
