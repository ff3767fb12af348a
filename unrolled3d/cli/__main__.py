"""``python -m unrolled3d.cli``: the same as the ``unrolled3d`` command."""
from .main import run

run()
