"""DMT loss and the SMA objective against explicit loops and the manual weighted sum."""

import numpy as np
import pytest
import torch

from sma_guidance.dmt import dmt_loss, sma_objective, sma_objective_terms
from sma_guidance.spectral import global_motion_loss, local_motion_loss


def _randn(*shape, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype)


def _dmt_reference(ref, pred):
    """Explicit loops over (b, i, j != i); ref, pred (B, F, C, H, W) numpy."""
    fr, fp = ref.mean(axis=(-2, -1)), pred.mean(axis=(-2, -1))  # (B, F, C)
    terms = []
    for b in range(fr.shape[0]):
        for i in range(fr.shape[1]):
            for j in range(fr.shape[1]):
                if i == j:
                    continue
                dr, dp = fr[b, j] - fr[b, i], fp[b, j] - fp[b, i]
                norms = np.linalg.norm(dr) * np.linalg.norm(dp)
                cos = 0.0 if norms == 0 else float(dr @ dp) / norms
                terms.append(1 - cos)
    return float(np.mean(terms))


# ---- dmt_loss ------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(2, 4, 3, 5, 6), (1, 2, 8, 3, 3), (3, 6, 1, 2, 2)])
@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_dmt_loss_matches_loops(shape, dtype, tol):
    ref, pred = _randn(*shape, seed=1), _randn(*shape, seed=2)
    got = dmt_loss(ref.to(dtype), pred.to(dtype))
    assert got.dtype == dtype and got.shape == ()
    assert abs(got.item() - _dmt_reference(ref.numpy(), pred.numpy())) < tol


def test_dmt_loss_4d_equals_5d():
    ref, pred = _randn(5, 4, 3, 3, seed=3), _randn(5, 4, 3, 3, seed=4)
    assert torch.equal(dmt_loss(ref, pred), dmt_loss(ref[None], pred[None]))
    expected = _dmt_reference(ref[None].numpy(), pred[None].numpy())
    assert abs(dmt_loss(ref, pred).item() - expected) < 1e-12


def test_dmt_loss_cosine_invariances():
    ref = _randn(2, 5, 8, 4, 4, seed=5)
    assert abs(dmt_loss(ref, ref.clone()).item()) < 1e-12
    # A positive scale and any per-video constant shared by all frames leave every Δ's direction.
    shift = _randn(2, 1, 8, 4, 4, seed=6)
    assert abs(dmt_loss(ref, 2 * ref + shift).item()) < 1e-12
    assert abs(dmt_loss(ref, ref + 3.0).item()) < 1e-12
    # Reversed motion is maximally wrong.
    assert abs(dmt_loss(ref, -ref).item() - 2) < 1e-12


def test_dmt_loss_static_pred_gives_one():
    # Identical frames give Δ = 0, whose cosine with anything is 0 (the eps guard).
    ref = _randn(1, 4, 3, 2, 2, seed=7)
    pred = _randn(1, 1, 3, 2, 2, seed=8).expand(1, 4, 3, 2, 2)
    assert dmt_loss(ref, pred).item() == pytest.approx(1.0, abs=1e-12)


def test_dmt_loss_rejects_bad_inputs():
    with pytest.raises(ValueError, match="at least 2"):
        dmt_loss(_randn(1, 3, 2, 2), _randn(1, 3, 2, 2))
    with pytest.raises(ValueError, match="same shape"):
        dmt_loss(_randn(4, 3, 2, 2), _randn(4, 3, 2, 3))
    with pytest.raises(ValueError, match=r"\(F, C, H, W\)"):
        dmt_loss(_randn(4, 3, 2), _randn(4, 3, 2))


# ---- sma_objective -------------------------------------------------------------------------------


def test_sma_objective_without_spectral_terms_is_dmt():
    ref, pred = _randn(2, 6, 4, 5, 5, seed=9), _randn(2, 6, 4, 5, 5, seed=10)
    plain = dmt_loss(ref, pred)
    assert torch.equal(sma_objective(ref, pred, lambda_global=0, lambda_local=0), plain)
    # Skipped terms are not computed: levels far too deep would otherwise raise.
    terms = sma_objective_terms(ref, pred, lambda_global=0, lambda_local=0, levels=99)
    assert torch.equal(terms["total"], plain) and torch.equal(terms["dmt"], plain)
    assert terms["global"].item() == 0 and terms["local"].item() == 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(2, 8, 3, 4, 4), (8, 3, 4, 4)])
def test_sma_objective_is_weighted_sum(shape, dtype):
    ref, pred = _randn(*shape, seed=11, dtype=dtype), _randn(*shape, seed=12, dtype=dtype)
    kwargs = dict(levels=2, level_weights=[0.5, 1.0, 2.0], delta=0.1)
    r5, p5 = (ref, pred) if ref.ndim == 5 else (ref[None], pred[None])
    d_ref, d_pred = r5[:, 1:] - r5[:, :-1], p5[:, 1:] - p5[:, :-1]
    g = global_motion_loss(d_ref, d_pred, levels=2, level_weights=[0.5, 1.0, 2.0])
    l = local_motion_loss(d_ref, d_pred, delta=0.1)
    expected = dmt_loss(ref, pred) + 0.3 * g + 0.7 * l
    got = sma_objective(ref, pred, lambda_global=0.3, lambda_local=0.7, **kwargs)
    torch.testing.assert_close(got, expected)
    terms = sma_objective_terms(ref, pred, lambda_global=0.3, lambda_local=0.7, **kwargs)
    assert set(terms) == {"dmt", "global", "local", "total"}
    torch.testing.assert_close(terms["global"], g)
    torch.testing.assert_close(terms["local"], l)
    torch.testing.assert_close(terms["total"], got)


def test_sma_objective_one_spectral_term():
    ref, pred = _randn(1, 5, 2, 4, 4, seed=13), _randn(1, 5, 2, 4, 4, seed=14)
    d_ref, d_pred = ref[:, 1:] - ref[:, :-1], pred[:, 1:] - pred[:, :-1]
    only_local = sma_objective_terms(ref, pred, lambda_global=0, lambda_local=0.2)
    assert only_local["global"].item() == 0
    torch.testing.assert_close(
        only_local["total"], dmt_loss(ref, pred) + 0.2 * local_motion_loss(d_ref, d_pred)
    )
    only_global = sma_objective_terms(ref, pred, lambda_global=0.4, lambda_local=0)
    assert only_global["local"].item() == 0
    torch.testing.assert_close(
        only_global["total"], dmt_loss(ref, pred) + 0.4 * global_motion_loss(d_ref, d_pred)
    )


# ---- gradients and devices -----------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("loss", [dmt_loss, sma_objective])
def test_gradients_reach_pred(loss, dtype):
    ref = _randn(2, 6, 4, 4, 4, seed=15, dtype=dtype)
    pred = _randn(2, 6, 4, 4, 4, seed=16, dtype=dtype).requires_grad_()
    loss(ref, pred).backward()
    assert pred.grad.dtype == dtype
    assert torch.isfinite(pred.grad).all() and pred.grad.abs().sum() > 0


def test_dmt_loss_gradcheck():
    ref = _randn(1, 4, 3, 2, 2, seed=17)
    pred = _randn(1, 4, 3, 2, 2, seed=18).requires_grad_()
    assert torch.autograd.gradcheck(lambda p: dmt_loss(ref, p), (pred,))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cuda_matches_cpu(dtype):
    ref = _randn(2, 6, 4, 8, 8, seed=19, dtype=dtype)
    pred = _randn(2, 6, 4, 8, 8, seed=20, dtype=dtype)
    pred_cuda = pred.cuda().requires_grad_()
    got = sma_objective(ref.cuda(), pred_cuda)
    got.backward()
    assert got.device.type == "cuda" and torch.isfinite(pred_cuda.grad).all()
    torch.testing.assert_close(got.cpu(), sma_objective(ref, pred))


def test_low_pass_size_keeps_dmt_rule_and_states_a_grid_at_any_latent_size():
    from sma_guidance.dmt import low_pass_size

    assert low_pass_size(40, 72, downsample_factor=4) == (10, 18)  # Zeroscope at 320x576, as DMT publishes
    assert low_pass_size(40, 72, downsample_factor=4, low_pass_grid=10) == (10, 18)  # the same cut-off as a grid
    assert low_pass_size(72, 128, low_pass_grid=10) == (10, 18)  # the grid keeps its meaning at another size
    assert low_pass_size(16, 16, downsample_factor=4) == (4, 4)
    assert low_pass_size(16, 16, low_pass_grid=8) == (8, 8)
    assert low_pass_size(16, 16, low_pass_grid=16) == (16, 16)  # nothing filtered
    assert low_pass_size(16, 16, downsample_factor=1) == (16, 16)


def test_initial_latent_grid_equals_factor_and_full_grid_is_the_inversion():
    from sma_guidance.dmt import initial_latent

    generator = torch.Generator().manual_seed(0)
    inverted, noise = torch.randn(2, 1, 4, 3, 16, 24, generator=generator)
    torch.testing.assert_close(initial_latent(inverted, noise, 4), initial_latent(inverted, noise, 1, low_pass_grid=4))
    assert torch.equal(initial_latent(inverted, noise, 4, low_pass_grid=16), inverted)
    # A finer grid keeps more of the inversion: the result moves towards it.
    coarse = (initial_latent(inverted, noise, low_pass_grid=4) - inverted).pow(2).mean()
    fine = (initial_latent(inverted, noise, low_pass_grid=8) - inverted).pow(2).mean()
    assert fine < 0.95 * coarse
