import numpy as np
import pytest
import torch
from scipy.linalg import lapack

from sslora import spectral
from sslora.spectral import exact_svd, expert_factors, reference_svd, residual_factors, select_indices


@pytest.mark.parametrize("init", ["spectral", "principal", "minor", "random"])
@pytest.mark.parametrize("p, r, n_exp", [(64, 16, 4), (100, 32, 8), (37, 6, 3)])
def test_segments_disjoint_and_where_design_says(init, p, r, n_exp):
    gen = torch.Generator().manual_seed(3)
    idx = select_indices(p, r, n_exp, init, generator=gen)
    d, t = r // n_exp, p // n_exp
    assert idx.shape == (n_exp, d)
    assert len(set(idx.flatten().tolist())) == r  # disjoint
    assert idx.min() >= 0 and idx.max() < p
    if init == "spectral":
        for j in range(n_exp):
            assert idx[j].tolist() == list(range(j * t, j * t + d))
        tail = select_indices(p, r, n_exp, init, "tail")
        for j in range(n_exp):
            assert tail[j].tolist() == list(range((j + 1) * t - d, (j + 1) * t))
    elif init == "principal":
        assert idx.flatten().tolist() == list(range(r))
    elif init == "minor":
        assert idx.flatten().tolist() == list(range(p - r, p))


def test_random_segments_follow_seed():
    a = select_indices(50, 8, 4, "random", generator=torch.Generator().manual_seed(1))
    b = select_indices(50, 8, 4, "random", generator=torch.Generator().manual_seed(1))
    c = select_indices(50, 8, 4, "random", generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_spectral_too_small_layer_raises():
    with pytest.raises(ValueError, match=r"t = min\(m, n\) // N = 12 // 4 = 3 is smaller than the expert rank d = r / N = 4"):
        select_indices(12, 16, 4, "spectral")


def _segment_errors(weight, idx, d):
    """Max error of each expert's U_j S_j V_j^T against an fp64 SVD, for ours and torch fp32."""
    u64, s64, vh64 = torch.linalg.svd(weight.double())
    errs = []
    for fn in (exact_svd, reference_svd):
        u, s, v = fn(weight, idx)
        worst = 0.0
        for j in range(idx.shape[0]):
            cols = slice(j * d, (j + 1) * d)
            sel = idx[j]
            truth = (u64[:, sel] * s64[sel]) @ vh64[sel]
            ours = (u[:, cols].double() * s[cols].double()) @ v[:, cols].double().T
            worst = max(worst, (ours - truth).abs().max().item())
        errs.append(worst)
    return errs


@pytest.mark.parametrize("shape", [(64, 48), (48, 64), (96, 96)])
@pytest.mark.parametrize("init", ["spectral", "minor", "principal"])
def test_exact_svd_matches_torch_svd(shape, init):
    torch.manual_seed(0)
    weight = torch.randn(*shape)
    idx = select_indices(min(shape), 16, 4, init)
    u, s, v = exact_svd(weight, idx)
    ur, sr, vr = reference_svd(weight, idx)
    torch.testing.assert_close(s, sr, rtol=1e-4, atol=1e-5)
    # singular vectors agree up to sign
    torch.testing.assert_close((u * ur).sum(0).abs(), torch.ones(16), rtol=0, atol=1e-3)
    torch.testing.assert_close((v * vr).sum(0).abs(), torch.ones(16), rtol=0, atol=1e-3)
    ours, torch_err = _segment_errors(weight, idx, 4)
    assert ours <= max(torch_err, 1e-6)


@pytest.mark.parametrize("decades", [3, 7, 12])
@pytest.mark.parametrize("init", ["spectral", "minor"])
def test_exact_svd_ill_conditioned_at_least_as_accurate_as_torch(decades, init):
    gen = torch.Generator().manual_seed(0)
    m, n = 120, 80
    q1, _ = torch.linalg.qr(torch.randn(m, n, dtype=torch.float64, generator=gen))
    q2, _ = torch.linalg.qr(torch.randn(n, n, dtype=torch.float64, generator=gen))
    weight = ((q1 * torch.logspace(0, -decades, n, dtype=torch.float64)) @ q2.T).float()
    idx = select_indices(n, 16, 4, init)
    ours, torch_err = _segment_errors(weight, idx, 4)
    assert ours <= max(torch_err, 1e-7), (ours, torch_err)
    assert torch.isfinite(exact_svd(weight, idx)[0]).all()


def test_rank_deficient_weight_gives_finite_zero_factors():
    weight = torch.zeros(30, 20)
    weight[:5, :5] = torch.randn(5, 5)
    u, s, v = exact_svd(weight, select_indices(20, 8, 2, "minor"))
    assert torch.isfinite(u).all() and torch.isfinite(v).all()
    assert s.abs().max() < 1e-5


def test_factors_and_residual():
    torch.manual_seed(0)
    weight = torch.randn(40, 30)
    idx = select_indices(30, 12, 3, "spectral")
    u, s, v = exact_svd(weight, idx)
    scaling, rho = 5.0, 10.0
    a, b = expert_factors(u, s, v, scaling, rho)
    for j in range(3):
        cols = slice(j * 4, (j + 1) * 4)
        torch.testing.assert_close(scaling * b[:, cols] @ a[cols], (u[:, cols] * s[cols]) @ v[:, cols].T / rho)
    res_a, res_b = residual_factors(a, b, scaling, 3)
    expected = (scaling / 3) * sum(b[:, j * 4 : (j + 1) * 4] @ a[j * 4 : (j + 1) * 4] for j in range(3))
    torch.testing.assert_close(res_b @ res_a, expected)


# ---- the fast path's pieces, each held to its slow, obviously-correct version


@pytest.mark.parametrize("p", [1, 2, 3, 63, 64, 65, 66, 129, 200])
def test_blocked_back_transform_matches_one_reflector_at_a_time(p):
    rng = np.random.default_rng(p)
    a = rng.standard_normal((p, p))
    packed, _, _, tau, info = lapack.dsytrd(np.asfortranarray(a + a.T), lower=1)
    assert info == 0
    z = rng.standard_normal((p, 5))
    fast, slow = z.copy(), z.copy()
    spectral._apply_householder_q(packed, tau, fast)
    spectral._apply_householder_q_reference(packed, tau, slow)
    np.testing.assert_allclose(fast, slow, rtol=0, atol=1e-12 * max(1, p))


@pytest.mark.parametrize("order", ["C", "F"])
@pytest.mark.parametrize("p, q", [(5, 9), (37, 80), (64, 64)])
def test_gram_lower_triangle_in_either_memory_order(monkeypatch, order, p, q):
    monkeypatch.setattr(spectral, "_GRAM_ROWS", 8)  # several block rows even at test sizes
    short = np.asarray(np.random.default_rng(0).standard_normal((p, q)), order=order)
    gram = spectral._gram_lower(short)
    assert gram.shape == (p, p) and gram.flags.f_contiguous  # what dsytrd reduces in place
    np.testing.assert_allclose(np.tril(gram), np.tril(short @ short.T), rtol=1e-13, atol=1e-12)


@pytest.mark.parametrize("shape", [(150, 40), (40, 150), (70, 70)])
def test_exact_svd_matches_reference_with_many_gram_blocks(monkeypatch, shape):
    """Tall (Gram of W^T), wide (blocked dgemm Gram of W) and square (W^T W) all agree with torch."""
    monkeypatch.setattr(spectral, "_GRAM_ROWS", 16)
    weight = torch.randn(*shape, generator=torch.Generator().manual_seed(1))
    idx = select_indices(min(shape), 16, 4, "spectral")
    ours, torch_err = _segment_errors(weight, idx, 4)
    assert ours <= max(torch_err, 1e-6), (ours, torch_err)
    u, s, v = exact_svd(weight, idx)
    torch.testing.assert_close(u.T @ u, torch.eye(16), rtol=0, atol=1e-5)
    torch.testing.assert_close(v.T @ v, torch.eye(16), rtol=0, atol=1e-5)


def test_exact_svd_block_diagonal_weight_keeps_the_order():
    """A block-diagonal weight splits the tridiagonal matrix (exact zeros off its diagonal): the
    wanted components, interleaved between the two blocks, must still come out in order."""
    gen = torch.Generator().manual_seed(0)
    weight = torch.zeros(40, 30)
    weight[:20, :15] = torch.randn(20, 15, generator=gen)
    weight[20:, 15:] = 1.1 * torch.randn(20, 15, generator=gen)
    for init in ("spectral", "principal", "minor"):
        idx = select_indices(30, 12, 3, init)
        (u, s, v), (ur, sr, vr) = exact_svd(weight, idx), reference_svd(weight, idx)
        torch.testing.assert_close(s, sr, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close((u * ur).sum(0).abs(), torch.ones(12), rtol=0, atol=1e-3)
        torch.testing.assert_close((v * vr).sum(0).abs(), torch.ones(12), rtol=0, atol=1e-3)


def test_exact_svd_of_bf16_weight_is_that_of_its_exact_fp32_value():
    weight = torch.randn(48, 32, generator=torch.Generator().manual_seed(2)).to(torch.bfloat16)
    idx = select_indices(32, 8, 2, "spectral")
    timings = {}
    for a, b in zip(exact_svd(weight, idx, timings=timings), exact_svd(weight.float(), idx)):
        assert torch.equal(a, b)
    assert {"convert", "gram", "tridiagonalise", "eigenpairs", "back_transform", "other_side"} <= set(timings)
