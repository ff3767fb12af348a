"""
The deepinv swap-in: ``TomographyWithAstra`` without ASTRA
==========================================================

deepinv's ``TomographyWithAstra`` needs ASTRA and a GPU for 3D cone-beam scans.
``unrolled3d.physics.TomographyWithAstra`` takes the same arguments and measurement layout
(``[B, C, rows, angles, cols]``, deepinv's angle sign) and runs on the matched projector, on the
CPU too: a deepinv script changes one import line. Then deepinv's own tools run on it.
"""
import deepinv as dinv
import torch

from unrolled3d.physics import TomographyWithAstra  # was: from deepinv.physics import TomographyWithAstra

torch.manual_seed(0)
device = "cuda" if torch.cuda.is_available() else "cpu"
physics = TomographyWithAstra(img_size=(32, 32, 32), angles=60, n_detector_pixels=(48, 48),
                              angular_range=(0, 360), geometry_type="conebeam",
                              geometry_parameters={"source_radius": 120.0, "detector_radius": 60.0},
                              normalize=True, device=device)
x = torch.zeros(1, 1, 32, 32, 32, device=device)
x[..., 8:24, 10:22, 6:26] = 1.0
y = physics(x)                                   # [1, 1, rows, angles, cols]
print("measurements", tuple(y.shape))

# %%
# FDK and least squares (deepinv's default pseudo-inverse), scored with deepinv's PSNR.
x_fdk = physics.A_dagger(y, fbp=True)
x_ls = physics.A_dagger(y, max_iter=30)
metric = dinv.metric.PSNR(max_pixel=1.0)
p_fdk, p_ls = metric(x_fdk, x).item(), metric(x_ls, x).item()
print(f"FDK {p_fdk:.1f} dB, least squares {p_ls:.1f} dB")
assert p_ls > 20.0 and p_fdk > 15.0

# %%
# deepinv's generic tools: the operator norm (1 after ``normalize=True``) and the adjoint test.
norm = float(physics.compute_norm(torch.randn_like(x), max_iter=100, tol=1e-3, verbose=False))
adj = float(physics.adjointness_test(torch.randn_like(x)))
print(f"||A^T A|| = {norm:.3f}, adjointness {adj:.1e}")
assert abs(norm - 1.0) < 0.05 and abs(adj) < 1e-4

# %%
# A deepinv reconstruction algorithm on it: proximal gradient descent with a total-variation
# prior (deepinv's ``optim`` module), started from FDK.
model = dinv.optim.optim_builder(iteration="PGD", prior=dinv.optim.TVPrior(n_it_max=10),
                                 data_fidelity=dinv.optim.L2(), max_iter=15,
                                 params_algo={"stepsize": 1.0, "lambda": 0.02})
with torch.no_grad():
    x_tv = model(y, physics, init=x_fdk)
p_tv = metric(x_tv, x).item()
print(f"TV (PGD, 15 iterations) {p_tv:.1f} dB")
assert p_tv > p_fdk
