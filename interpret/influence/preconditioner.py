"""Preconditioners of the gradient index: ``C + damping I`` approximating ``H + damping I`` in the
projected space, inverted once, offline.

With projected gradients ``g~ = R g`` and a curvature ``C`` in that space, a training example's stored
vector is ``u_z = (C + damping I)^-1 g~_z`` and its influence on a test point is

    I(z, z_test) = -g~_test . u_z   (positive = harmful, as everywhere in this package)

so a query is one inner-product search. The curvatures:

* ``fisher``: the empirical Fisher ``F = 1/N sum_z g~_z g~_z^T`` of the stored gradients themselves (free:
  it is accumulated while the gradients are computed). For cross-entropy it approximates the Gauss-Newton
  part of the Hessian, which is positive semi-definite.
* ``identity``: ``C = 0``; ``u_z = g~_z / damping`` (a plain, scaled gradient similarity: what you get
  with no curvature at all, kept as the baseline the benchmark compares against).
* ``hessian``: ``R H R^T`` from the explicit training Hessian (small tracked sets only). With no
  projection (``R = I``) the scores equal the exact influence, which is what the tests check.

The same inverse also gives a whole ``s_test`` (:func:`subspace_s_test`, the ``index`` solver of a rerank):
curvature ``C`` inside the index's subspace, none outside it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from interpret.influence.projection import Projection, Projector

PRECONDITIONERS = ("fisher", "identity", "hessian")


@dataclass(frozen=True, eq=False)
class IndexCurvature:
    """What the ``index`` solver takes from a ``kfac`` gradient index (:func:`subspace_s_test`)."""

    projection: Projection
    inverse: np.ndarray
    """``(C + damping I)^-1`` ``[d, d]``, float32."""
    damping: float
    digest: str
    """SHA-256 of the bases and the inverse together: two indexes with the same bases can still differ in
    damping or preconditioner, so this (not the projection's digest) names the curvature."""


def second_moment(gradients: torch.Tensor) -> torch.Tensor:
    """``sum_z g_z g_z^T`` of a block ``[B, d]``, in float64 (blocks are summed, then divided by N)."""
    block = gradients.double()
    return block.T @ block


def inverse_damped(curvature: torch.Tensor, damping: float) -> torch.Tensor:
    """``(C + damping I)^-1`` of a symmetric ``C`` (float64, symmetrised).

    Cholesky when ``C + damping I`` is positive definite (always for the Fisher); a network's Hessian can
    have eigenvalues below ``-damping``, and then the inverse is taken by LU, as the exact solve does."""
    if not damping > 0:
        raise ValueError(f"damping must be > 0, got {damping!r}")
    curvature = curvature.double()
    eye = torch.eye(curvature.shape[0], dtype=torch.float64, device=curvature.device)
    damped = 0.5 * (curvature + curvature.T) + damping * eye
    factor, info = torch.linalg.cholesky_ex(damped)
    inverse = torch.cholesky_inverse(factor) if int(info) == 0 else torch.linalg.inv(damped)
    return 0.5 * (inverse + inverse.T)


def precondition(gradients: torch.Tensor, inverse: torch.Tensor) -> torch.Tensor:
    """``u_z = (C + damping I)^-1 g~_z`` for each row of ``[B, d]`` (``inverse`` is symmetric)."""
    return (gradients.double() @ inverse).to(gradients.dtype)


def projected_hessian(hessian: torch.Tensor, projection: torch.Tensor) -> torch.Tensor:
    """``R H R^T``: the Hessian seen through the projection (``R [d, P]``, ``H [P, P]``)."""
    return projection.double() @ hessian.double() @ projection.double().T


def gradient_index_scores(test_gradient: torch.Tensor, stored: torch.Tensor) -> torch.Tensor:
    """``I(z, z_test) = -g~_test . u_z`` for every stored row ``u_z`` (positive = harmful)."""
    return -(stored.double() @ test_gradient.double())


def subspace_s_test(
    v: torch.Tensor, projector: Projector, inverse: torch.Tensor, damping: float
) -> torch.Tensor:
    """``s_test`` from the index's own curvature:

        s = v / damping + R^T [(C + damping I)^-1 - I / damping] R v

    With orthonormal rows (``R R^T = I``, as the ``kfac`` projection has) this is exactly
    ``(R^T C R + damping I)^-1 v``: the inverse of a Hessian whose curvature is ``C`` inside the index's
    subspace and zero outside it. Unlike the index's own score, the part of the gradients outside the
    subspace is kept (at weight ``1 / damping``), so scoring candidates with their exact gradients against
    ``s`` recovers what the projection dropped. ``projector`` gives ``R`` (``project_vector``) and ``R^T``
    (``unproject``)."""
    projected = projector.project_vector(v)
    inside = inverse.to(projected.dtype) @ projected - projected / damping
    return v / damping + projector.unproject(inside)
