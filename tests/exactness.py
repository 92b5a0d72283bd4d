"""Exactness checks that hold on any IEEE-754 machine, whatever its BLAS kernels or thread count.

Two float64 solves of one system agree only to the rounding of each, amplified by the system's
conditioning, and that rounding depends on the CPU (an AMD EPYC and an Intel Xeon order their dot products
differently). So a result that comes from a linear solve is checked by what defines it:

- ``assert_solves``: the normwise backward error (Rigal & Gaches)
  ``||A s - v|| / (||A|| ||s|| + ||v||)``, which a backward-stable solve keeps below a small multiple of
  ``n * eps`` on every machine, however ill-conditioned ``A`` is;
- ``assert_same_solution``: two answers to one system compared in the 2-norm, ``||a - b|| / ||b||``,
  against ``kappa(A)`` times that bound (the forward error of each is at most ``kappa`` times its backward
  error). The test states ``kappa``, computed here, in its failure message.

Element-wise tolerances stay for comparisons of the same arithmetic done in another order (pool against one
process, shard counts): those differ only by reassociated sums. They stay too where two formulas of one
quantity meet with no solve between them (autograd against a closed form, forward against reverse mode):
nothing amplifies their rounding, which is ``n * eps`` times the size of the sums, about 1e-13 relative at
the tests' sizes, four orders below their 1e-10 tolerances.
"""

from __future__ import annotations

import torch

EPS64 = torch.finfo(torch.float64).eps
# Higham's bound for LU with partial pivoting is gamma_n = n * eps / (1 - n * eps) times a growth factor
# that is O(1) in practice; 8 covers the growth factor and the rounding of forming A s itself.
SOLVE_SLACK = 8.0


def solve_tolerance(size: int) -> float:
    """The backward error a backward-stable float64 solve of a ``size x size`` system stays below:
    ``SOLVE_SLACK * size * eps``."""
    return SOLVE_SLACK * size * EPS64


def backward_error(matrix: torch.Tensor, solution: torch.Tensor, rhs: torch.Tensor) -> float:
    """``||A s - v|| / (||A||_2 ||s|| + ||v||)``: the smallest relative change to ``A`` and ``v`` that makes
    ``s`` an exact solution. Zero for an exact answer; machine-independent in size."""
    residual = matrix @ solution - rhs
    scale = torch.linalg.matrix_norm(matrix, ord=2) * solution.norm() + rhs.norm()
    return float(residual.norm() / scale)


def condition_number(matrix: torch.Tensor) -> float:
    """``kappa_2(A) = sigma_max / sigma_min``."""
    return float(torch.linalg.cond(matrix))


def assert_solves(matrix: torch.Tensor, solution: torch.Tensor, rhs: torch.Tensor, what: str = "s") -> None:
    """``solution`` solves ``matrix @ s = rhs`` to float64 rounding, checked by its backward error (see the
    module docstring); ``rhs`` may hold several right-hand sides as columns."""
    matrix, solution, rhs = matrix.double(), solution.double(), rhs.double()
    error, bound = backward_error(matrix, solution, rhs), solve_tolerance(matrix.shape[0])
    relative_residual = float((matrix @ solution - rhs).norm() / rhs.norm())
    assert error <= bound, (
        f"{what} does not solve the {matrix.shape[0]}-row system: backward error {error:.3e} > {bound:.3e} "
        f"(= {SOLVE_SLACK:g} * n * eps); ||A s - v|| / ||v|| = {relative_residual:.3e}"
    )


def same_solution_tolerance(matrix: torch.Tensor) -> float:
    """How far apart, in ``||a - b|| / ||b||``, two backward-stable solves of ``matrix`` may lie:
    each is within ``kappa * solve_tolerance`` of the exact answer, so twice that."""
    return 2 * condition_number(matrix.double()) * solve_tolerance(matrix.shape[0])


def map_amplification(through: torch.Tensor, solution: torch.Tensor) -> float:
    """``||G|| ||x|| / ||G x||``: how much the linear map ``G`` (training gradients turning an ``s_test``
    into scores, say) can enlarge the relative error of ``x``."""
    through, solution = through.double(), solution.double()
    image = (through @ solution).norm()
    return float(torch.linalg.matrix_norm(through, ord=2) * solution.norm() / image)


def assert_same_solution(
    got: torch.Tensor,
    expected: torch.Tensor,
    matrix: torch.Tensor,
    what: str = "result",
    amplification: float = 1.0,
) -> None:
    """``got`` and ``expected`` both come from solves of ``matrix``: they agree in the 2-norm within the
    tolerance their conditioning implies. Where both are a linear map ``G`` of the solves (scores), pass
    ``amplification=map_amplification(G, x)``."""
    got, expected = torch.as_tensor(got).double(), torch.as_tensor(expected).double()
    kappa = condition_number(matrix.double())
    bound = amplification * same_solution_tolerance(matrix)
    gap = float((got - expected).norm() / expected.norm())
    assert gap <= bound, (
        f"{what} differs by {gap:.3e} in norm, above {bound:.3e} = 2 * kappa * {SOLVE_SLACK:g} * n * eps"
        f" * {amplification:.3g} (kappa = {kappa:.3e}, n = {matrix.shape[0]}, map amplification)"
    )


def assert_equal_up_to_rounding(
    got: torch.Tensor, expected: torch.Tensor, magnitude: torch.Tensor, terms: int, what: str = "result"
) -> None:
    """``got`` and ``expected`` are one quantity computed by two orders of float64 sums (an algebraic
    identity, no solve): each is within ``gamma_terms * magnitude`` of the exact value, where ``magnitude``
    is the same computation on absolute values (``|X| @ |y|``, the standard dot-product error bound), so
    they agree in the 2-norm within twice ``SOLVE_SLACK * terms * eps * ||magnitude||``."""
    got, expected = torch.as_tensor(got).double(), torch.as_tensor(expected).double()
    bound = 2 * solve_tolerance(terms) * float(torch.as_tensor(magnitude).double().norm())
    gap = float((got - expected).norm())
    assert gap <= bound, f"{what} differs by {gap:.3e} in norm, above the rounding bound {bound:.3e}"


def finite_difference_hvp(
    loss, theta: torch.Tensor, vector: torch.Tensor, step: float = 1e-5
) -> torch.Tensor:
    """``H v`` by central differences of the gradient, ``(g(t + h v) - g(t - h v)) / 2h``: an independent
    reference for Hessians (error ``O(h^2)`` from the third derivative plus ``eps / h`` rounding, about
    1e-10 relative in float64 at ``h = 1e-5``)."""
    gradient = torch.func.grad(loss)
    unit = vector / vector.norm()
    return (gradient(theta + step * unit) - gradient(theta - step * unit)) / (2 * step) * vector.norm()
