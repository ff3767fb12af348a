"""Benchmark suites and experiments, installed as ``unrolled3d.bench`` (``unrolled3d bench`` runs them).

A regular package, not a namespace: an editable install maps ``unrolled3d.bench`` to this folder
only for regular packages when ``unrolled3d`` itself is imported from a checkout.
"""
