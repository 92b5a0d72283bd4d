"""The training loss as a pure function of the flat tracked parameters, and its derivatives.

Gradients and per-example gradients are ``torch.func`` (``vmap`` over the tracked top only, see
``interpret.models``); Hessian-vector products are double backward (measured faster, see below).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.func import grad, vmap

from interpret.models import FrozenState, TrackedModel


def per_example_losses(
    tracked: TrackedModel, theta: torch.Tensor, state: FrozenState, labels: torch.Tensor
) -> torch.Tensor:
    """Cross-entropy of each example, ``[B]``."""
    return F.cross_entropy(tracked.logits(theta, state), labels, reduction="none")


def mean_loss(
    tracked: TrackedModel, theta: torch.Tensor, state: FrozenState, labels: torch.Tensor
) -> torch.Tensor:
    return per_example_losses(tracked, theta, state, labels).mean()


def loss_gradient(
    tracked: TrackedModel, theta: torch.Tensor, state: FrozenState, labels: torch.Tensor
) -> torch.Tensor:
    """Gradient of the mean loss of a batch with respect to ``theta`` (``v`` for a test batch)."""
    gradient: torch.Tensor = grad(lambda t: mean_loss(tracked, t, state, labels))(theta)
    return gradient


def hessian_vector_product(
    tracked: TrackedModel, theta: torch.Tensor, state: FrozenState, labels: torch.Tensor, vector: torch.Tensor
) -> torch.Tensor:
    """``H vector`` with ``H`` the Hessian of the batch's mean loss, by double backward.

    Reverse-over-reverse, not ``jvp(grad)``: on MiniLM's top two layers and one SST-2 sentence (CPU) it
    measured 53 ms against 85 ms for forward-over-reverse, and LiSSA spends its time here.
    """
    with torch.enable_grad():
        leaf = theta.detach().requires_grad_()
        (gradient,) = torch.autograd.grad(mean_loss(tracked, leaf, state, labels), leaf, create_graph=True)
        (product,) = torch.autograd.grad(gradient, leaf, grad_outputs=vector)
    return product


def per_example_gradients(
    tracked: TrackedModel, theta: torch.Tensor, state: FrozenState, labels: torch.Tensor
) -> torch.Tensor:
    """``[B, P]`` gradients of each example's loss; rows never mix (vmap over single examples).

    On the generic path the whole HF model runs, and ``vmap`` over rows fails on the data-dependent
    branches of its mask code, so each row is differentiated on its own (one backward per row)."""
    if tracked.generic and state.mask is not None:
        rows = [
            grad(lambda t, i=i: mean_loss(tracked, t, state.select([i]), labels[i : i + 1]))(theta)
            for i in range(len(state))
        ]
        return torch.stack(rows) if rows else theta.new_zeros((0, len(theta)))

    def one(hidden: torch.Tensor, mask: torch.Tensor | None, label: torch.Tensor) -> torch.Tensor:
        single = FrozenState(hidden[None], None if mask is None else mask[None])
        gradient: torch.Tensor = grad(lambda t: mean_loss(tracked, t, single, label[None]))(theta)
        return gradient

    mask_dim = None if state.mask is None else 0
    return vmap(one, in_dims=(0, mask_dim, 0))(state.hidden, state.mask, labels)
