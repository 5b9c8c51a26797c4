"""Spectral motion losses of SMA (Park et al., AAAI 2025): frame residuals, the wavelet (global)
and Fourier (local) motion alignment terms.

All functions are pure and differentiable in ``pred``. Video tensors are ``(B, F, C, H, W)`` with
frames on dim 1; a 4-D ``(F, C, H, W)`` tensor means ``B = 1``. Filters and weights are built on
the input's device and dtype, so the same code runs in float32/float64 on CPU and GPU.
"""

import functools
import math
import warnings

import pywt
import torch
from torch._subclasses.fake_tensor import unset_fake_temporarily

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
    """The deepest DWT level for a series of ``length`` residual frames: ``⌈log₂ length⌉`` (at least 1).

    That is the level at which the zero-padded transform has halved the series down to one
    coefficient; SMA uses it (Haar, l = 3 for 8-frame videos, l = 4 for 16-frame ones: paper
    appendix). pywt's ``dwt_max_level`` is lower (it stops before the filter outgrows the signal), but
    with zero padding the deeper levels are well defined. ``wavelet`` is checked, not used: the bound is
    the same for every wavelet.

    ``length`` is the number of residual frames, i.e. the number of video frames minus one.
    """
    _wavelet(wavelet)
    return max(1, math.ceil(math.log2(length))) if length >= 1 else 1


def _wavelet(name):
    try:
        wave = pywt.Wavelet(name)
    except ValueError:
        raise UserError(
            f"unknown discrete wavelet {name!r}; pass one of pywt.wavelist(kind='discrete'), "
            "e.g. 'haar' or 'db2'"
        ) from None
    return wave


@functools.lru_cache(maxsize=64)
def _dwt_matrices(length, levels, wavelet):
    """The multi-level DWT of a ``length``-sample series as matrices: ``x @ M`` for each band.

    The DWT is linear, so transforming the identity basis with pytorch-wavelets (zero padding, as
    pywt's ``mode="zero"``) gives its exact matrices, float64, approximation first then details from
    finest to coarsest. One small matmul per band then replaces a convolution per level, whose backward
    pass in pytorch-wavelets costs tens of times more for the short series of a clip's residuals.
    The cache must hold real numbers: built outside any fake-tensor mode (``sma-guide bench memory``
    runs the loss on shape-only tensors), so that a later real run never reads shape-only matrices.
    """
    with unset_fake_temporarily():
        return _identity_transform(length, levels, wavelet)


def _identity_transform(length, levels, wavelet):
    dwt = DWT1DForward(J=levels, wave=wavelet, mode="zero")
    # pytorch-wavelets builds its filters in float32; rebuild them from pywt's float64 taps
    # (reversed: conv1d computes a correlation).
    wave = _wavelet(wavelet)
    for name, taps in (("h0", wave.dec_lo), ("h1", wave.dec_hi)):
        setattr(dwt, name, torch.tensor(taps[::-1], dtype=torch.float64).reshape(1, 1, -1))
    basis = torch.eye(length, dtype=torch.float64).unsqueeze(1)  # (T, 1, T)
    approx, details = dwt(basis)
    return tuple(band.squeeze(1) for band in (approx, *details))  # each (T, L_band)


def global_motion_loss(ref, pred, levels=None, level_weights=None, wavelet="haar"):
    """Global motion alignment: multi-level 1-D DWT of residuals along time (eq. 16).

    Every ``(b, c, h, w)`` series of residuals is decomposed into one approximation ``A`` and
    details ``D¹`` (finest) ... ``Dᴶ`` (coarsest) with zero padding, and the loss is
    ``w₀·mean|A_ref - A_pred| + Σⱼ wⱼ·mean|Dʲ_ref - Dʲ_pred|``.

    Args:
        ref, pred: residuals, ``(B, T, C, H, W)`` or ``(T, C, H, W)``.
        levels: DWT levels ``J``, 1 to ``⌈log₂ T⌉`` (zero padding: a series of T residuals halves to
            one coefficient in that many levels); ``None`` for ``⌈log₂ T⌉`` (:func:`max_wavelet_level`),
            the paper's choice (3 for 8 frames, 4 for 16).
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
    diff = (ref - pred).permute(0, 2, 3, 4, 1).reshape(-1, t)  # (B*C*H*W, T)
    loss = 0
    for weight, band in zip(level_weights, _dwt_matrices(t, levels, wavelet)):  # A, then D¹ ... Dᴶ
        loss = loss + weight * (diff @ band.to(diff.device, diff.dtype)).abs().mean()
    return loss


def local_motion_loss(ref, pred, delta=0.05, norm="backward"):
    """Local motion alignment: ω-weighted amplitude and phase gaps of each residual's 2-D FFT.

    With ``F = fftshift(fft2(x))`` over ``(H, W)`` (eq. 17)::

        mean(ω·||F_ref| - |F_pred||) + mean(ω·|∠F_ref - ∠F_pred|)

    Phases are compared as returned by ``torch.angle`` in (-π, π], without wrapping the gap.

    Args:
        ref, pred: residuals, ``(B, T, C, H, W)`` or ``(T, C, H, W)``.
        delta: exponent δ of :func:`low_frequency_weights`.
        norm: the FFT's scaling, as ``torch.fft``'s: ``"backward"`` (none; the paper's, whose amplitudes
            grow with the frame's size) or ``"ortho"`` (divided by √(H·W): the same amplitude for the same
            content at any size). The phases, and so the phase term, do not depend on it.

    Returns:
        Scalar tensor.
    """
    ref, pred = _batched_pair(ref, pred)
    h, w = ref.shape[-2:]
    # The residuals are real, so bin -k is the conjugate of bin k: same amplitude, opposite phase,
    # hence the same gaps. The half spectrum of rfft2 then gives the full spectrum's weighted sums at
    # half the cost, each column whose mirror it lacks weighted by ω(k) + ω(-k). ω is moved to the
    # unshifted layout instead of shifting both spectra.
    spec_ref, spec_pred = torch.fft.rfft2(ref, norm=norm), torch.fft.rfft2(pred, norm=norm)
    omega = torch.fft.ifftshift(low_frequency_weights(h, w, delta, device=ref.device, dtype=spec_ref.real.dtype))
    mirrored = torch.roll(torch.flip(omega, dims=(0, 1)), shifts=(1, 1), dims=(0, 1))  # ω(-k)
    paired = slice(1, (w + 1) // 2)  # columns 0 and (even w) w/2 hold their own mirrors
    omega = omega[:, : w // 2 + 1].clone()
    omega[:, paired] += mirrored[:, paired]
    count = ref.numel()  # bins of the full spectra
    amplitude = (omega * (spec_ref.abs() - spec_pred.abs()).abs()).sum() / count
    phase = (omega * (torch.angle(spec_ref) - torch.angle(spec_pred)).abs()).sum() / count
    return amplitude + phase
