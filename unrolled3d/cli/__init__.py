"""The ``unrolled3d`` command line (entry point :func:`main`).

* :mod:`.main` - the argument parser and the dispatch (no torch import before parsing);
* :mod:`.commands` - one function per subcommand;
* :mod:`.demo` - ``unrolled3d demo``: held-out phantoms, FDK vs the shipped network;
* :mod:`.bench` - ``unrolled3d bench``: the benchmark suites and their report;
* :mod:`.output` - what a command prints.
"""
from .main import build_parser, main

__all__ = ["main", "build_parser"]
