"""Spectral motion losses against independent references: PyWavelets, numpy FFTs, explicit loops."""

import math
import subprocess
import sys
import warnings

import numpy as np
import pytest
import pywt
import torch

from sma_guidance.spectral import (
    frame_residuals,
    global_motion_loss,
    local_motion_loss,
    low_frequency_weights,
    max_wavelet_level,
)

DTYPE_TOL = [(torch.float64, 1e-10), (torch.float32, 1e-5)]


def _randn(*shape, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype)


# ---- frame_residuals -----------------------------------------------------------------------------


def test_frame_residuals_values_and_sign():
    x = torch.tensor([0.0, 1.0, 3.0, 2.0]).reshape(1, 4, 1, 1, 1)
    r = frame_residuals(x)
    assert r.shape == (1, 3, 1, 1, 1)
    assert r.flatten().tolist() == [1.0, 2.0, -1.0]


def test_frame_residuals_matches_loop_and_dim_argument():
    x = _randn(2, 5, 3, 4, 4)
    expected = np.stack([x[:, t + 1].numpy() - x[:, t].numpy() for t in range(4)], axis=1)
    np.testing.assert_array_equal(frame_residuals(x).numpy(), expected)
    # (F, C, H, W) has its frames on dim 0.
    np.testing.assert_array_equal(frame_residuals(x[1], dim=0).numpy(), expected[1])
    # Any other dim, e.g. channels.
    np.testing.assert_array_equal(frame_residuals(x, dim=2).numpy(), np.diff(x.numpy(), axis=2))


# ---- low_frequency_weights -----------------------------------------------------------------------


def _weights_loop(h, w, delta):
    out = np.zeros((h, w))
    for a in range(1, h):
        for b in range(1, w):
            out[a, b] = (
                ((h / 2) ** 2 + (w / 2) ** 2) ** delta
                - ((a - h / 2) ** 2 + (b - w / 2) ** 2) ** delta
                + 1
            )
    return out


@pytest.mark.parametrize("h, w", [(4, 6), (5, 7), (6, 5), (8, 8), (1, 3)])
@pytest.mark.parametrize("delta", [0.05, 0.5, 1.0])
def test_low_frequency_weights_matches_loop(h, w, delta):
    got = low_frequency_weights(h, w, delta, dtype=torch.float64)
    assert got.shape == (h, w) and got.dtype == torch.float64
    np.testing.assert_allclose(got.numpy(), _weights_loop(h, w, delta), rtol=0, atol=1e-12)
    assert (got[0] == 0).all() and (got[:, 0] == 0).all()


@pytest.mark.parametrize("h, w", [(4, 6), (5, 7), (8, 8), (7, 4)])
def test_low_frequency_weights_peak_at_dc(h, w):
    got = low_frequency_weights(h, w)
    # After fftshift the DC bin is at (H // 2, W // 2).
    dc = np.fft.fftshift(np.arange(h * w).reshape(h, w) == 0)
    assert got[dc.nonzero()].item() == got.max().item()
    if h % 2 == 0 and w % 2 == 0:  # unique maximum
        assert (got == got.max()).sum() == 1
    assert got[1:, 1:].min() >= 1  # ω >= 1 wherever it is defined


def test_low_frequency_weights_default_dtype():
    assert low_frequency_weights(4, 4).dtype == torch.get_default_dtype()


# ---- global_motion_loss --------------------------------------------------------------------------


def _wavedec(series, wavelet, level):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pywt warns on boundary effects for short series
        return pywt.wavedec(series, wavelet, mode="zero", level=level)


def _global_reference(ref, pred, level, weights, wavelet="haar"):
    """Eq. 16 with one pywt.wavedec per (b, c, h, w) series; ref, pred (B, T, C, H, W) numpy."""
    b_, _, c_, h_, w_ = ref.shape
    gaps = [[] for _ in range(level + 1)]  # index 0: A, index j: D^j (finest j = 1)
    for b in range(b_):
        for c in range(c_):
            for h in range(h_):
                for w in range(w_):
                    cr = _wavedec(ref[b, :, c, h, w], wavelet, level)  # [A_J, D_J, ..., D_1]
                    cp = _wavedec(pred[b, :, c, h, w], wavelet, level)
                    ordered = [0] + list(range(level, 0, -1))  # pywt index -> our index
                    for k, (xr, xp) in enumerate(zip(cr, cp)):
                        gaps[ordered[k]].append(np.abs(xr - xp))
    return sum(wt * np.concatenate(g).mean() for wt, g in zip(weights, gaps))


def test_max_wavelet_level_is_the_papers_ceil_log2():
    # SMA's appendix: Haar with l = 3 for 8-frame videos (7 residuals), l = 4 for 16 (15 residuals).
    assert max_wavelet_level(7) == 3 and max_wavelet_level(15) == 4
    assert [max_wavelet_level(t) for t in (1, 2, 3, 4, 5, 8, 9, 20, 23)] == [1, 1, 2, 2, 3, 3, 4, 5, 5]
    assert max_wavelet_level(23, "db2") == 5  # the bound does not depend on the wavelet
    assert pywt.dwt_max_level(7, 2) == 2  # what it replaced: pywt refuses the paper's level for 8 frames


def test_papers_levels_run_with_zero_padding():
    # 8 frames -> 7 residuals: levels=None is the paper's 3, the coarsest band holds one coefficient per
    # series, and each band equals pywt's zero-padded transform at that depth.
    ref, pred = _randn(1, 7, 2, 2, 2, seed=11), _randn(1, 7, 2, 2, 2, seed=12)
    weights = [1.0, 0.5, 2.0, 3.0]
    got = global_motion_loss(ref, pred, level_weights=weights)
    assert abs(got.item() - _global_reference(ref.numpy(), pred.numpy(), 3, weights)) < 1e-12
    assert torch.equal(got, global_motion_loss(ref, pred, levels=3, level_weights=weights))
    with pytest.raises(ValueError, match="maximum is 3"):
        global_motion_loss(ref, pred, levels=4)


@pytest.mark.parametrize("dtype, tol", DTYPE_TOL)
@pytest.mark.parametrize("t", [1, 2, 3, 7, 8, 23])
def test_global_motion_loss_matches_pywt(t, dtype, tol):
    ref, pred = _randn(2, t, 2, 3, 2, seed=t), _randn(2, t, 2, 3, 2, seed=100 + t)
    top = max(1, math.ceil(math.log2(t)))
    got = global_motion_loss(ref.to(dtype), pred.to(dtype))
    assert got.dtype == dtype and got.shape == ()
    expected = _global_reference(ref.numpy(), pred.numpy(), top, [1.0] * (top + 1))
    assert abs(got.item() - expected) <= tol * max(1.0, abs(expected))
    for level in range(1, top + 1):
        weights = [0.5 + 0.7 * k for k in range(level + 1)]
        got = global_motion_loss(ref.to(dtype), pred.to(dtype), levels=level, level_weights=weights)
        expected = _global_reference(ref.numpy(), pred.numpy(), level, weights)
        assert abs(got.item() - expected) <= tol * max(1.0, abs(expected))


@pytest.mark.parametrize("wavelet", ["db2", "sym3"])
def test_global_motion_loss_longer_wavelets_match_pywt(wavelet):
    ref, pred = _randn(1, 23, 2, 2, 2, seed=1), _randn(1, 23, 2, 2, 2, seed=2)
    level = max_wavelet_level(23, wavelet)
    weights = [2.0] + [0.25 * k for k in range(1, level + 1)]
    got = global_motion_loss(ref, pred, level_weights=weights, wavelet=wavelet)
    expected = _global_reference(ref.numpy(), pred.numpy(), level, weights, wavelet)
    assert abs(got.item() - expected) < 1e-10


def test_global_motion_loss_single_weight_isolates_one_band():
    # Only D^1 weighted: equals the mean |Haar detail| gap at the finest level.
    ref, pred = _randn(1, 8, 1, 2, 2, seed=3), _randn(1, 8, 1, 2, 2, seed=4)
    got = global_motion_loss(ref, pred, levels=3, level_weights=[0, 1, 0, 0])
    d = (ref - pred).numpy()
    finest = (d[:, 0::2] - d[:, 1::2]) / math.sqrt(2)  # pywt haar dec_hi = [-1, 1] / sqrt(2)
    assert abs(got.item() - np.abs(finest).mean()) < 1e-12


def test_global_motion_loss_4d_equals_5d():
    ref, pred = _randn(7, 3, 4, 4, seed=5), _randn(7, 3, 4, 4, seed=6)
    assert torch.equal(global_motion_loss(ref, pred), global_motion_loss(ref[None], pred[None]))


def test_global_motion_loss_zero_for_identical_inputs():
    x = _randn(2, 7, 2, 3, 3)
    assert global_motion_loss(x, x.clone()).item() == 0.0


@pytest.mark.parametrize("levels", [4, 0, -1])
def test_global_motion_loss_rejects_invalid_levels(levels):
    x = _randn(1, 8, 1, 2, 2)  # max level 3 for haar
    with pytest.raises(ValueError, match="maximum is 3") as info:
        global_motion_loss(x, x, levels=levels)
    assert "\n" not in str(info.value)


def test_global_motion_loss_rejects_wrong_level_weights_length():
    x = _randn(1, 8, 1, 2, 2)
    with pytest.raises(ValueError, match="4 entries"):
        global_motion_loss(x, x, level_weights=[1.0, 1.0])
    with pytest.raises(ValueError, match="3 entries"):
        global_motion_loss(x, x, levels=2, level_weights=[1.0] * 4)


def test_global_motion_loss_rejects_bad_inputs():
    x = _randn(1, 8, 1, 2, 2)
    with pytest.raises(ValueError, match="same shape"):
        global_motion_loss(x, x[:, :7])
    with pytest.raises(ValueError, match="wavelet"):
        global_motion_loss(x, x, wavelet="not-a-wavelet")
    with pytest.raises(ValueError, match="no residual frames"):
        global_motion_loss(x[:, :0], x[:, :0])


def test_global_motion_loss_gradcheck():
    # pytorch-wavelets has a hand-written backward; check it against finite differences.
    ref = _randn(1, 7, 1, 2, 2, seed=7)
    pred = _randn(1, 7, 1, 2, 2, seed=8).requires_grad_()
    for wavelet in ("haar", "db2"):
        loss = lambda p: global_motion_loss(ref, p, wavelet=wavelet)  # noqa: E731
        assert torch.autograd.gradcheck(loss, (pred,))


# ---- local_motion_loss ---------------------------------------------------------------------------


def _local_reference(ref, pred, delta):
    """Eq. 17 with numpy FFTs and the explicit-loop weights; ref, pred (B, T, C, H, W) numpy."""
    fr = np.fft.fftshift(np.fft.fft2(ref, axes=(-2, -1)), axes=(-2, -1))
    fp = np.fft.fftshift(np.fft.fft2(pred, axes=(-2, -1)), axes=(-2, -1))
    omega = _weights_loop(ref.shape[-2], ref.shape[-1], delta)
    amplitude = (omega * np.abs(np.abs(fr) - np.abs(fp))).mean()
    phase = (omega * np.abs(np.angle(fr) - np.angle(fp))).mean()
    return amplitude + phase


@pytest.mark.parametrize("dtype, tol", DTYPE_TOL)
@pytest.mark.parametrize("shape", [(2, 3, 2, 4, 6), (1, 4, 3, 5, 7)])
@pytest.mark.parametrize("delta", [0.05, 0.3])
def test_local_motion_loss_matches_numpy(shape, delta, dtype, tol):
    ref, pred = _randn(*shape, seed=9), _randn(*shape, seed=10)
    got = local_motion_loss(ref.to(dtype), pred.to(dtype), delta)
    assert got.dtype == dtype and got.shape == ()
    expected = _local_reference(ref.numpy(), pred.numpy(), delta)
    assert abs(got.item() - expected) <= tol * max(1.0, abs(expected))


def test_local_motion_loss_4d_equals_5d_and_zero_for_identical():
    ref, pred = _randn(3, 2, 4, 4, seed=11), _randn(3, 2, 4, 4, seed=12)
    assert torch.equal(local_motion_loss(ref, pred), local_motion_loss(ref[None], pred[None]))
    assert local_motion_loss(ref, ref.clone()).item() == 0.0


def test_local_motion_loss_rejects_shape_mismatch():
    with pytest.raises(ValueError, match="same shape"):
        local_motion_loss(_randn(3, 2, 4, 4), _randn(3, 2, 4, 5))


# ---- gradients and devices -----------------------------------------------------------------------


LOSSES = [global_motion_loss, local_motion_loss]


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gradients_reach_pred(loss, dtype):
    ref = _randn(2, 7, 3, 4, 4, seed=13, dtype=dtype)
    pred = _randn(2, 7, 3, 4, 4, seed=14, dtype=dtype).requires_grad_()
    loss(ref, pred).backward()
    assert pred.grad.dtype == dtype
    assert torch.isfinite(pred.grad).all() and pred.grad.abs().sum() > 0


@pytest.mark.parametrize("loss", LOSSES)
def test_gradients_finite_when_pred_equals_ref(loss):
    ref = _randn(1, 7, 2, 4, 4, seed=15)
    pred = ref.clone().requires_grad_()
    loss(ref, pred).backward()
    assert torch.isfinite(pred.grad).all()


def test_import_emits_no_warnings():
    code = "import sma_guidance.spectral"
    cmd = [sys.executable, "-W", "error", "-c", code]
    run = subprocess.run(cmd, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert run.stderr == ""


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cuda_matches_cpu(dtype):
    ref = _randn(2, 7, 3, 8, 8, seed=16, dtype=dtype)
    pred = _randn(2, 7, 3, 8, 8, seed=17, dtype=dtype)
    for loss in LOSSES:
        pred_cuda = pred.cuda().requires_grad_()
        got = loss(ref.cuda(), pred_cuda)
        got.backward()
        assert got.device.type == "cuda" and torch.isfinite(pred_cuda.grad).all()
        torch.testing.assert_close(got.cpu(), loss(ref, pred))
