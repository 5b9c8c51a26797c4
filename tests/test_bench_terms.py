"""``sma-guide bench terms``: each term's gradient against DMT's, under each scaling of the spectral terms."""

from __future__ import annotations

import json
import math

import pytest
import torch

from pipelines.bench.terms import SCALINGS, _amplitude_part, term_gradient_norms
from sma_guidance.config import SMAConfig
from sma_guidance.dmt import dmt_loss
from sma_guidance.spectral import frame_residuals, global_motion_loss, low_frequency_weights


def _features(seed, shape=(1, 6, 3, 8, 10)):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=generator, dtype=torch.float64)


def _grad_norm(loss_of, pred):
    pred = pred.clone().requires_grad_(True)
    return float(torch.autograd.grad(loss_of(pred), pred)[0].norm())


def test_the_amplitude_part_is_eq17s_amplitude_gap_computed_on_the_full_spectrum():
    ref, pred = frame_residuals(_features(1)), frame_residuals(_features(2))
    h, w = ref.shape[-2:]
    omega = low_frequency_weights(h, w, 0.05, dtype=torch.float64)
    full = lambda x: torch.fft.fftshift(torch.fft.fft2(x), dim=(-2, -1))  # noqa: E731
    expected = (omega * (full(ref).abs() - full(pred).abs()).abs()).mean()
    torch.testing.assert_close(_amplitude_part(ref, pred, 0.05, "backward"), expected)


def test_the_norms_are_those_of_each_terms_own_gradient():
    ref, pred = _features(3), _features(4)
    config = SMAConfig(lambda_global=0.4, lambda_local=0.2, levels=2)
    norms = term_gradient_norms(ref, pred, config, rms=False, norm="backward")
    assert norms["dmt"] == pytest.approx(_grad_norm(lambda p: dmt_loss(ref, p), pred), rel=1e-5)
    glob = lambda p: 0.4 * global_motion_loss(frame_residuals(ref), frame_residuals(p), levels=2)  # noqa: E731
    assert norms["global"] == pytest.approx(_grad_norm(glob, pred), rel=1e-5)
    # the two halves add up to the local term (its gradient is their sum)
    assert norms["local"] <= norms["local amplitude"] + norms["local phase"] + 1e-9


def test_scalings_act_as_they_claim():
    ref, pred = 5.0 * _features(5), 5.0 * _features(6)
    config = SMAConfig(levels=2)
    paper = term_gradient_norms(ref, pred, config, rms=False, norm="backward")
    ortho = term_gradient_norms(ref, pred, config, rms=False, norm="ortho")
    rms = term_gradient_norms(ref, pred, config, rms=True, norm="backward")
    sigma = float(ref.float().pow(2).mean().sqrt())
    assert ortho["local amplitude"] == pytest.approx(paper["local amplitude"] / math.sqrt(8 * 10), rel=1e-4)
    assert ortho["local phase"] == pytest.approx(paper["local phase"], rel=1e-4)  # phases ignore the FFT's scale
    assert rms["global"] == pytest.approx(paper["global"] / sigma, rel=1e-4)  # an L1's gradient: 1/σ of the raw one
    assert rms["dmt"] == pytest.approx(paper["dmt"], rel=1e-6)  # DMT's cosine ignores the scale


def test_bench_terms_cli_writes_every_layer_and_scaling(tmp_path, run_cli):
    result = run_cli(["bench", "terms", "--model", "tiny-random", "--frames", "4", "-q", "--output", tmp_path / "t.json"])
    assert result.returncode == 0, result.stderr
    record = json.loads((tmp_path / "t.json").read_text())
    layers = {row["layer"] for row in record["rows"]}
    assert len(layers) == 3 and len(record["rows"]) == 3 * len(SCALINGS)
    assert all(row["global_over_dmt"] > 0 and row["local_over_dmt"] > 0 for row in record["rows"])
    assert "| up_blocks.1.upsamplers.0 |" in result.stdout
