"""Pure functions of the spectral initialisation: exact SVD, segment selection, factors, residual.

Shapes: a weight W0 is (m, n) = (out, in); p = min(m, n); N experts of rank d; r = N * d.
Singular components are indexed in descending order of singular value (index 0 = largest).
"""

from __future__ import annotations

import math

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


def exact_svd(weight: torch.Tensor, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
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
    """
    wanted = indices.flatten().tolist()
    mat = weight.detach().reshape(weight.shape[0], -1).to(device="cpu", dtype=torch.float64)
    transposed = mat.shape[0] > mat.shape[1]
    short = mat.T if transposed else mat  # (p, q), p <= q
    p = short.shape[0]
    if min(wanted) < 0 or max(wanted) >= p:
        raise ValueError(f"singular component indices must lie in [0, {p}), got [{min(wanted)}, {max(wanted)}]")
    _, evecs = _eigh_selected(_gram_lower(short), [p - 1 - i for i in wanted])  # eigh is ascending
    # sigma_j = ||W^T u_j|| rather than sqrt(lambda_j): never negative, and u sigma v^T = u u^T W
    # stays exact even for singular values below the Gram matrix's resolution.
    other = short.T @ evecs
    sigma = other.norm(dim=0)
    other = other / torch.where(sigma > 0, sigma, torch.ones_like(sigma))[None, :]
    u, v = (other, evecs) if transposed else (evecs, other)
    peak = u.abs().argmax(dim=0)
    sign = torch.sign(u[peak, torch.arange(u.shape[1])])
    sign[sign == 0] = 1
    return (u * sign).float(), sigma.float(), (v * sign).float()


def reference_svd(weight: torch.Tensor, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The slow, obviously-correct path: plain torch.linalg.svd in fp32, then the same selection."""
    mat = weight.detach().reshape(weight.shape[0], -1).float().cpu()
    u, s, vh = torch.linalg.svd(mat)
    idx = indices.flatten()
    return u[:, idx], s[idx], vh[idx].T


def _gram_lower(short: torch.Tensor) -> np.ndarray | torch.Tensor:
    """W W^T of a (p, q) fp64 matrix, p <= q. With LAPACK at hand: BLAS dsyrk, which computes only the
    lower triangle (half the flops of a matmul) in the Fortran layout dsytrd reads."""
    if _lapack is None:
        return short @ short.T
    from scipy.linalg import blas

    return blas.dsyrk(1.0, short.numpy(), lower=1)


def _eigh_selected(gram, ascending: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenpairs of a symmetric fp64 matrix at the given ascending-order positions (in that order).

    Tridiagonalise once (dsytrd, the O(p^3) step), then bisection (dstebz) for just the wanted
    eigenvalues, inverse iteration (dstein) for their eigenvectors, and the back-transform of only
    those k vectors: O(p^2 k) instead of the O(p^3) of computing all p eigenvectors.
    """
    if _lapack is None:
        evals, evecs = torch.linalg.eigh(gram)
        return evals[ascending], evecs[:, ascending]
    a = gram  # lower triangle only (dsyrk)
    p = a.shape[0]
    lwork = int(_lapack.dsytrd_lwork(p, lower=1)[0])
    packed, diag, offdiag, tau, info = _lapack.dsytrd(a, lower=1, lwork=max(lwork, 1), overwrite_a=1)
    _check(info, "dsytrd")
    order = sorted(set(ascending))
    values, blocks, split = [], [], None
    for lo, hi in _contiguous_runs(order):
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
    vectors = np.ascontiguousarray(vectors[:, np.argsort(by_block)])  # back to ascending order
    _apply_householder_q(packed, tau, vectors)
    position = {index: i for i, index in enumerate(order)}
    pick = [position[i] for i in ascending]
    return torch.from_numpy(values[pick].copy()), torch.from_numpy(np.ascontiguousarray(vectors[:, pick]))


def _contiguous_runs(sorted_indices: list[int]) -> list[tuple[int, int]]:
    runs, start = [], sorted_indices[0]
    for prev, cur in zip(sorted_indices, sorted_indices[1:]):
        if cur != prev + 1:
            runs.append((start, prev))
            start = cur
    runs.append((start, sorted_indices[-1]))
    return runs


def _apply_householder_q(packed: np.ndarray, tau: np.ndarray, z: np.ndarray) -> None:
    """z <- Q z in place, Q = H(0) ... H(p-2) from dsytrd(lower=1) (what LAPACK's dormtr does).

    H(i) = I - tau_i v v^T with v[:i+1] = 0, v[i+1] = 1, v[i+2:] = packed[i+2:, i].
    """
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
