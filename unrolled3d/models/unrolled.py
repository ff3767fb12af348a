r"""Unrolled proximal gradient descent with learned denoisers, memory-lean options included."""
from __future__ import annotations

import copy
import inspect
import math
from typing import Sequence

import torch
import torch.nn.functional as F
from deepinv.models import Reconstructor
from torch import nn
from torch.utils.checkpoint import checkpoint as _checkpoint

from .._validation import boolean, choice, integer, real
from ..protocols import NormalEquationPhysics
from . import ensemble
from .unet3d import UNet3D

__all__ = ["UnrolledPGD", "SigmaAdapter", "deepinv_denoiser"]


class SigmaAdapter(nn.Module):
    r"""Make a deepinv denoiser ``D(x, sigma)`` usable as a plain ``D(x)`` module.

    Parameters
    ----------
    denoiser : nn.Module
        e.g. ``deepinv.models.DRUNet(dim=3, pretrained=None)``.
    sigma : float
        noise level passed to it (> 0).
    learn_sigma : bool
        make ``sigma`` a trained parameter (stored as ``log sigma``).

    Examples
    --------
    >>> import torch
    >>> from unrolled3d.models import SigmaAdapter
    >>> class Shrink(torch.nn.Module):
    ...     def forward(self, x, sigma):
    ...         return x / (1 + sigma)
    >>> SigmaAdapter(Shrink(), sigma=1.0)(torch.ones(2))
    tensor([0.5000, 0.5000])
    """

    def __init__(self, denoiser: nn.Module, sigma: float = 0.05, learn_sigma: bool = False) -> None:
        super().__init__()
        if not isinstance(denoiser, nn.Module):
            raise TypeError(f"denoiser must be a torch.nn.Module, got {type(denoiser).__name__}")
        sigma = real("sigma", sigma, positive=True)
        self.denoiser = denoiser
        log_sigma = torch.tensor(math.log(sigma))
        if learn_sigma:
            self.log_sigma = nn.Parameter(log_sigma)
        else:
            self.register_buffer("log_sigma", log_sigma)

    @property
    def sigma(self) -> torch.Tensor:
        return self.log_sigma.exp()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.denoiser(x, self.sigma.to(x.dtype))


def deepinv_denoiser(name: str = "drunet", sigma: float = 0.05, **kwargs) -> nn.Module:
    """A randomly initialised 3D deepinv denoiser, ready for :class:`UnrolledPGD`.

    ``"drunet"``: ``DRUNet(1, 1, dim=3, pretrained=None, **kwargs)`` wrapped in a
    :class:`SigmaAdapter` (its forward needs ``sigma``; it pads odd sizes itself);
    ``"unet"``: ``UNet(1, 1, dim=3, **kwargs)`` (sigma-free). Both exist in deepinv >= 0.5.
    """
    import deepinv

    if name == "drunet":
        kwargs.setdefault("pretrained", None)
        return SigmaAdapter(deepinv.models.DRUNet(1, 1, dim=3, **kwargs), sigma=sigma)
    if name == "unet":
        return deepinv.models.UNet(1, 1, dim=3, **kwargs)
    raise ValueError(f"unknown deepinv denoiser {name!r}: expected 'drunet' or 'unet'")


def _needs_sigma(module: nn.Module) -> bool:
    """True when ``module.forward`` has a required ``sigma`` argument (deepinv's DRUNet, DnCNN...)."""
    try:
        params = inspect.signature(module.forward).parameters
    except (TypeError, ValueError):
        return False
    p = params.get("sigma")
    return p is not None and p.default is inspect.Parameter.empty


def _as_denoiser(module, where: str) -> nn.Module:
    if not isinstance(module, nn.Module):
        raise TypeError(f"{where} must be a torch.nn.Module, got {type(module).__name__}")
    return SigmaAdapter(module) if _needs_sigma(module) else module


def _inv_softplus(value: float) -> float:
    """``s`` with ``softplus(s) = value`` (``log(expm1(value))``, stable for large values)."""
    return value + math.log(-math.expm1(-value))


def _autocast_dtype(device: torch.device, amp) -> torch.dtype:
    if isinstance(amp, torch.dtype):
        return amp
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16


class UnrolledPGD(Reconstructor):
    r"""Unrolled proximal gradient descent ``x_{k+1} = D_k(x_k - eta_k grad f(x_k))``.

    ``grad f(x) = A^T (A x - y)``, or ``physics.data_gradient(x, y)`` when the physics provides
    one (e.g. :class:`unrolled3d.normal.DiagCirculantPatch`, where ``y`` is ``b = S A^T y_p`` and
    the gradient ``H_p x - b``). The start point is ``x_init`` or ``physics.A_dagger(y)``.

    Parameters
    ----------
    denoiser
        ``None`` (a :class:`UNet3D`), one ``nn.Module`` or a list of ``n_iter``
        modules (one per iteration, implies ``shared=False``). Modules whose ``forward`` needs a
        ``sigma`` (deepinv's ``DRUNet(dim=3, pretrained=None)``) are wrapped in a
        :class:`SigmaAdapter`; deepinv's ``UNet(dim=3)`` works as is.
    n_iter : int
        number of unrolled iterations ``K >= 1``.
    step_size : float
        initial step ``eta_k > 0``; ``eta_k = softplus(theta_k)`` with
        ``theta_k`` learned. Gradient descent on ``||A x - y||^2 / 2`` is stable for
        ``eta < 2 / L`` with ``L = ||A^T A||``, so take ``step_size ~ 1 / L`` (``1`` for a
        ``ConeBeamCT(..., normalize=True)``, whose ``||A^T A|| = 1``).
    shared : bool
        one denoiser for all iterations (``True``) or ``n_iter`` independent
        deep copies of it (``False``).
    learn_step : bool
        train the step sizes (otherwise they are fixed buffers).
    checkpoint : bool
        recompute each iteration in the backward pass
        (``torch.utils.checkpoint``, non re-entrant): activation memory of one iteration instead
        of ``K``, for one extra forward.
    amp
        run the denoiser under ``torch.autocast`` (``True``: bfloat16 on CPU, bfloat16 or
        float16 on CUDA; or a ``torch.dtype``); its output is cast back to the input dtype and the
        data step stays in the input precision. On the CPU, oneDNN's bfloat16 conv3d weight
        gradient (torch 2.14) has returned non-finite entries for 2x2x2 feature maps; train on
        the CPU in float32, or with ``torch.backends.mkldnn.flags(enabled=False)``.
    self_ensemble : str
        average each denoiser's answers over symmetries of the training data
        (:mod:`unrolled3d.models.ensemble`): ``"none"`` (default), ``"flips"`` (8 network calls per
        denoiser call) or ``"flips+conj"`` (16, two-channel complex images). An inference option: it
        is not saved with the weights.

    Shapes: ``y`` as ``physics`` measures, ``x`` ``[B, C, D, H, W]``.

    Examples
    --------
    >>> import torch
    >>> from unrolled3d.models import UNet3D, UnrolledPGD
    >>> from unrolled3d.physics import ConeBeamCT, standard_cone_beam
    >>> physics = ConeBeamCT(standard_cone_beam(8, 6), normalize=True)
    >>> net = UnrolledPGD(UNet3D(base=4, depth=1), n_iter=2)
    >>> net(physics.A(torch.rand(1, 1, 8, 8, 8)), physics).shape
    torch.Size([1, 1, 8, 8, 8])
    """

    def __init__(self, denoiser: nn.Module | Sequence[nn.Module] | None = None, n_iter: int = 5,
                 step_size: float = 1.0, shared: bool = True, learn_step: bool = True,
                 checkpoint: bool = False, amp: bool | torch.dtype = False, self_ensemble: str = "none") -> None:
        super().__init__()
        self.n_iter = integer("n_iter", n_iter, 1)
        step_size = real("step_size", step_size, positive=True)
        shared, learn_step = boolean("shared", shared), boolean("learn_step", learn_step)
        checkpoint = boolean("checkpoint", checkpoint)
        if not isinstance(amp, (bool, torch.dtype)):
            raise TypeError(f"amp must be a bool or a torch.dtype, got {amp!r}")
        if isinstance(amp, torch.dtype) and amp not in (torch.float16, torch.bfloat16):
            raise ValueError(f"amp dtype must be torch.float16 or torch.bfloat16, got {amp}")

        if isinstance(denoiser, (list, tuple, nn.ModuleList)):
            mods = list(denoiser)
            if shared and len(mods) != 1:
                raise ValueError(f"a list of {len(mods)} denoisers is one per iteration: pass shared=False "
                                 f"(or a single module for shared=True)")
            if not shared and len(mods) != self.n_iter:
                raise ValueError(f"shared=False needs one denoiser per iteration: got {len(mods)} for n_iter={self.n_iter}")
            mods = [_as_denoiser(m, f"denoiser[{i}]") for i, m in enumerate(mods)]
        else:
            base = UNet3D() if denoiser is None else _as_denoiser(denoiser, "denoiser")
            mods = [base] if shared else [base] + [copy.deepcopy(base) for _ in range(self.n_iter - 1)]
        self.shared = bool(shared)
        self.denoisers = nn.ModuleList(mods)

        theta = torch.full((self.n_iter,), _inv_softplus(step_size))
        self.learn_step = bool(learn_step)
        if self.learn_step:
            self.step_param = nn.Parameter(theta)
        else:
            self.register_buffer("step_param", theta)
        self.checkpoint = bool(checkpoint)
        self.amp = amp
        self.self_ensemble = choice("self_ensemble", self_ensemble, ensemble.SELF_ENSEMBLES)

    # ------------------------------------------------------------------ pieces
    @property
    def step_sizes(self) -> torch.Tensor:
        """The current ``eta_k = softplus(theta_k)``, shape ``(n_iter,)``."""
        return F.softplus(self.step_param)

    def denoiser(self, k: int) -> nn.Module:
        """The denoiser of iteration ``k``."""
        return self.denoisers[0 if self.shared else k]

    @staticmethod
    def data_gradient(x: torch.Tensor, y: torch.Tensor, physics) -> torch.Tensor:
        """``physics.data_gradient(x, y)`` for a problem in normal-equation form
        (:class:`unrolled3d.protocols.NormalEquationPhysics`), else ``A^T (A x - y)``."""
        if isinstance(physics, NormalEquationPhysics):
            return physics.data_gradient(x, y)
        return physics.A_adjoint(physics.A(x) - y)

    def _denoise(self, k: int, z: torch.Tensor) -> torch.Tensor:
        if self.self_ensemble != "none":
            group = ensemble.symmetries(self.self_ensemble, z.shape[1])
            return ensemble.self_ensemble(lambda v: self._network(k, v), z, group)
        return self._network(k, z)

    def _network(self, k: int, z: torch.Tensor) -> torch.Tensor:
        net = self.denoiser(k)
        if self.amp is False:
            return net(z)
        with torch.autocast(device_type=z.device.type, dtype=_autocast_dtype(z.device, self.amp)):
            out = net(z)
        return out.to(z.dtype)

    def iteration(self, k: int, x: torch.Tensor, y: torch.Tensor, physics) -> torch.Tensor:
        """One step ``D_k(x - eta_k grad f(x))``."""
        eta = F.softplus(self.step_param[k]).to(x.dtype)
        return self._denoise(k, x - eta * self.data_gradient(x, y, physics))

    # ------------------------------------------------------------------ forward
    def forward(self, y: torch.Tensor, physics, x_init: torch.Tensor | None = None, **kwargs) -> torch.Tensor:
        """Reconstruct ``[B, C, D, H, W]`` from ``y`` (start: ``x_init`` or ``physics.A_dagger(y)``)."""
        x = physics.A_dagger(y) if x_init is None else x_init
        use_ckpt = self.checkpoint and torch.is_grad_enabled()
        for k in range(self.n_iter):
            if use_ckpt:
                x = _checkpoint(self.iteration, k, x, y, physics, use_reentrant=False)
            else:
                x = self.iteration(k, x, y, physics)
        return x
