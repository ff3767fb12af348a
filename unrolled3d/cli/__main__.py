"""``python -m unrolled3d.cli``: the same as the ``unrolled3d`` command."""
import sys

from .main import main

sys.exit(main())
