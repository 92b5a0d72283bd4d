"""Exact ``s_test`` for small tracked sets: the explicit Hessian and ``torch.linalg.solve``.

This is the ground truth LiSSA is tested against, and a usable method when only the final linear layer
(or a tiny head) is tracked.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.func import hessian

from interpret.cancellation import checkpoint
from interpret.influence.batches import ExampleStates
from interpret.influence.objective import mean_loss
from interpret.models import TrackedModel

MAX_EXACT_PARAMETERS = 6000
"""An explicit P x P Hessian in float64 beyond this is hundreds of MB and a slow solve."""


class TooManyParametersError(ValueError):
    """The tracked set is too large for an explicit Hessian."""


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
        block_hessian = hessian(lambda t, s=states, y=labels: mean_loss(tracked, t, s, y))(theta)
        total += block_hessian * (len(positions) / len(train))
    return total


def exact_s_test(hessian_matrix: torch.Tensor, v: torch.Tensor, damping: float) -> torch.Tensor:
    """``(H + damping I)^-1 v`` by a dense solve."""
    eye = torch.eye(hessian_matrix.shape[0], dtype=hessian_matrix.dtype, device=hessian_matrix.device)
    return torch.linalg.solve(hessian_matrix + damping * eye, v)
