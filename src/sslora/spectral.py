"""Pure functions of the spectral initialisation: exact SVD, segment selection, factors, residual.

Shapes: a weight W0 is (m, n) = (out, in); p = min(m, n); N experts of rank d; r = N * d.
Singular components are indexed in descending order of singular value (index 0 = largest).
"""

from __future__ import annotations

import contextlib
import functools
import math
import time

import numpy as np
import torch

try:  # scipy gives LAPACK's tridiagonal solvers, which make the exact init several times faster
    from scipy.linalg import lapack as _lapack
except ImportError:  # pragma: no cover - scipy is a dependency; keep a correct fallback anyway
    _lapack = None


def select_indices(
    p: int, r: int, num_experts: int, init: str, segment_slice: str = "head", generator: torch.Generator | None = None
) -> torch.Tensor:
    """Which singular components each expert gets: a LongTensor (N, d), disjoint rows.

    spectral: expert j takes [j*t, j*t + d) ('head') or [(j+1)*t - d, (j+1)*t) ('tail'), t = p // N.
    principal / minor: the top / bottom r components, split in order into N blocks of d.
    random: N disjoint random sets of d indices (each sorted), drawn with `generator`.
    """
    d = r // num_experts
    t = p // num_experts
    if init == "spectral":
        if t < d:
            raise ValueError(
                f"segment length t = min(m, n) // N = {p} // {num_experts} = {t} is smaller than the expert rank "
                f"d = r / N = {d}: lower r or num_experts for this layer"
            )
        offset = 0 if segment_slice == "head" else t - d
        starts = torch.arange(num_experts) * t + offset
        return starts[:, None] + torch.arange(d)[None, :]
    if r > p:
        raise ValueError(f"rank r = {r} exceeds min(m, n) = {p}: lower r for this layer")
    if init == "principal":
        return torch.arange(r).view(num_experts, d)
    if init == "minor":
        return torch.arange(p - r, p).view(num_experts, d)
    if init == "random":
        chosen = torch.randperm(p, generator=generator)[:r].view(num_experts, d)
        return chosen.sort(dim=1).values
    raise ValueError(f"init={init!r} selects no singular components")


def exact_svd(
    weight: torch.Tensor, indices: torch.Tensor, timings: dict[str, float] | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Selected singular triplets of `weight` (m, n), exact, returned in fp32.

    Returns U (m, k), S (k,), V (n, k) for the k = indices.numel() components `indices.flatten()`,
    so that U @ diag(S) @ V.T is the matching part of torch.linalg.svd's decomposition.

    How: the Gram matrix of the short side in fp64 (G = W W^T, p x p), reduced to tridiagonal form
    (LAPACK dsytrd), only the k wanted eigenpairs found (bisection + inverse iteration) and
    transformed back; the other side follows as W^T u / sigma. This skips the p^3 back-transform of
    all eigenvectors and the (q x q) factor that a full SVD of a wide matrix computes. fp64 keeps the
    small singular values as accurate as an fp32 SVD: Gram squaring costs eps64 * sigma_max^2, far
    below fp32's eps32 * sigma_max.
    Signs are canonical: the largest-magnitude entry of each U column is positive.
    `timings`, if given, gets the seconds of each stage added (benchmarks/init_speed.py --stages).
    """
    wanted = indices.flatten().tolist()
    stage = functools.partial(_stage, timings)
    with stage("convert"):
        # numpy from here on: scipy's BLAS / LAPACK take its strided views (below) without copies
        mat = weight.detach().reshape(weight.shape[0], -1).to(device="cpu", dtype=torch.float64).numpy()
    # square goes the W^T W way too: the transpose of a C-ordered matrix is Fortran-ordered, which is
    # what BLAS dsyrk reads without a copy (the transposing copy of a 3584 x 18944 fp64 matrix that
    # scipy would otherwise make costs a third to a half of the Gram product itself)
    transposed = mat.shape[0] >= mat.shape[1]
    short = mat.T if transposed else mat  # (p, q), p <= q; a view either way, never copied
    p = short.shape[0]
    if min(wanted) < 0 or max(wanted) >= p:
        raise ValueError(f"singular component indices must lie in [0, {p}), got [{min(wanted)}, {max(wanted)}]")
    with stage("gram"):
        gram = _gram_lower(short)
    _, evecs = _eigh_selected(gram, [p - 1 - i for i in wanted], stage)  # eigh is ascending
    with stage("other_side"):
        # sigma_j = ||W^T u_j|| rather than sqrt(lambda_j): never negative, and u sigma v^T = u u^T W
        # stays exact even for singular values below the Gram matrix's resolution.
        other = short.T @ evecs  # (q, k)
        sigma = np.linalg.norm(other, axis=0)
        other /= np.where(sigma > 0, sigma, 1.0)[None, :]
    u, v = (other, evecs) if transposed else (evecs, other)
    sign = np.sign(u[np.abs(u).argmax(axis=0), np.arange(u.shape[1])])
    sign[sign == 0] = 1
    return _f32(u * sign), _f32(sigma), _f32(v * sign)


def _f32(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))


@contextlib.contextmanager
def _stage(timings: dict[str, float] | None, name: str):
    start = time.perf_counter()
    yield
    if timings is not None:
        timings[name] = timings.get(name, 0.0) + time.perf_counter() - start


def reference_svd(weight: torch.Tensor, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The slow, obviously-correct path: plain torch.linalg.svd in fp32, then the same selection."""
    mat = weight.detach().reshape(weight.shape[0], -1).float().cpu()
    u, s, vh = torch.linalg.svd(mat)
    idx = indices.flatten()
    return u[:, idx], s[idx], vh[idx].T


_GRAM_ROWS = 256  # rows of G per dgemm call: the block triangle costs (1 + 256/p)/2 of a full product


def _gram_lower(short: np.ndarray) -> np.ndarray:
    """G = S S^T of a (p, q) fp64 array, p <= q: a (p, p) Fortran-ordered array whose lower triangle
    holds G (without LAPACK: all of G). The other triangle is left unset.

    A Fortran-ordered S goes to BLAS dsyrk (one triangle, half the flops of a matmul). A C-ordered S
    (a wide weight) would be copied to Fortran order first, a third to a half of the product's time; it
    is computed instead in block rows of the C-ordered upper triangle, each one dgemm, which is the
    Fortran-ordered lower triangle that dsytrd reduces in place (7% more flops, no copy).
    """
    if _lapack is None:
        return short @ short.T
    from scipy.linalg import blas

    if short.flags.f_contiguous:
        return blas.dsyrk(1.0, short, lower=1)
    p = short.shape[0]
    out = np.empty((p, p))
    for r0 in range(0, p, _GRAM_ROWS):
        np.matmul(short[r0 : r0 + _GRAM_ROWS], short[r0:].T, out=out[r0 : r0 + _GRAM_ROWS, r0:])
    return out.T


def _eigh_selected(gram: np.ndarray, ascending: list[int], stage=None) -> tuple[np.ndarray, np.ndarray]:
    """Eigenpairs of a symmetric fp64 (p, p) matrix at the given ascending-order positions (in that
    order): eigenvalues (k,), eigenvectors (p, k). `gram`'s lower triangle is read and overwritten.

    Tridiagonalise once (dsytrd, the O(p^3) step), then bisection (dstebz) for just the wanted
    eigenvalues, inverse iteration (dstein) for their eigenvectors, and the back-transform of only
    those k vectors: O(p^2 k) instead of the O(p^3) of computing all p eigenvectors.
    `stage(name)`, if given, is a context manager timing each step.
    """
    stage = stage or functools.partial(_stage, None)
    if _lapack is None:
        evals, evecs = torch.linalg.eigh(torch.from_numpy(np.ascontiguousarray(gram)))
        return evals[ascending].numpy(), evecs[:, ascending].numpy()
    a = gram  # lower triangle only, Fortran order: reduced in place
    p = a.shape[0]
    lwork = int(_lapack.dsytrd_lwork(p, lower=1)[0])
    with stage("tridiagonalise"):
        packed, diag, offdiag, tau, info = _lapack.dsytrd(a, lower=1, lwork=max(lwork, 1), overwrite_a=1)
    _check(info, "dsytrd")
    with stage("eigenpairs"):
        values, vectors = _tridiagonal_eigenpairs(diag, offdiag, ascending)
    with stage("back_transform"):
        _apply_householder_q(packed, tau, vectors)
    order = sorted(set(ascending))
    position = {index: i for i, index in enumerate(order)}
    pick = [position[i] for i in ascending]
    return values[pick].copy(), np.ascontiguousarray(vectors[:, pick])


def _tridiagonal_eigenpairs(
    diag: np.ndarray, offdiag: np.ndarray, ascending: list[int]
) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (k,) and eigenvectors (p, k) of the symmetric tridiagonal matrix (diag, offdiag) at
    the distinct positions sorted(set(ascending)): bisection (dstebz), then inverse iteration (dstein)."""
    p = diag.shape[0]
    order = sorted(set(ascending))
    values, blocks, split = [], [], None
    for lo, hi in _contiguous_runs(order):
        # order "E" (ascending over the entire matrix, not by split block) keeps values aligned with
        # `order` when T splits (exact zeros off the diagonal, e.g. a block-diagonal weight)
        found, w, iblock, split, info = _lapack.dstebz(diag, offdiag, 2, 0.0, 0.0, lo + 1, hi + 1, 0.0, b"E")
        _check(info, "dstebz")
        values.append(w[:found])
        blocks.append(iblock[:found])
    values, blocks = np.concatenate(values), np.concatenate(blocks)
    if len(values) != len(order):
        raise RuntimeError(f"LAPACK dstebz returned {len(values)} eigenvalues, expected {len(order)}")
    by_block = np.lexsort((values, blocks))  # dstein wants eigenvalues grouped by split block
    padded_blocks = np.zeros(p, dtype=np.int32)
    padded_blocks[: len(order)] = blocks[by_block]
    vectors, info = _lapack.dstein(diag, offdiag, values[by_block], padded_blocks, split)
    _check(info, "dstein")
    return values, np.ascontiguousarray(vectors[:, np.argsort(by_block)])  # back to ascending order


def _contiguous_runs(sorted_indices: list[int]) -> list[tuple[int, int]]:
    runs, start = [], sorted_indices[0]
    for prev, cur in zip(sorted_indices, sorted_indices[1:]):
        if cur != prev + 1:
            runs.append((start, prev))
            start = cur
    runs.append((start, sorted_indices[-1]))
    return runs


_Q_BLOCK = 64  # reflectors per block in the back-transform


def _apply_householder_q(packed: np.ndarray, tau: np.ndarray, z: np.ndarray) -> None:
    """z (p, k) <- Q z in place, Q = H(0) ... H(p-2) from dsytrd(lower=1) (what LAPACK's dormtr does).

    H(i) = I - tau_i v v^T with v[:i+1] = 0, v[i+1] = 1, v[i+2:] = packed[i+2:, i]. Applied in blocks
    of b reflectors, H(i0) ... H(i0+b-1) = I - V T V^T (compact WY form, V (p-i0-1, b), T (b, b)
    upper triangular), last block first: matrix products instead of p-1 rank-1 updates.
    See _apply_householder_q_reference for the one-reflector-at-a-time version it is tested against.
    """
    count = packed.shape[0] - 1  # reflectors
    for i0 in range((count - 1) // _Q_BLOCK * _Q_BLOCK, -1, -_Q_BLOCK):
        b = min(_Q_BLOCK, count - i0)
        v = np.tril(packed[i0 + 1 :, i0 : i0 + b], -1)  # column c: reflector i0 + c, its 1 at row c
        v[np.arange(b), np.arange(b)] = 1.0
        t = _block_reflector_t(v, tau[i0 : i0 + b])
        tail = z[i0 + 1 :]
        tail -= v @ (t @ (v.T @ tail))


def _block_reflector_t(v: np.ndarray, tau: np.ndarray) -> np.ndarray:
    """T (b, b) upper triangular with H(0) ... H(b-1) = I - V T V^T, H(j) = I - tau_j v_j v_j^T
    (LAPACK dlarft, forward, columnwise): T[j, j] = tau_j, T[:j, j] = -tau_j T[:j, :j] V[:, :j]^T v_j."""
    b = tau.shape[0]
    inner = v.T @ v
    t = np.zeros((b, b))
    for j in range(b):
        t[j, j] = tau[j]
        t[:j, j] = -tau[j] * (t[:j, :j] @ inner[:j, j])
    return t


def _apply_householder_q_reference(packed: np.ndarray, tau: np.ndarray, z: np.ndarray) -> None:
    """z <- Q z one reflector at a time (the definition; slow): the check for _apply_householder_q."""
    p = packed.shape[0]
    for i in range(p - 2, -1, -1):
        if tau[i] == 0.0:
            continue
        tail = z[i + 1 :]
        v_rest = packed[i + 2 :, i]
        proj = tau[i] * (tail[0] + v_rest @ tail[1:])
        tail[0] -= proj
        tail[1:] -= np.outer(v_rest, proj)


def _check(info: int, routine: str) -> None:
    if info != 0:
        raise RuntimeError(f"LAPACK {routine} failed with info={info}")


def expert_factors(
    u: torch.Tensor, s: torch.Tensor, v: torch.Tensor, scaling: float, rho: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """A = (s rho)^-1/2 S^1/2 V^T (r, n) and B = (s rho)^-1/2 U S^1/2 (m, r).

    So that scaling * B_j A_j = U_j S_j V_j^T / rho for every expert block j.
    """
    root = s.clamp_min(0).sqrt() / math.sqrt(scaling * rho)
    return (v * root[None, :]).T.contiguous(), (u * root[None, :]).contiguous()


def residual_factors(
    lora_a: torch.Tensor, lora_b: torch.Tensor, scaling: float, num_experts: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Frozen low-rank factors with res_B @ res_A = W_res = (s / N) sum_j B_j(0) A_j(0).

    W_res equals the expected initial expert update under routing (E[R_i] = 1/N), so the initial
    equivalent weight is W0 in expectation over routing, and exactly W0 when N = 1 (k = 1).
    """
    return lora_a.clone(), lora_b * (scaling / num_experts)


def zero_init_factors(
    out_features: int, in_features: int, r: int, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Standard LoRA init: A Kaiming-uniform (as nn.Linear, a = sqrt(5)), B = 0; no residual."""
    bound = 1.0 / math.sqrt(in_features)  # kaiming_uniform_(a=sqrt(5)) on fan_in = in_features
    lora_a = (torch.rand(r, in_features, generator=generator) * 2 - 1) * bound
    return lora_a, torch.zeros(out_features, r)
