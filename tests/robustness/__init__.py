"""The robustness catalogue (issue 15): bad, hostile and edge-case inputs and faults, each a case
classified from what actually happens, grouped by the promise it checks.

Every case, whatever its promise, must also show no traceback (an exception of an unexpected type
from the API; exit 1 or a traceback on the command line), no hang, no crash and no destroyed input
(every file present in the case's folder before it ran, and not named as an output, keeps its bytes,
mode and link target). The promises, one test module each:

- ``test_clear_errors.py``: a bad input (file, number, argument) is refused with one clear error that
  names it; valid edge inputs are accepted and give the right result (items 4, 5 and 8);
- ``test_files_intact.py``: outputs never destroy inputs or sidecars, modes and links are kept,
  writes are atomic, a run killed with -9 resumes to the same model (items 2, 3 and 6);
- ``test_runs_never_mix.py``: a training run never takes over another run's folder (item 1);
- ``test_progress_and_interrupts.py``: long work shows progress, ``--help`` answers at once, Ctrl-C
  stops with one line (item 7, and the Ctrl-C cases).

The cases live in ``api_*.py`` (Python API) and ``cli_*.py`` (command line); ``observe.py`` runs
and classifies one; ``tally.py`` runs them all through pytest and writes
``bench/results/robustness_tally.{json,md}``.
"""
