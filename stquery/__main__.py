"""``python -m stquery ...`` (and ``torchrun -m stquery train ...``): the ``stquery`` command."""
import sys

from .cli import main

sys.exit(main())
