"""Exact ``s_test`` for small tracked sets: the explicit Hessian and ``torch.linalg.solve``.

This is the ground truth LiSSA is tested against, and a usable method when only the final linear layer
(or a tiny head) is tracked.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np
import torch

from interpret.cancellation import checkpoint
from interpret.influence.batches import ExampleStates
from interpret.influence.objective import mean_loss
from interpret.models import FrozenState, TrackedModel

MAX_EXACT_PARAMETERS = 6000
"""An explicit P x P Hessian in float64 beyond this is hundreds of MB and a slow solve."""


class TooManyParametersError(ValueError):
    """The tracked set is too large for an explicit Hessian."""


def block_hessian(loss: Callable[[torch.Tensor], torch.Tensor], theta: torch.Tensor) -> torch.Tensor:
    """``d^2 loss / d theta^2``, one column per double backward: ``H e_i = d(grad . e_i)/d theta``.

    Not ``torch.func.hessian``: its ``vmap`` over tangents gives wrong cross terms wherever a LayerNorm's
    weight and its input both depend on ``theta`` (any tracked block, ModernBERT's head; torch 2.13,
    measured against finite differences in ``tests/test_influence_math.py``), while the unbatched double
    backward agrees with them to 1e-8."""
    with torch.enable_grad():
        leaf = theta.detach().requires_grad_()
        (gradient,) = torch.autograd.grad(loss(leaf), leaf, create_graph=True)
        eye = torch.eye(len(theta), dtype=theta.dtype, device=theta.device)
        columns = [torch.autograd.grad(gradient, leaf, e, retain_graph=True)[0] for e in eye]
    hessian = torch.stack(columns, dim=1)
    return 0.5 * (hessian + hessian.T)


def training_hessian(
    tracked: TrackedModel, theta: torch.Tensor, train: ExampleStates, block_size: int = 64
) -> torch.Tensor:
    """Hessian of the mean training loss over every training example, ``[P, P]``."""
    if tracked.num_parameters > MAX_EXACT_PARAMETERS:
        raise TooManyParametersError(
            f"exact s_test needs a {tracked.num_parameters}^2 Hessian; track fewer parameters "
            f"(tracked_layers='classifier', at most {MAX_EXACT_PARAMETERS}) or use LiSSA"
        )
    total = torch.zeros(
        tracked.num_parameters, tracked.num_parameters, dtype=theta.dtype, device=theta.device
    )
    for positions, states, labels in train.iter_blocks(np.arange(len(train)), block_size):
        checkpoint()
        total += block_hessian(functools.partial(_block_loss, tracked, states, labels), theta) * (
            len(positions) / len(train)
        )
    return total


def _block_loss(
    tracked: TrackedModel, states: FrozenState, labels: torch.Tensor, theta: torch.Tensor
) -> torch.Tensor:
    return mean_loss(tracked, theta, states, labels)


def exact_s_test(hessian_matrix: torch.Tensor, v: torch.Tensor, damping: float) -> torch.Tensor:
    """``(H + damping I)^-1 v`` by a dense solve."""
    eye = torch.eye(hessian_matrix.shape[0], dtype=hessian_matrix.dtype, device=hessian_matrix.device)
    solution: torch.Tensor = torch.linalg.solve(hessian_matrix + damping * eye, v)
    return solution
