"""The machine-independent exactness checks of ``tests/exactness.py`` pass exact answers on any thread count
and are not vacuous: an answer off by 1e-6 fails them."""

import pytest
import torch

from tests.exactness import (
    assert_equal_up_to_rounding,
    assert_same_solution,
    assert_solves,
    condition_number,
    solve_tolerance,
)


def _system(size: int, kappa: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded symmetric positive definite ``A`` with condition number ``kappa`` and a right-hand side."""
    generator = torch.Generator().manual_seed(seed)
    basis, _ = torch.linalg.qr(torch.randn(size, size, generator=generator, dtype=torch.float64))
    spectrum = torch.logspace(0, torch.log10(torch.tensor(kappa)).item(), size, dtype=torch.float64)
    matrix = basis @ torch.diag(spectrum) @ basis.T
    return 0.5 * (matrix + matrix.T), torch.randn(size, generator=generator, dtype=torch.float64)


def _perturbed(solution: torch.Tensor, relative: float, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return solution * (1 + relative * torch.randn(solution.shape, generator=generator, dtype=solution.dtype))


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("kappa", [5.0, 1e8])
def test_a_solve_passes_and_a_perturbed_one_fails(threads, kappa):
    matrix, rhs = _system(600, kappa)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        solution = torch.linalg.solve(matrix, rhs)
        by_cholesky = torch.cholesky_solve(rhs[:, None], torch.linalg.cholesky(matrix))[:, 0]
    finally:
        torch.set_num_threads(before)
    assert condition_number(matrix) == pytest.approx(kappa, rel=1e-3)
    assert_solves(matrix, solution, rhs)
    assert_solves(matrix, by_cholesky, rhs)
    assert_same_solution(by_cholesky, solution, matrix)
    with pytest.raises(AssertionError, match="backward error"):
        assert_solves(matrix, _perturbed(solution, 1e-6), rhs)
    if kappa < 1e4:  # 2 kappa n eps is far below 1e-6 only for a well-conditioned system
        with pytest.raises(AssertionError, match="kappa"):
            assert_same_solution(_perturbed(solution, 1e-6), solution, matrix)


def test_the_solve_tolerance_follows_the_size():
    assert solve_tolerance(2530) == pytest.approx(8 * 2530 * torch.finfo(torch.float64).eps)
    assert solve_tolerance(2530) < 1e-11  # far below the 1e-6 perturbations the checks must catch


def test_reassociated_sums_agree_to_rounding_and_a_wrong_one_does_not():
    generator = torch.Generator().manual_seed(2)
    matrix = torch.randn(200, 3000, generator=generator, dtype=torch.float64)
    vector = torch.randn(3000, generator=generator, dtype=torch.float64)
    blocked = sum(matrix[:, i : i + 128] @ vector[i : i + 128] for i in range(0, 3000, 128))
    magnitude = matrix.abs() @ vector.abs()
    assert_equal_up_to_rounding(blocked, matrix @ vector, magnitude, 3000)
    with pytest.raises(AssertionError, match="rounding bound"):
        assert_equal_up_to_rounding(_perturbed(blocked, 1e-6), matrix @ vector, magnitude, 3000)
