"""Per-example gradients of the tracked linear layers, compressed by a factored projection (random, or
``kfac``: fitted to the data, the default).

For a linear layer ``y_t = W a_t + b`` applied at tokens ``t``, one example's gradient is
``G = sum_t delta_t [a_t; 1]^T`` (``delta_t = dL/dy_t``; the bias is the weight of a constant input 1).
We never form ``G``: with seeded Gaussian matrices ``P_out [k_out, d_out]`` and ``P_in [k_in, d_in + 1]``
(entries ``N(0, 1/k)``, so inner products are preserved in expectation),

    P_out G P_in^T = sum_t (P_out delta_t) (P_in [a_t; 1])^T,

a ``k_out x k_in`` matrix from the layer's input activations and output gradients, each projected first
(LoGra, Choe et al. 2024; Bergson). Flattened row-major it is ``(P_out (x) P_in) vec(G)``, so the whole
projection is one linear map ``R`` of the flat tracked gradient (:meth:`Projector.dense_matrix`, for tests).
A side no wider than the rank is kept whole (no projection: the classifier's 2 outputs are exact).

Which projection (``kind``): ``random`` draws ``P_out`` and ``P_in`` as above; ``kfac`` takes them from the
data instead: the top eigenvectors of each layer's two Kronecker factors, ``A = sum_t [a_t; 1][a_t; 1]^T``
(input activations) and ``S = sum_t delta_t delta_t^T`` (output gradients), summed over the tokens of a
seeded sample of training rows (:meth:`Projector.factors`, :func:`eigen_bases`). A gradient
``sum_t delta_t a_t^T`` lies mostly in the span of those eigenvectors, and the curvature the preconditioner
inverts is concentrated there too, so a rank-16 ``kfac`` projection keeps far more of each influence score
than a Gaussian one of the same width (``benchmarks/gradient_index.py`` measures both; LoGra initialises
its projection the same way). Its rows are orthonormal: it keeps the top subspace exactly and drops the rest.

Which parameters: every ``nn.Linear`` (and transformers' ``Conv1D``) weight and bias in the tracked set.
A module called more than once per forward (ALBERT's shared layer) gets the sum of its calls' gradients.
Other parameters (embeddings, relative-position tables) are dropped by the index. Normalisation layers'
scales and biases (LayerNorm, bias-free LayerNorm, RMSNorm; 0.08% of MiniLM's tracked set) are dropped by
the index (their coordinates of ``R`` are zero; ``benchmarks/gradient_index.py`` measures their share of
the gradient norm), or kept whole with ``layer_norms=True``: with ``rank=None`` as well, the
"projection" is then a permutation of the full tracked gradient, which is how the benchmark's reference
full scan gets every exact per-example gradient from one batched backward instead of a ``vmap``.
"""

from __future__ import annotations

import functools
import hashlib
import operator
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from interpret.concurrency import lock_of
from interpret.influence.objective import per_example_losses
from interpret.models import FrozenState, TrackedModel, is_linear, linear_widths

MAX_IDENTITY_DIM = 1 << 16
"""An unprojected (``rank=None``) gradient wider than this is refused: it is meant for tiny models."""


@dataclass
class LinearSlot:
    """One tracked linear layer: where its weight and bias sit in ``theta`` and its two projections."""

    name: str
    module: nn.Module
    """An ``nn.Linear`` (weight ``[out, in]``) or transformers' ``Conv1D`` (weight ``[in, out]``)."""
    weight_offset: int
    bias_offset: int | None
    project_out: torch.Tensor | None
    """``[k_out, d_out]``, or ``None``: the output side is kept whole."""
    project_in: torch.Tensor | None
    """``[k_in, d_in + 1]`` (the last column acts on the bias input; ``d_in`` without a bias), or
    ``None``: kept whole."""
    keep: torch.Tensor | None = None
    """The coordinates of the ``k_out x k_in`` grid (flat, row-major, ascending) that are kept, or ``None``:
    all of them (:func:`top_coordinates`)."""

    @property
    def d_in(self) -> int:
        return linear_widths(self.module)[0]

    @property
    def d_out(self) -> int:
        return linear_widths(self.module)[1]

    @property
    def transposed(self) -> bool:
        """The weight is stored ``[in, out]`` (``Conv1D``): its flat coordinates run over ``G^T``."""
        return not isinstance(self.module, nn.Linear)

    def weight_view(self, flat: torch.Tensor) -> torch.Tensor:
        """The slot's weight coordinates of a flat vector as ``[d_out, d_in]``, whatever the storage."""
        weight = flat[self.weight_offset : self.weight_offset + self.d_out * self.d_in]
        return weight.view(self.d_in, self.d_out).T if self.transposed else weight.view(self.d_out, self.d_in)

    @property
    def in_width(self) -> int:
        """Input columns of ``G``: ``d_in``, plus one for the bias when the layer has one."""
        return self.d_in + (self.bias_offset is not None)

    @property
    def k_out(self) -> int:
        return self.d_out if self.project_out is None else self.project_out.shape[0]

    @property
    def k_in(self) -> int:
        return self.in_width if self.project_in is None else self.project_in.shape[0]

    @property
    def grid(self) -> int:
        return self.k_out * self.k_in

    @property
    def dim(self) -> int:
        return self.grid if self.keep is None else len(self.keep)


@dataclass
class NormSlot:
    """One tracked normalisation layer kept whole: ``y = w * n(x) + b`` (LayerNorm, RMSNorm, a bias-free
    LayerNorm) or ``y = (1 + w) * n(x)`` (Gemma's RMSNorm); where its scale (and bias, if any) sit."""

    name: str
    module: nn.Module
    weight_offset: int
    bias_offset: int | None

    @property
    def width(self) -> int:
        weight: torch.Tensor = self.module.weight  # type: ignore[assignment]  # a linear layer's
        return int(weight.shape[0])

    @property
    def dim(self) -> int:
        return self.width * (1 + (self.bias_offset is not None))

    def coordinates(self) -> list[int]:
        """Offsets of the flat coordinates this slot keeps, in its projected order (scale, then bias)."""
        return [self.weight_offset] + ([] if self.bias_offset is None else [self.bias_offset])


def is_norm(module: nn.Module) -> bool:
    """A normalisation layer with an element-wise scale: ``nn.LayerNorm``/``nn.RMSNorm`` or a family's own
    (``LlamaRMSNorm``, ``T5LayerNorm``...), told by its name and a 1-D ``weight`` as wide as its input."""
    if isinstance(module, nn.LayerNorm | nn.RMSNorm):
        return module.weight is not None
    weight = getattr(module, "weight", None)
    return "norm" in type(module).__name__.lower() and isinstance(weight, torch.Tensor) and weight.dim() == 1


@dataclass(frozen=True, eq=False)
class Projection:
    """Everything a worker needs to rebuild an index's projection: the rank and seed of the Gaussian sides,
    or the fitted ``kfac`` bases (``"<layer>:out"`` / ``"<layer>:in"`` -> ``[k, width]`` float32 rows; the
    sides no wider than the rank are kept whole and absent), with, when only some coordinates of each
    layer's ``k_out x k_in`` grid are kept, ``"<layer>:keep"`` -> their flat indices (int64, ascending; one
    entry for every layer; :func:`top_coordinates`). ``key`` tells projections apart cheaply."""

    rank: int | None
    seed: int = 0
    bases: dict[str, np.ndarray] | None = None
    digest: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if self.bases is not None and not self.digest:
            object.__setattr__(self, "digest", bases_digest(self.bases))

    @property
    def kind(self) -> str:
        return "random" if self.bases is None else "kfac"

    @property
    def key(self) -> tuple[object, ...]:
        return (self.rank, self.seed, self.digest)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Projection) and self.key == other.key

    def __hash__(self) -> int:
        return hash(self.key)


def bases_digest(bases: dict[str, np.ndarray]) -> str:
    """SHA-256 over the bases' names, shapes and float32 bytes (the manifest records it; a load checks it)."""
    digest = hashlib.sha256()
    for name in sorted(bases):
        array = np.ascontiguousarray(bases[name], dtype=np.float32)
        digest.update(f"{name}{array.shape}".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


KEEP_SUFFIX = ":keep"
"""The key suffix of a layer's kept grid coordinates among a :class:`Projection`'s bases."""


def keeps_part_of_grids(bases: dict[str, np.ndarray] | None) -> bool:
    """Whether the bases keep only some coordinates of each layer's grid."""
    return bases is not None and any(name.endswith(KEEP_SUFFIX) for name in bases)


def top_coordinates(second_moments: np.ndarray, grids: dict[str, int], dim: int) -> dict[str, np.ndarray]:
    """The ``dim`` grid coordinates of largest second moment ``E[g_c^2]`` over all layers together:
    ``{"<layer>:keep": flat indices into the layer's grid, ascending}`` for every layer of ``grids`` (``layer
    -> k_out * k_in`` cells, in the order ``second_moments`` runs over them: one projected gradient's
    coordinates), possibly none kept.

    In the ``kfac`` eigenbasis a coordinate ``c = (i, j)`` is the gradient's component along the outer product
    of the ``i``-th output and ``j``-th input eigenvectors, and its second moment is the Fisher's diagonal
    there (EK-FAC's corrected eigenvalue, George et al. 2018). A score ``g_t . (F + d I)^-1 g_z`` gets
    ``g_t,c g_z,c / (F_cc + d)`` from each coordinate the Fisher nearly diagonalises, so the coordinates
    with the smallest ``E[g_c^2]`` add the least: a fixed budget goes to the largest, whichever layer and
    whatever rank pair they come from, not to a square ``k x k`` block per layer. Ties go to the earlier
    layer and coordinate."""
    moments = np.asarray(second_moments, dtype=np.float64).ravel()
    total = sum(grids.values())
    if len(moments) != total:
        raise ValueError(f"{len(moments)} second moments for grids of {total} cells")
    if not 1 <= dim <= total:
        raise ValueError(f"keep {dim} coordinates of {total}: choose between 1 and {total}")
    chosen = np.zeros(total, dtype=bool)
    chosen[np.argsort(-moments, kind="stable")[:dim]] = True
    ends = np.cumsum(list(grids.values()))
    return {
        name + KEEP_SUFFIX: np.flatnonzero(chosen[end - cells : end]).astype(np.int64)
        for (name, cells), end in zip(grids.items(), ends, strict=True)
    }


def eigen_bases(factors: dict[str, torch.Tensor], rank: int) -> dict[str, np.ndarray]:
    """The ``kfac`` bases: for each factor (``"<layer>:out"`` -> ``S``, ``"<layer>:in"`` -> ``A``, summed
    over tokens), its top-``rank`` eigenvectors as rows, largest eigenvalue first.

    ``eigh`` in float64 on the symmetrised factor; an eigenvector's sign is arbitrary, which is harmless:
    the build and every query use the same stored rows."""
    out = {}
    for name, factor in factors.items():
        factor = factor.double()
        _, vectors = torch.linalg.eigh(0.5 * (factor + factor.T))
        out[name] = vectors[:, -rank:].flip(1).T.contiguous().float().numpy()
    return out


def _summed(parts: Iterable[torch.Tensor]) -> torch.Tensor:
    """The sum of one layer's per-call contributions (one call, or one per use of a shared module)."""
    return functools.reduce(operator.add, parts)


def _gaussian(rows: int, cols: int, seed: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Seeded ``N(0, 1/rows)`` entries: ``E[P^T P] = I``. Drawn on the CPU in float64, so every device
    and dtype gets the same matrix."""
    generator = torch.Generator().manual_seed(seed)
    matrix: torch.Tensor = torch.randn(rows, cols, generator=generator, dtype=torch.float64) / rows**0.5
    return matrix.to(dtype=dtype, device=device)


class Projector:
    """The factored projection of one tracked model's linear layers, seeded: the same on every worker.

    ``rank=None`` switches projection off (each layer's full gradient, for exactness tests); ``bases``
    (:class:`Projection`) replaces the Gaussian sides with fitted ones."""

    def __init__(
        self,
        tracked: TrackedModel,
        rank: int | None,
        seed: int = 0,
        layer_norms: bool = False,
        max_identity_dim: int = MAX_IDENTITY_DIM,
        bases: dict[str, np.ndarray] | None = None,
    ):
        if rank is not None and rank < 1:
            raise ValueError(f"projection rank must be >= 1 (or None for no projection), got {rank}")
        if bases is not None and rank is None:
            raise ValueError("fitted bases need a projection rank")
        self.tracked, self.rank, self.seed, self.bases = tracked, rank, seed, bases
        offsets = tracked.parameter_offsets()
        self.slots: list[LinearSlot] = []
        self.norms: list[NormSlot] = []
        """Normalisation layers kept whole (``layer_norms=True``)."""
        for index, name in enumerate(n for n in tracked.parameter_names if n.endswith(".weight")):
            module = tracked.model.get_submodule(name.removesuffix(".weight"))
            bias_offset = offsets.get(name.removesuffix("weight") + "bias")
            if layer_norms and is_norm(module):
                self.norms.append(NormSlot(name.removesuffix(".weight"), module, offsets[name], bias_offset))
            if not is_linear(module):
                continue  # a norm: kept whole above, or dropped (the module docstring)
            d_in, d_out = linear_widths(module)
            in_width = d_in + (bias_offset is not None)
            layer = name.removesuffix(".weight")
            slot = LinearSlot(
                layer,
                module,
                offsets[name],
                bias_offset,
                self._side(f"{layer}:out", d_out, 2 * index),
                self._side(f"{layer}:in", in_width, 2 * index + 1),
            )
            if keeps_part_of_grids(bases):
                slot.keep = self._kept(slot)
            self.slots.append(slot)
        if not self.slots:
            raise ValueError("the tracked set has no linear layers to build a gradient index from")
        self.dim = sum(slot.dim for slot in self.slots) + sum(norm.dim for norm in self.norms)
        if rank is None and self.dim > max_identity_dim:
            raise ValueError(
                f"an unprojected gradient has {self.dim} coordinates (> {max_identity_dim}); "
                "give a projection rank (e.g. 16)"
            )

    def _side(self, name: str, width: int, stream: int) -> torch.Tensor | None:
        if self.rank is None or width <= self.rank:
            return None
        tracked = self.tracked
        if self.bases is not None:
            if name not in self.bases or self.bases[name].shape != (self.rank, width):
                raise ValueError(f"the fitted bases have no [{self.rank}, {width}] matrix for {name}")
            return torch.from_numpy(np.asarray(self.bases[name])).to(tracked.dtype).to(tracked.device)
        return _gaussian(self.rank, width, self.seed * 1_000_003 + stream, tracked.dtype, tracked.device)

    def _kept(self, slot: LinearSlot) -> torch.Tensor:
        assert self.bases is not None  # only fitted bases keep part of a grid
        indices = self.bases.get(slot.name + KEEP_SUFFIX)
        if indices is None:
            raise ValueError(f"the fitted bases keep part of each grid but name none for {slot.name}")
        indices = np.asarray(indices, dtype=np.int64)
        inside = not len(indices) or (indices.min() >= 0 and indices.max() < slot.grid)
        if not inside or np.any(np.diff(indices) <= 0):
            raise ValueError(f"{slot.name}: kept coordinates must ascend within its {slot.grid}-cell grid")
        return torch.from_numpy(indices).to(self.tracked.device)

    def projected_sides(self) -> list[tuple[str, int]]:
        """``(name, width)`` of every projected side (the rest are kept whole): the ones ``kfac`` fits."""
        sides = []
        for slot in self.slots:
            for side, matrix in (("out", slot.project_out), ("in", slot.project_in)):
                if matrix is not None:
                    sides.append((f"{slot.name}:{side}", matrix.shape[1]))
        return sides

    def describe(self) -> list[dict[str, object]]:
        """Per layer: name and projected shape, and the coordinates kept when not the whole grid (the
        manifest records it)."""
        return [
            {"layer": s.name, "k_out": s.k_out, "k_in": s.k_in} | ({} if s.keep is None else {"kept": s.dim})
            for s in self.slots
        ]

    # ----------------------------------------------------------------------------- the factored path

    def _backward(
        self, theta: torch.Tensor, state: FrozenState, labels: torch.Tensor
    ) -> list[list[tuple[torch.Tensor, torch.Tensor]]]:
        """Each tracked module's calls as ``(inputs, output gradients)`` pairs of the batch's summed
        cross-entropy, from one forward and backward (each example's loss reaches only its own activations,
        so the summed loss gives every example its own output gradients). A module used once per forward
        has one call; a shared one (ALBERT) has one per use."""
        captured: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {}

        def capture(name: str) -> Callable[[nn.Module, tuple[torch.Tensor, ...], torch.Tensor], None]:
            def hook(_module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
                captured.setdefault(name, []).append((inputs[0].detach(), output))

            return hook

        modules = [(slot.name, slot.module) for slot in self.slots + self.norms]
        # The hooks see every forward through these modules: hold the model's lock so no other thread's
        # forward runs while they are registered (interpret.concurrency).
        with lock_of(self.tracked.model), torch.enable_grad():
            handles = [module.register_forward_hook(capture(name)) for name, module in modules]
            try:
                leaf = theta.detach().requires_grad_()
                loss = per_example_losses(self.tracked, leaf, state, labels).sum()
            finally:
                for handle in handles:
                    handle.remove()
        calls = [captured[name] for name, _ in modules]
        grads = iter(torch.autograd.grad(loss, [output for module in calls for _, output in module]))
        tokens = None if state.mask is None else state.mask.shape
        return [[_unflattened(x, next(grads), tokens) for x, _ in module] for module in calls]

    @staticmethod
    def _shared(calls: list[list[tuple[torch.Tensor, torch.Tensor]]], batch: int) -> bool:
        """Whether some call ran on an input that every example shares (DeBERTa's relative-position
        embeddings through its attention projections): its output gradient is summed over the batch, so
        per-example factors of that call exist only one example at a time."""
        return batch > 1 and any(x.shape[0] != batch for module in calls for x, _ in module)

    def gradients(self, theta: torch.Tensor, state: FrozenState, labels: torch.Tensor) -> torch.Tensor:
        """Projected per-example gradients ``[B, dim]`` of each example's cross-entropy."""
        calls = self._backward(theta, state, labels)
        if self._shared(calls, len(state)):
            rows = [self.gradients(theta, state.select([i]), labels[i : i + 1]) for i in range(len(state))]
            return torch.cat(rows)
        mask = None if state.mask is None else state.mask.to(theta.dtype)
        parts = [
            _summed(self._project(slot, x, grad, mask) for x, grad in module)
            for slot, module in zip(self.slots, calls, strict=False)
        ]
        for norm, uses in zip(self.norms, calls[len(self.slots) :], strict=True):
            parts.append(_summed(_norm_gradient(norm, x, grad, mask) for x, grad in uses))
        return torch.cat(parts, dim=1)

    def factors(
        self, theta: torch.Tensor, state: FrozenState, labels: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """The batch's Kronecker factors of every projected side, summed over real (unpadded) tokens, float64:
        ``"<layer>:in"`` -> ``A = sum_t [a_t; 1][a_t; 1]^T``, ``"<layer>:out"`` -> ``S = sum_t delta_t
        delta_t^T``. Sums over blocks (and shards) add up to the factors of the whole sample."""
        calls = self._backward(theta, state, labels)
        if self._shared(calls, len(state)):
            out: dict[str, torch.Tensor] = {}
            for i in range(len(state)):
                for side, block in self.factors(theta, state.select([i]), labels[i : i + 1]).items():
                    out[side] = out.get(side, 0) + block
            return out
        wanted = dict(self.projected_sides())
        out = {}
        for slot, module in zip(self.slots, calls, strict=False):
            for x, grad in module:
                x, grad = _tokens(slot, x, grad, state.mask)
                for side, rows in ((f"{slot.name}:in", x), (f"{slot.name}:out", grad)):
                    if side in wanted:  # a block in float32 or better (2x float64 speed), added in float64
                        rows = rows if rows.dtype in (torch.float32, torch.float64) else rows.float()
                        out[side] = out.get(side, 0) + (rows.T @ rows).double()
        return out

    def _project(
        self, slot: LinearSlot, inputs: torch.Tensor, grads: torch.Tensor, mask: torch.Tensor | None
    ) -> torch.Tensor:
        if inputs.dim() == 2:  # pooler / classifier: one position per example
            inputs, grads = inputs[:, None], grads[:, None]
        elif (positions := _positions(inputs, mask)) is not None:  # pads carry no gradient; make it exact
            grads = grads * positions[..., None]
        if slot.bias_offset is not None:
            inputs = torch.cat([inputs, inputs.new_ones((*inputs.shape[:2], 1))], dim=2)
        if slot.project_in is not None:
            inputs = inputs @ slot.project_in.T
        if slot.project_out is not None:
            grads = grads @ slot.project_out.T
        grid = torch.einsum("bto,bti->boi", grads, inputs).reshape(len(inputs), -1)
        return grid if slot.keep is None else grid[:, slot.keep]

    def project_vector(self, vector: torch.Tensor) -> torch.Tensor:
        """``R v`` for a flat tracked-parameter vector (an ``s_test``), factored: ``P_out [W | b] P_in^T``
        per layer (and LayerNorm coordinates copied when kept)."""
        parts = []
        for slot in self.slots:
            d_out = slot.d_out
            matrix = slot.weight_view(vector)
            if slot.bias_offset is not None:
                bias = vector[slot.bias_offset : slot.bias_offset + d_out]
                matrix = torch.cat([matrix, bias[:, None]], dim=1)
            if slot.project_out is not None:
                matrix = slot.project_out @ matrix
            if slot.project_in is not None:
                matrix = matrix @ slot.project_in.T
            parts.append(matrix.reshape(-1) if slot.keep is None else matrix.reshape(-1)[slot.keep])
        for norm in self.norms:
            parts += [vector[offset : offset + norm.width] for offset in norm.coordinates()]
        return torch.cat(parts)

    def unproject(self, projected: torch.Tensor) -> torch.Tensor:
        """``R^T y``: a projected vector back in the flat tracked-parameter space, factored per layer as
        ``P_out^T Y P_in`` (the adjoint of :meth:`project_vector`; zero on dropped LayerNorms)."""
        tracked = self.tracked
        out = torch.zeros(tracked.num_parameters, dtype=projected.dtype, device=projected.device)
        start = 0
        for slot in self.slots:
            part = projected[start : start + slot.dim]
            start += slot.dim
            if slot.keep is not None:  # the dropped grid coordinates are zero
                part = projected.new_zeros(slot.grid).index_copy(0, slot.keep, part)
            matrix = part.view(slot.k_out, slot.k_in)
            if slot.project_out is not None:
                matrix = slot.project_out.to(projected.dtype).T @ matrix
            if slot.project_in is not None:
                matrix = matrix @ slot.project_in.to(projected.dtype)
            d_in = slot.d_in
            slot.weight_view(out).copy_(matrix[:, :d_in])
            if slot.bias_offset is not None:
                out[slot.bias_offset : slot.bias_offset + slot.d_out] = matrix[:, d_in]
        for norm in self.norms:
            for offset in norm.coordinates():
                out[offset : offset + norm.width] = projected[start : start + norm.width]
                start += norm.width
        return out

    # ------------------------------------------------------------------------------- the dense view

    def dense_matrix(self) -> torch.Tensor:
        """``R [dim, P]`` with ``projected = R @ flat_gradient``: the same map written out (small models;
        the exactness tests and the explicit-Hessian preconditioner use it)."""
        tracked = self.tracked
        matrix = torch.zeros(self.dim, tracked.num_parameters, dtype=tracked.dtype, device=tracked.device)
        row = 0
        for slot in self.slots:
            d_out, d_in = slot.d_out, slot.d_in
            eye_out = torch.eye(d_out, dtype=tracked.dtype, device=tracked.device)
            eye_in = torch.eye(slot.in_width, dtype=tracked.dtype, device=tracked.device)
            p_out = eye_out if slot.project_out is None else slot.project_out
            p_in = eye_in if slot.project_in is None else slot.project_in
            block = torch.kron(p_out, p_in)  # columns: (o, i) row-major over [W | b]
            if slot.keep is not None:
                block = block[slot.keep]
            columns = block.reshape(slot.dim, d_out, slot.in_width)
            rows = slice(row, row + slot.dim)
            weight = columns[:, :, :d_in]
            if slot.transposed:  # flat coordinates run over [in, out]
                weight = weight.transpose(1, 2)
            matrix[rows, slot.weight_offset : slot.weight_offset + d_out * d_in] = weight.reshape(
                slot.dim, d_out * d_in
            )
            if slot.bias_offset is not None:
                matrix[rows, slot.bias_offset : slot.bias_offset + d_out] = columns[:, :, d_in]
            row += slot.dim
        for norm in self.norms:
            for offset in norm.coordinates():
                width = norm.width
                matrix[row : row + width, offset : offset + width] = torch.eye(width, dtype=matrix.dtype)
                row += width
        return matrix


def _unflattened(
    inputs: torch.Tensor, grads: torch.Tensor, tokens: torch.Size | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """A call on the batch's tokens flattened to ``[B*T, d]`` (OPT's feed-forward layers) as ``[B, T, d]``,
    so that each row's tokens are summed into that row's gradient, not taken as rows of their own. A
    pooled call ``[B, d]`` is left alone (``B*T == B`` only when ``T == 1``, where both views agree)."""
    if tokens is None or inputs.dim() != 2 or inputs.shape[0] != tokens[0] * tokens[1]:
        return inputs, grads
    return inputs.view(*tokens, -1), grads.view(*tokens, -1)


def _positions(inputs: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor | None:
    """The padding mask of a call's token positions, or ``None`` when the call does not run over the
    batch's tokens (a shared input such as DeBERTa's relative-position table, whose positions are all
    real)."""
    if mask is None or inputs.shape[0] != mask.shape[0] or inputs.shape[1] > mask.shape[1]:
        return None
    return mask[:, : inputs.shape[1]]


def _tokens(
    slot: LinearSlot, inputs: torch.Tensor, grads: torch.Tensor, mask: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """A layer's tokens that reach the loss, as rows: ``([T, d_in (+1)], [T, d_out])``, the bias input 1
    appended. Pads are dropped, and so are the positions whose output gradient is exactly zero: a decoder's
    ``score`` layer runs on every position but only the pooled one reaches the loss, so its input factor
    sums that position's activation alone (as a gradient index of the pooled head would)."""
    if inputs.dim() == 3:
        positions = _positions(inputs, mask)
        keep = grads.ne(0).any(-1)
        if positions is not None:
            keep &= positions.bool()
        inputs, grads = inputs[keep], grads[keep]
    if slot.bias_offset is not None:
        inputs = torch.cat([inputs, inputs.new_ones((len(inputs), 1))], dim=1)
    return inputs, grads


def _norm_gradient(
    norm: NormSlot, inputs: torch.Tensor, grads: torch.Tensor, mask: torch.Tensor | None
) -> torch.Tensor:
    """Per-example ``[dL/dw, dL/db]`` of a norm whose output is affine in its scale, ``y = s(w) * n(x) + b``
    with ``s(w) = w`` or ``1 + w``: ``sum_t delta_t * dy_t/dw`` and ``sum_t delta_t``. ``dy/dw`` is the output
    at ``w = 1`` minus the output at ``w = 0`` (the bias cancels), so no family's formula is written here."""
    if grads.dim() == 3 and (positions := _positions(grads, mask)) is not None:
        grads = grads * positions[..., None]
    module: nn.Module = norm.module
    scale = module.get_parameter("weight").detach()
    with torch.no_grad():
        at = {
            value: torch.func.functional_call(module, {"weight": torch.full_like(scale, value)}, (inputs,))
            for value in (0.0, 1.0)
        }
    slope = at[1.0] - at[0.0]
    if grads.dim() == 2:  # a pooled call (ModernBERT's head norm): one position per example
        grads, slope = grads[:, None], slope[:, None]
    parts = [(grads * slope).sum(1)]
    if norm.bias_offset is not None:
        parts.append(grads.sum(1))
    return torch.cat(parts, dim=1)
