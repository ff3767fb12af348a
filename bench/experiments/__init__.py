"""Experiments beside the benchmarks: quality runs, training of baselines, real-volume preparation,
the report of the committed results, and the peers (other packages' reconstructions run in their
own environments). Each module is a script (``python bench/experiments/<name>.py --help``); the
timing and memory suites are the ``test_bench_*.py`` files one folder up. Installed as
``unrolled3d.bench.experiments`` (``unrolled3d bench`` renders its report with ``report``).
"""
