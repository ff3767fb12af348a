"""The machinery of the configuration sections: a dataclass per TOML section that checks itself.

A section is a frozen dataclass deriving from :class:`Section` whose fields carry their rule
(:func:`setting`). The rule of a field is stated once and serves both ways in: a Python
constructor (``TrainConfig(steps=0)`` names ``TrainConfig.steps``) and a TOML table
(``Section.from_dict`` names ``[train] steps``). The keys a table may hold are the fields (an
unknown key is refused, the known ones listed); the defaults are the fields' defaults.

The rules are small callables ``rule(name, value) -> value`` built by :func:`integer_in`,
:func:`real_in`, :func:`one_of`, :func:`flag`, :func:`text` and :func:`optional`; each raises a
``TypeError`` for a value of the wrong kind and a ``ValueError`` for one out of bounds, naming
the key (the words of :mod:`unrolled3d._validation`). This module is a leaf: it imports only the
shared validators, so that every layer (models, training, the command line) may describe its
part of a configuration with it.
"""
from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import os
from typing import Any, Callable, ClassVar, Iterator, Mapping, Sequence

from ._validation import boolean, choice, integer, real

__all__ = ["Section", "setting", "integer_in", "real_in", "one_of", "flag", "text", "optional", "Rule", "short_repr"]

Rule = Callable[[str, Any], Any]
#: how a field is named in errors: "{cls}.{key}" from Python, "[{section}] {key}" from a table
_NAMING: contextvars.ContextVar[str] = contextvars.ContextVar("unrolled3d_config_naming", default="{cls}.{key}")


def integer_in(low: int, high: int) -> Rule:
    """An integer (not a bool or a float) in ``[low, high]``."""

    def rule(name: str, value: Any) -> int:
        v = integer(name, value, low)
        if v > high:
            raise ValueError(f"{name} must be an integer in [{low}, {high}], got {value!r}")
        return v

    return rule


def real_in(low: float | None = None, high: float | None = None, *, above: float | None = None) -> Rule:
    """A finite real number, at least ``low`` / more than ``above`` / at most ``high`` where given."""

    def rule(name: str, value: Any) -> float:
        v = real(name, value, positive=above == 0, nonnegative=low == 0)
        if (low is not None and v < low) or (above is not None and v <= above) or (high is not None and v > high):
            lo = f"({above}" if above is not None else f"[{low}" if low is not None else "(-inf"
            hi = f"{high}]" if high is not None else "inf)"
            raise ValueError(f"{name} must be in {lo}, {hi}, got {value!r}")
        return v

    return rule


def one_of(options: Sequence[str], hyphens: bool = False) -> Rule:
    """One of the strings ``options`` (``hyphens``: ``"shepp-logan"`` is read ``"shepp_logan"``)."""

    def rule(name: str, value: Any) -> str:
        if hyphens and isinstance(value, str):
            value = value.replace("-", "_")
        return choice(name, value, tuple(options))

    return rule


def flag(name: str, value: Any) -> bool:
    """``true`` or ``false`` (not 0/1, not a string)."""
    return boolean(name, value)


def text(name: str, value: Any) -> str:
    """A non-empty string of at most 4096 characters (a path, a key)."""
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a string, got {short_repr(value)}")
    if not value or len(value) > 4096:
        raise ValueError(f"{name} must be a non-empty string of at most 4096 characters, got {short_repr(value)}")
    return value


def optional(rule: Rule) -> Rule:
    """``None`` (not set) or what ``rule`` accepts."""

    def maybe(name: str, value: Any) -> Any:
        return None if value is None else rule(name, value)

    return maybe


def short_repr(value: Any) -> str:
    """``repr(value)`` cut at 80 characters (an error stays one readable line, whatever a file holds)."""
    try:
        r = repr(value)
    except RecursionError:
        return f"a {type(value).__name__} nested too deeply"
    return r if len(r) <= 80 else f"{r[:77]}..."


def setting(default: Any = dataclasses.MISSING, rule: Rule | None = None, *, in_table: bool = True) -> Any:
    """A section field: its default, its rule, and whether a TOML table may set it
    (``in_table=False``: Python only, e.g. a progress bar)."""
    return dataclasses.field(default=default, metadata={"rule": rule, "in_table": in_table})


class Section:
    """Base of the configuration sections (each a frozen dataclass).

    ``SECTION`` is the TOML table's name. ``__post_init__`` applies every field's rule (and
    :meth:`check`, the rules that tie fields together); :meth:`from_dict` reads a table,
    refusing unknown keys; :meth:`to_dict` gives the table back (unset optional values left out,
    as TOML has no null).

    Examples
    --------
    >>> import dataclasses
    >>> from unrolled3d._config import Section, integer_in, setting
    >>> @dataclasses.dataclass(frozen=True)
    ... class Scan(Section):
    ...     SECTION = "scan"
    ...     views: int = setting(30, integer_in(1, 100_000))
    >>> Scan.from_dict({"views": 60}).views
    60
    >>> Scan.from_dict({"view": 60})
    Traceback (most recent call last):
        ...
    ValueError: unknown keys in [scan]: view (known: views)
    >>> Scan(views=0)
    Traceback (most recent call last):
        ...
    ValueError: Scan.views must be a positive integer, got 0
    """

    SECTION: ClassVar[str] = ""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            rule = f.metadata.get("rule")
            if rule is not None:
                object.__setattr__(self, f.name, rule(self.name(f.name), getattr(self, f.name)))
        self.check()

    def check(self) -> None:
        """The rules between fields (none by default); raise naming the keys with :meth:`name`."""

    @classmethod
    def name(cls, key: str) -> str:
        """How errors name ``key``: ``Cls.key`` from Python, ``[section] key`` from a table."""
        return _NAMING.get().format(cls=cls.__name__, section=cls.SECTION, key=key)

    @classmethod
    def keys(cls) -> tuple[str, ...]:
        """The keys a TOML table of this section may hold."""
        return tuple(f.name for f in dataclasses.fields(cls) if f.metadata.get("in_table", True))  # type: ignore

    @classmethod
    def required(cls) -> tuple[str, ...]:
        """The keys without a default."""
        return tuple(f.name for f in dataclasses.fields(cls)  # type: ignore[arg-type]
                     if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING)

    @classmethod
    def from_dict(cls, values: Any, **given: Any):
        """The section of a TOML table (``given``: values from elsewhere, e.g. the command line).

        Raises a ``ValueError``/``TypeError`` naming ``[section] key``.
        """
        if not isinstance(values, Mapping):
            raise TypeError(f"[{cls.SECTION}] must be a table of keys, got {short_repr(values)}")
        unknown = sorted(str(k)[:80] for k in set(values) - set(cls.keys()))
        if unknown:
            raise ValueError(f"unknown keys in [{cls.SECTION}]: {', '.join(unknown)} "
                             f"(known: {', '.join(cls.keys())})")
        missing = [k for k in cls.required() if k not in values]
        if missing:
            raise ValueError(f"[{cls.SECTION}] needs {', '.join(missing)}")
        with table_names():
            return cls(**{**values, **given})

    def to_dict(self) -> dict[str, Any]:
        """The TOML table: every key a table may hold whose value is set (lists for tuples)."""
        out = {}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if f.metadata.get("in_table", True) and value is not None:
                out[f.name] = os.fspath(value) if isinstance(value, os.PathLike) else \
                    list(value) if isinstance(value, tuple) else value
        return out


@contextlib.contextmanager
def table_names() -> Iterator[None]:
    """Within: errors name keys as in a TOML table (``[train] steps``)."""
    token = _NAMING.set("[{section}] {key}")
    try:
        yield
    finally:
        _NAMING.reset(token)
