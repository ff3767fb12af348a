"""The base model of a partitioned reconstruction: how a patch problem is handed to it.

The protocol (:class:`unrolled3d.protocols.StartPointReconstructor`): the partitioned
reconstructor calls its base as ``base(y_p, physics_p, x_init=x0_p)``, always with the keyword
``x_init`` (the patch's start point), and expects ``[B, C, *patch]`` back. Nothing is inferred
from the base's signature at call time, so a compiled base (whose signature is
``(*args, **kwargs)``) receives its start point like an eager one.

deepinv's own reconstructors take their start point differently; :func:`as_base_reconstructor`
adapts them, at construction, with :class:`StartPointAdapter`:

* ``deepinv.optim.BaseOptim`` (``optim_builder``, ``unfolded_builder``, ``DEQ_builder``): the
  start point goes to deepinv's ``init`` keyword (its iterations start there instead of at
  ``A^T y``);
* ``deepinv.models.ArtifactRemoval``: it computes its own input (``A^T y`` or ``A_dagger(y)``),
  so the start point is not used.

A denoiser ``D(x, sigma)`` (any ``deepinv.models.Denoiser``, e.g. a bare ``DRUNet``) cannot take
``(y, physics)`` and is refused with a ``TypeError``, as is any module whose ``forward`` cannot
be called as ``forward(y, physics, x_init=...)``.
"""
from __future__ import annotations

import inspect

import torch
from deepinv.models import ArtifactRemoval, Denoiser, Reconstructor
from deepinv.optim import BaseOptim

__all__ = ["StartPointAdapter", "as_base_reconstructor", "START_MODES"]

#: how :class:`StartPointAdapter` hands the start point on
START_MODES = ("init", "none")


class StartPointAdapter(Reconstructor):
    """Call a deepinv reconstructor as ``model(y, physics, x_init=x0)``.

    Parameters
    ----------
    model : torch.nn.Module
        A reconstructor ``model(y, physics, **kwargs)`` (compiled or not).
    start : {"init", "none"}
        ``"init"``: ``x_init`` goes to the model's ``init`` keyword (deepinv's ``BaseOptim``:
        ``optim_builder``, ``unfolded_builder``); ``"none"``: the model makes its own start point
        and ``x_init`` is not passed (``ArtifactRemoval``).

    Shapes: ``y`` as ``physics`` measures, ``x_init`` and the output ``[B, C, D, H, W]``.

    Examples
    --------
    >>> import torch
    >>> from unrolled3d.partition import StartPointAdapter
    >>> class Iterative(torch.nn.Module):          # deepinv's optimisers take init=, not x_init=
    ...     def forward(self, y, physics, init=None):
    ...         return y if init is None else init
    >>> model = StartPointAdapter(Iterative(), start="init")
    >>> float(model(torch.zeros(1), None, x_init=torch.ones(1)))
    1.0
    """

    def __init__(self, model: torch.nn.Module, start: str = "init") -> None:
        super().__init__()
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if start not in START_MODES:
            raise ValueError(f"start must be one of {START_MODES}, got {start!r}")
        self.model = model
        self.start = start

    def forward(self, y: torch.Tensor, physics, x_init: torch.Tensor | None = None, **kwargs) -> torch.Tensor:
        if self.start == "init" and x_init is not None:
            return self.model(y, physics, init=x_init, **kwargs)
        return self.model(y, physics, **kwargs)


def _unwrapped(model: torch.nn.Module) -> torch.nn.Module:
    """The module behind ``torch.compile`` and data-parallel wrappers (for the checks only: the
    wrapper itself is what gets called)."""
    while True:
        if isinstance(model, torch._dynamo.eval_frame.OptimizedModule):
            model = model._orig_mod
        elif isinstance(model, (torch.nn.DataParallel, torch.nn.parallel.DistributedDataParallel)):
            model = model.module
        else:
            return model


def as_base_reconstructor(model: torch.nn.Module, name: str = "base_reconstructor") -> torch.nn.Module:
    """``model`` itself if it follows the protocol, deepinv's reconstructors adapted, or a ``TypeError``.

    Parameters
    ----------
    model : torch.nn.Module
        The candidate base (eager or ``torch.compile``-d).
    name : str
        The argument's name in error messages.

    Returns
    -------
    torch.nn.Module
        Callable as ``model(y, physics, x_init=x0)``.

    Raises
    ------
    TypeError
        For a non-module, a denoiser ``D(x, sigma)``, or a module whose ``forward`` cannot be
        called as ``forward(y, physics, x_init=...)``.

    Examples
    --------
    >>> import deepinv as dinv
    >>> from unrolled3d.partition import as_base_reconstructor
    >>> as_base_reconstructor(dinv.models.MedianFilter())
    Traceback (most recent call last):
        ...
    TypeError: base_reconstructor is a denoiser D(x, sigma) (MedianFilter): it cannot take (y, physics). Wrap it in a reconstructor, e.g. unrolled3d.models.UnrolledPGD(denoiser) or deepinv.models.ArtifactRemoval(denoiser)
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"{name} must be a torch.nn.Module (a deepinv Reconstructor), got {type(model).__name__}")
    inner = _unwrapped(model)
    kind = type(inner).__name__
    if isinstance(inner, StartPointAdapter):
        return model
    if isinstance(inner, Denoiser):
        raise TypeError(f"{name} is a denoiser D(x, sigma) ({kind}): it cannot take (y, physics). Wrap it in a "
                        f"reconstructor, e.g. unrolled3d.models.UnrolledPGD(denoiser) or "
                        f"deepinv.models.ArtifactRemoval(denoiser)")
    if isinstance(inner, BaseOptim):
        return StartPointAdapter(model, start="init")
    if isinstance(inner, ArtifactRemoval):
        return StartPointAdapter(model, start="none")
    try:
        signature = inspect.signature(inner.forward)
    except (TypeError, ValueError):  # a builtin or C++ forward: nothing to check
        return model
    try:
        signature.bind(None, None, x_init=None)
    except TypeError:
        raise TypeError(f"{name} ({kind}) must be callable as forward(y, physics, x_init=None); its forward is "
                        f"{kind}.forward{signature}. A reconstructor that makes its own start point can be "
                        f"wrapped in unrolled3d.partition.StartPointAdapter(model, start='none')") from None
    return model
