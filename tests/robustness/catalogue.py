"""The catalogue's vocabulary: a case, the issue's items, the promises, and every case in one list."""
from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Any, Callable, Sequence

import pytest

#: outcomes, from what a case does (``observe.py``); the first two keep the promise
CLASSES = ("clear_error", "ok", "vague_error", "silent_accept", "refused_valid", "wrong_result",
           "destructive_write", "traceback", "crash", "hang")
GOOD = ("clear_error", "ok")

#: the items of issue 15, which the tally counts by
ITEMS = {
    1: "runs never mix", 2: "outputs never destroy inputs / sidecars", 3: "durability, kill -9, resume",
    4: "missing keys, wrong formats, pickles, empty files; one line", 5: "NaN / Inf / overflow",
    6: "permissions and symbolic links", 7: "progress and silent long work", 8: "integers, late checks, endings, huge sizes",
}

#: promise -> (what it says, the items it holds); Ctrl-C cases belong to "progress_and_interrupts"
PROMISES = {
    "clear_errors": ("a bad input is refused with one clear error naming it; valid edge inputs work", (4, 5, 8)),
    "files_intact": ("no input, sidecar, mode or link destroyed; atomic writes; a killed run resumes", (2, 3, 6)),
    "runs_never_mix": ("a training run never takes over another run's folder", (1,)),
    "progress_and_interrupts": ("long work shows progress, --help answers at once, Ctrl-C stops in one line", (7,)),
}

#: outcomes left as they are, with the reason (bench/results/README.md): strict xfails, so that a fix
#: shows up as an unexpected pass and the entry is removed (none at present)
KNOWN: dict[str, str] = {}

# tiny training configuration (8^3, 4 views, one unrolled iteration of a 2-channel U-Net, 4^3 patches)
_TINY = {"geometry": {"size": "8", "views": "4"}, "model": {"n_iter": "1", "base": "2", "depth": "1"},
         "partition": {"patch": "4"}}


def toml(steps: int = 2, lr: str = "1e-3", extra: str = "", **sections: dict[str, str]) -> str:
    """The tiny TOML with values replaced or added: ``toml(geometry={"size": "8.5"})``."""
    base = {s: dict(kv) for s, kv in _TINY.items()}
    base["train"] = {"steps": str(steps), "checkpoint_every": "1", "lr": lr}
    for sec, vals in sections.items():
        base.setdefault(sec, {}).update(vals)
    return "".join(f"[{s}]\n" + "".join(f"{k} = {v}\n" for k, v in kv.items()) for s, kv in base.items()) + extra


@dataclasses.dataclass
class Case:
    """One input or fault. ``fn(d)`` (API) or ``argv`` / ``runner(d)`` (command line) runs it in folder ``d``.

    ``expect``: ``error`` (a bad input), ``ok`` (a valid one, its result checked by ``check``),
    ``interrupt`` (Ctrl-C) or ``either`` (a clear error and a correct result are both right).
    ``needles``: what the error message must name. ``outputs``: names in ``d`` the case may write
    (everything else there is an input, hashed before and after). ``slow``: runs fresh processes.
    """

    id: str
    item: int
    surface: str  # "api" or "cli"
    expect: str
    needles: tuple[str, ...] = ()
    fn: Callable[[Path], Any] | None = None
    argv: Sequence[str] | None = None
    runner: Callable[[Path], tuple[int, str, str]] | None = None
    setup: Callable[[Path], Any] | None = None
    check: Callable[..., Any] | None = None
    outputs: tuple[str, ...] = ()
    timeout: float = 120.0
    what: str = ""
    errors: tuple[type, ...] = ()  # further exception types that are a clear answer for this case
    slow: bool = False

    @property
    def promise(self) -> str:
        if self.expect == "interrupt":
            return "progress_and_interrupts"
        return next(name for name, (_, items) in PROMISES.items() if self.item in items)


class Catalogue:
    """Collects cases: ``api(id, item, expect, needles, fn, ...)`` and ``cli(id, item, expect, needles, argv, ...)``."""

    def __init__(self) -> None:
        self.cases: list[Case] = []

    def api(self, id: str, item: int, expect: str, needles: str | tuple, fn: Callable[[Path], Any], **kw) -> None:
        self.cases.append(Case(f"api.{id}", item, "api", expect, _needles(needles), fn=fn, **kw))

    def cli(self, id: str, item: int, expect: str, needles: str | tuple, argv: Sequence[str] | None = None, **kw) -> None:
        self.cases.append(Case(f"cli.{id}", item, "cli", expect, _needles(needles), argv=argv, **kw))


def _needles(needles: str | tuple) -> tuple[str, ...]:
    return (needles,) if isinstance(needles, str) else tuple(needles)


@functools.lru_cache(maxsize=None)
def all_cases() -> tuple[Case, ...]:
    """Every case, command line first (as the tally has always listed them); ids are unique."""
    from . import (api_files, api_geometry, api_models, api_outputs, api_training, cli_arguments, cli_files,
                   cli_outputs, cli_runs)

    cases = [c for m in (cli_outputs, cli_files, cli_arguments, cli_runs, api_geometry, api_models, api_files,
                         api_outputs, api_training) for c in m.cases()]
    seen: set[str] = set()
    duplicates = [c.id for c in cases if c.id in seen or seen.add(c.id)]
    assert not duplicates, f"case ids must be unique: {duplicates}"
    unknown = set(KNOWN) - seen
    assert not unknown, f"KNOWN names cases that do not exist: {unknown}"
    return tuple(cases)


def params(promise: str) -> list:
    """The cases of one promise as pytest parameters (id = case id; slow and known outcomes marked)."""
    if promise not in PROMISES:
        raise ValueError(f"promise must be one of {sorted(PROMISES)}, got {promise!r}")
    out = []
    for case in all_cases():
        if case.promise != promise:
            continue
        marks = [pytest.mark.slow] if case.slow else []
        if case.id in KNOWN:
            marks.append(pytest.mark.xfail(reason=KNOWN[case.id], strict=True))
        out.append(pytest.param(case, id=case.id, marks=marks))
    return out
