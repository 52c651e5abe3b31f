import pytest
import torch

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
