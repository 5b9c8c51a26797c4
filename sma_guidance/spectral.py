"""Spectral motion losses of SMA (Park et al., AAAI 2025): frame residuals, the wavelet (global)
and Fourier (local) motion alignment terms.

All functions are pure and differentiable in ``pred``. Video tensors are ``(B, F, C, H, W)`` with
frames on dim 1; a 4-D ``(F, C, H, W)`` tensor means ``B = 1``. Filters and weights are built on
the input's device and dtype, so the same code runs in float32/float64 on CPU and GPU.
"""

import warnings

import pywt
import torch

from .errors import UserError

with warnings.catch_warnings():
    # pytorch-wavelets imports the deprecated pkg_resources (for its DTCWT tables, unused here);
    # the warning is noise to users and nothing they can act on.
    warnings.filterwarnings("ignore", message=".*pkg_resources.*")
    from pytorch_wavelets import DWT1DForward

__all__ = [
    "frame_residuals",
    "low_frequency_weights",
    "max_wavelet_level",
    "global_motion_loss",
    "local_motion_loss",
]


def _batched(x, name="x"):
    """``(F, C, H, W)`` -> ``(1, F, C, H, W)``; ``(B, F, C, H, W)`` is returned as is."""
    if x.ndim == 4:
        return x.unsqueeze(0)
    if x.ndim == 5:
        return x
    raise ValueError(f"{name} must be (F, C, H, W) or (B, F, C, H, W), got shape {tuple(x.shape)}")


def _batched_pair(ref, pred):
    """Promotes ``ref`` and ``pred`` to ``(B, T, C, H, W)`` and checks that their shapes agree."""
    if ref.shape != pred.shape:
        raise ValueError(
            f"ref and pred must have the same shape, got {tuple(ref.shape)} and {tuple(pred.shape)}"
        )
    ref, pred = _batched(ref, "ref"), _batched(pred, "pred")
    if ref.shape[1] < 1:
        raise ValueError("ref and pred hold no residual frames; residuals need at least 2 frames")
    return ref, pred


def frame_residuals(x, dim=1):
    """Signed differences of consecutive frames, ``x[t + 1] - x[t]`` along ``dim`` (eq. 10).

    Args:
        x: a video tensor, ``(B, F, C, H, W)`` with the default ``dim=1``; pass ``dim=0`` for an
            unbatched ``(F, C, H, W)`` tensor.
        dim: the frames dimension.

    Returns:
        The residuals, with ``F - 1`` entries along ``dim``, e.g. ``(B, F - 1, C, H, W)``.
    """
    n = x.shape[dim] - 1
    return x.narrow(dim, 1, n) - x.narrow(dim, 0, n)


def low_frequency_weights(height, width, delta=0.05, *, device=None, dtype=None):
    """Weights ω that emphasise low frequencies of an ``fftshift``-ed 2-D spectrum (eq. 17).

    ``ω(a, b) = ((H/2)² + (W/2)²)^δ - ((a - H/2)² + (b - W/2)²)^δ + 1`` for row ``a`` and column
    ``b``, and 0 on row 0 and column 0. After ``fftshift`` the DC term sits near ``(H/2, W/2)``, so
    it gets the largest weight and ω decays towards the highest frequencies.

    Returns:
        ``(H, W)`` tensor.
    """
    if height < 1 or width < 1:
        raise ValueError(f"height and width must be >= 1, got {height} and {width}")
    if delta < 0:
        raise UserError(f"delta must be >= 0 (the paper uses 0.05), got {delta}")
    dtype = torch.get_default_dtype() if dtype is None else dtype
    a = torch.arange(height, device=device, dtype=dtype)[:, None]
    b = torch.arange(width, device=device, dtype=dtype)[None, :]
    h2, w2 = height / 2, width / 2
    w = (h2**2 + w2**2) ** delta - ((a - h2) ** 2 + (b - w2) ** 2) ** delta + 1
    # Row 0 / column 0 hold the unpaired Nyquist bins of even sizes (for odd sizes the most
    # negative frequencies); the paper defines ω only for 0 < a < H, 0 < b < W.
    w[0, :] = 0
    w[:, 0] = 0
    return w


def max_wavelet_level(length, wavelet="haar"):
    """The deepest useful DWT level for a sequence of ``length`` samples (at least 1).

    ``length`` is the number of residual frames, i.e. the number of video frames minus one.
    """
    return max(1, pywt.dwt_max_level(length, _wavelet(wavelet).dec_len))


def _wavelet(name):
    try:
        wave = pywt.Wavelet(name)
    except ValueError:
        raise UserError(
            f"unknown discrete wavelet {name!r}; pass one of pywt.wavelist(kind='discrete'), "
            "e.g. 'haar' or 'db2'"
        ) from None
    return wave


def _dwt1d(levels, wavelet, like):
    """A ``DWT1DForward`` with its filters in ``like``'s device and dtype."""
    dwt = DWT1DForward(J=levels, wave=wavelet, mode="zero")
    # pytorch-wavelets builds its filters in the default dtype (float32); casting those would cap
    # float64 inputs at float32 precision, so rebuild them from pywt's float64 taps.
    # The taps are reversed because conv1d computes a correlation.
    wave = _wavelet(wavelet)
    for name, taps in (("h0", wave.dec_lo), ("h1", wave.dec_hi)):
        filt = torch.tensor(taps[::-1], dtype=like.dtype, device=like.device).reshape(1, 1, -1)
        setattr(dwt, name, filt)
    return dwt


def global_motion_loss(ref, pred, levels=None, level_weights=None, wavelet="haar"):
    """Global motion alignment: multi-level 1-D DWT of residuals along time (eq. 16).

    Every ``(b, c, h, w)`` series of residuals is decomposed into one approximation ``A`` and
    details ``D¹`` (finest) ... ``Dᴶ`` (coarsest) with zero padding, and the loss is
    ``w₀·mean|A_ref - A_pred| + Σⱼ wⱼ·mean|Dʲ_ref - Dʲ_pred|``.

    Args:
        ref, pred: residuals, ``(B, T, C, H, W)`` or ``(T, C, H, W)``.
        levels: DWT levels ``J``; ``None`` for the deepest valid one, :func:`max_wavelet_level`.
        level_weights: ``J + 1`` weights ``(w₀ for A, w₁ for D¹, ..., w_J for Dᴶ)``; all 1 if None.
        wavelet: a discrete pywt wavelet name.

    Returns:
        Scalar tensor.
    """
    ref, pred = _batched_pair(ref, pred)
    t = ref.shape[1]
    top = max_wavelet_level(t, wavelet)
    if levels is None:
        levels = top
    elif not isinstance(levels, int) or not 1 <= levels <= top:
        raise UserError(
            f"levels={levels} is invalid for {t} residual frames with wavelet {wavelet!r}: the "
            f"maximum is {top}; pass levels between 1 and {top}, or None for {top}"
        )
    if level_weights is None:
        level_weights = [1.0] * (levels + 1)
    elif len(level_weights) != levels + 1:
        raise UserError(
            f"level_weights needs {levels + 1} entries for levels={levels} (approximation first, "
            f"then finest to coarsest detail), got {len(level_weights)}"
        )
    # The DWT is linear, so transforming ref - pred gives the coefficient differences in one pass.
    diff = (ref - pred).permute(0, 2, 3, 4, 1).reshape(-1, 1, t)  # (B*C*H*W, 1, T)
    approx, details = _dwt1d(levels, wavelet, diff)(diff)  # details: finest first
    loss = level_weights[0] * approx.abs().mean()
    for weight, detail in zip(level_weights[1:], details):
        loss = loss + weight * detail.abs().mean()
    return loss


def local_motion_loss(ref, pred, delta=0.05):
    """Local motion alignment: ω-weighted amplitude and phase gaps of each residual's 2-D FFT.

    With ``F = fftshift(fft2(x))`` over ``(H, W)`` (eq. 17)::

        mean(ω·||F_ref| - |F_pred||) + mean(ω·|∠F_ref - ∠F_pred|)

    Phases are compared as returned by ``torch.angle`` in (-π, π], without wrapping the gap.

    Args:
        ref, pred: residuals, ``(B, T, C, H, W)`` or ``(T, C, H, W)``.
        delta: exponent δ of :func:`low_frequency_weights`.

    Returns:
        Scalar tensor.
    """
    ref, pred = _batched_pair(ref, pred)
    spec_ref = torch.fft.fftshift(torch.fft.fft2(ref), dim=(-2, -1))
    spec_pred = torch.fft.fftshift(torch.fft.fft2(pred), dim=(-2, -1))
    h, w = ref.shape[-2:]
    omega = low_frequency_weights(h, w, delta, device=ref.device, dtype=spec_ref.real.dtype)
    amplitude = (omega * (spec_ref.abs() - spec_pred.abs()).abs()).mean()
    phase = (omega * (torch.angle(spec_ref) - torch.angle(spec_pred)).abs()).mean()
    return amplitude + phase
