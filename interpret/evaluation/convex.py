"""The convex head: the final linear layer of a classifier as L2-regularised softmax regression on frozen
features, where influence functions are exact up to second order and retraining is cheap.

With features ``x`` (the input of the final linear layer, what the kNN index stores), augmented
``x~ = [x, 1]`` for the bias, and parameters ``W~ [K, D+1]`` (``W`` and ``b`` side by side), the objective
over row weights ``w_i`` is

    f(W~) = 1/N sum_i w_i CE(W~ x~_i, y_i) + damping/2 ||W~||^2

with ``N`` fixed to the training set's size: removing a row sets its weight to 0 and keeps the ``1/N``,
which is exactly the ``epsilon = -1/N`` up-weighting Koh & Liang's influence linearises (retraining on
``N-1`` rows with ``1/(N-1)`` would also shrink the regulariser's relative weight, an offset common to
every leave-one-out retrain and as large as one row's effect). The damping of the influence solve is this
L2 term, so ``(H + damping I)`` below is the objective's own Hessian. Gradient and Hessian are closed form:

    grad_i = (p_i - e_{y_i}) outer x~_i
    H = 1/N sum_i w_i (diag(p_i) - p_i p_i^T) kron x~_i x~_i^T + damping I

and the influence of training row ``z`` on a test loss is ``I(z, t) = -grad_t^T (H)^-1 grad_z``
(positive = harmful, as in ``interpret.influence.scoring``). Everything runs in float64 numpy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.linalg import cho_solve
from scipy.special import log_softmax, softmax


def augment(features: np.ndarray) -> np.ndarray:
    """``[x, 1]``: the bias as one more input column (float64)."""
    features = np.asarray(features, dtype=np.float64)
    return np.hstack([features, np.ones((len(features), 1))])


def residuals(weights: np.ndarray, inputs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """``p_i - e_{y_i}`` for each row ``[N, K]``: the loss gradient with respect to the logits."""
    probabilities = softmax(inputs @ weights.T, axis=1)
    probabilities[np.arange(len(labels)), labels] -= 1.0
    return probabilities


def losses(weights: np.ndarray, inputs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Cross-entropy of each row ``[N]``."""
    return -log_softmax(inputs @ weights.T, axis=1)[np.arange(len(labels)), labels]


def objective_gradient(
    weights: np.ndarray, inputs: np.ndarray, labels: np.ndarray, row_weights: np.ndarray, damping: float
) -> np.ndarray:
    """``grad f = 1/N sum_i w_i (p_i - e_y) x~_i^T + damping W~``, shaped ``[K, D+1]``."""
    scaled = residuals(weights, inputs, labels) * (row_weights / len(inputs))[:, None]
    return scaled.T @ inputs + damping * weights


def objective_hessian(
    weights: np.ndarray, inputs: np.ndarray, row_weights: np.ndarray, damping: float
) -> np.ndarray:
    """``H`` of ``f`` over ``vec(W~)`` (row-major, ``[K(D+1), K(D+1)]``): block ``(k, l)`` is
    ``1/N sum_i w_i p_ik (delta_kl - p_il) x~_i x~_i^T``, plus ``damping I``."""
    classes, width = weights.shape
    probabilities = softmax(inputs @ weights.T, axis=1)
    scale = row_weights / len(inputs)
    hessian = np.zeros((classes * width, classes * width))
    for k in range(classes):
        for col in range(k, classes):
            curvature = probabilities[:, k] * ((k == col) - probabilities[:, col]) * scale
            block = (inputs * curvature[:, None]).T @ inputs
            hessian[k * width : (k + 1) * width, col * width : (col + 1) * width] = block
            hessian[col * width : (col + 1) * width, k * width : (k + 1) * width] = block.T
    return hessian + damping * np.eye(classes * width)


class NotConvergedError(ArithmeticError):
    """Newton's method did not reach the gradient tolerance."""


def fit(
    inputs: np.ndarray,
    labels: np.ndarray,
    num_labels: int,
    damping: float,
    row_weights: np.ndarray | None = None,
    start: np.ndarray | None = None,
    hessian: np.ndarray | None = None,
    tolerance: float = 1e-12,
    max_steps: int = 200,
) -> np.ndarray:
    """The minimiser of ``f`` (``[K, D+1]``) by Newton's method to ``||grad f|| <= tolerance``.

    Given a ``hessian`` (e.g. the full set's, for a retrain that removes a few rows from a warm ``start``)
    it is kept fixed and only gradients are recomputed: a linear rate as fast as the two Hessians are
    close, at the price of one matrix product per step; it is refreshed if a step stops shrinking the
    gradient. The objective is strictly convex (damping > 0), so the minimiser is unique."""
    if not damping > 0:
        raise ValueError(f"damping must be > 0 for a strictly convex head, got {damping!r}")
    row_weights = np.ones(len(inputs)) if row_weights is None else np.asarray(row_weights, np.float64)
    weights = np.zeros((num_labels, inputs.shape[1])) if start is None else start.copy()
    factor = None if hessian is None else np.linalg.cholesky(hessian)
    previous = np.inf
    for _ in range(max_steps):
        gradient = objective_gradient(weights, inputs, labels, row_weights, damping)
        norm = float(np.linalg.norm(gradient))
        if norm <= tolerance:
            return weights
        if factor is None or norm > 0.5 * previous:
            factor = np.linalg.cholesky(objective_hessian(weights, inputs, row_weights, damping))
        previous = norm
        step = _cholesky_solve(factor, gradient.reshape(-1)).reshape(weights.shape)
        weights = _damped_step(weights, step, inputs, labels, row_weights, damping)
    raise NotConvergedError(
        f"Newton stopped at ||grad|| = {norm:.3g} > {tolerance:g} after {max_steps} steps; raise the damping"
    )


def _cholesky_solve(factor: np.ndarray, vector: np.ndarray) -> np.ndarray:
    return cho_solve((factor, True), vector)


def objective(weights, inputs, labels, row_weights, damping) -> float:
    """``f`` itself (the line search needs it)."""
    data = (row_weights * losses(weights, inputs, labels)).sum() / len(inputs)
    return float(data + 0.5 * damping * (weights**2).sum())


def _damped_step(weights, step, inputs, labels, row_weights, damping) -> np.ndarray:
    """A Newton step, halved until the objective does not rise (far from the optimum a full step can)."""
    current = objective(weights, inputs, labels, row_weights, damping)
    length = 1.0
    for _ in range(30):
        candidate = weights - length * step
        if objective(candidate, inputs, labels, row_weights, damping) <= current + 1e-15 * abs(current):
            return candidate
        length /= 2
    return weights - length * step


@dataclass
class ConvexHead:
    """A fitted head: its weights, the training inputs and the inverse of its Hessian at the optimum."""

    inputs: np.ndarray
    """``[N, D+1]`` augmented training features."""
    labels: np.ndarray
    num_labels: int
    damping: float
    weights: np.ndarray
    hessian: np.ndarray

    @classmethod
    def train(cls, features: np.ndarray, labels: np.ndarray, num_labels: int, damping: float) -> ConvexHead:
        inputs, labels = augment(features), np.asarray(labels, dtype=np.int64)
        weights = fit(inputs, labels, num_labels, damping)
        hessian = objective_hessian(weights, inputs, np.ones(len(inputs)), damping)
        return cls(inputs, labels, num_labels, damping, weights, hessian)

    @property
    def num_examples(self) -> int:
        return len(self.inputs)

    def retrain(self, row_weights: np.ndarray) -> np.ndarray:
        """The optimum for other row weights (0 removes a row), from this one's weights and Hessian."""
        return fit(
            self.inputs,
            self.labels,
            self.num_labels,
            self.damping,
            row_weights,
            start=self.weights,
            hessian=self.hessian,
        )

    def test_losses(self, weights: np.ndarray, features: np.ndarray, labels: np.ndarray) -> np.ndarray:
        return losses(weights, augment(features), np.asarray(labels, dtype=np.int64))

    def s_test(self, features: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """``H^-1 grad_t`` for each test row, ``[T, K, D+1]``."""
        inputs = augment(features)
        gradients = residuals(self.weights, inputs, np.asarray(labels, dtype=np.int64))
        per_test = np.einsum("tk,td->tkd", gradients, inputs).reshape(len(inputs), -1)
        solved = np.linalg.solve(self.hessian, per_test.T).T
        return solved.reshape(len(inputs), self.num_labels, -1)

    def influence(self, features: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """``I(z, t) = -grad_t^T H^-1 grad_z`` for every test row ``t`` and training row ``z``: ``[T, N]``.

        ``grad_z = r_z outer x~_z`` is never materialised: ``grad_z . S = r_z . (S x~_z)``."""
        solved = self.s_test(features, labels)
        train_residuals = residuals(self.weights, self.inputs, self.labels)
        scores = np.empty((len(solved), self.num_examples))
        for position, vector in enumerate(solved):
            scores[position] = -((self.inputs @ vector.T) * train_residuals).sum(axis=1)
        return scores

    def self_influence(self) -> np.ndarray:
        """``grad_z^T H^-1 grad_z`` of every training row ``[N]`` (how much a row pulls on its own loss)."""
        width = self.inputs.shape[1]
        inverse = np.linalg.inv(self.hessian)
        train_residuals = residuals(self.weights, self.inputs, self.labels)
        total = np.zeros(self.num_examples)
        for k in range(self.num_labels):
            for col in range(self.num_labels):
                block = inverse[k * width : (k + 1) * width, col * width : (col + 1) * width]
                quadratic = ((self.inputs @ block) * self.inputs).sum(axis=1)
                total += train_residuals[:, k] * train_residuals[:, col] * quadratic
        return total
