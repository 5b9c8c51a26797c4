"""Classifier-free guidance and its rescale (Lin et al. 2024), against a per-sample NumPy computation."""

import numpy as np
import pytest
import torch

from sma_guidance.guidance import classifier_free_guidance


def _numpy_rescaled(uncond, cond, scale, phi):
    out = []
    for u, c in zip(uncond.numpy().astype(np.float64), cond.numpy().astype(np.float64)):
        guided = u + scale * (c - u)
        # torch.std is the unbiased estimate (ddof=1); the ratio of two is the same at any ddof.
        out.append(phi * guided * c.std(ddof=1) / guided.std(ddof=1) + (1 - phi) * guided)
    return np.stack(out)


@pytest.fixture
def branches():
    gen = torch.Generator().manual_seed(0)
    uncond = torch.randn(2, 4, 3, 5, 5, generator=gen)
    cond = uncond + 0.3 * torch.randn(2, 4, 3, 5, 5, generator=gen) + torch.tensor([0.0, 0.5]).view(2, 1, 1, 1, 1)
    return uncond, cond


def test_without_rescale_it_is_plain_guidance(branches):
    uncond, cond = branches
    expected = uncond.numpy() + 7.5 * (cond.numpy() - uncond.numpy())
    np.testing.assert_allclose(classifier_free_guidance(uncond, cond, 7.5).numpy(), expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("phi", [0.3, 0.7, 1.0])
def test_rescale_matches_lin_et_al_per_sample(branches, phi):
    uncond, cond = branches
    got = classifier_free_guidance(uncond, cond, 5.0, phi).numpy()
    np.testing.assert_allclose(got, _numpy_rescaled(uncond, cond, 5.0, phi), rtol=1e-5, atol=1e-5)


def test_full_rescale_keeps_the_conditional_spread_and_the_guided_direction(branches):
    uncond, cond = branches
    guided = classifier_free_guidance(uncond, cond, 7.5)
    rescaled = classifier_free_guidance(uncond, cond, 7.5, 1.0)
    for b in range(2):
        assert rescaled[b].std().item() == pytest.approx(cond[b].std().item(), rel=1e-5)
        assert guided[b].std().item() > 2 * cond[b].std().item()  # what the rescale undoes
        cosine = torch.nn.functional.cosine_similarity(rescaled[b].flatten(), guided[b].flatten(), dim=0)
        assert cosine.item() == pytest.approx(1.0, abs=1e-6)


def test_scale_one_is_the_conditional_prediction_at_any_rescale(branches):
    uncond, cond = branches
    for phi in (0.0, 0.7, 1.0):
        np.testing.assert_allclose(classifier_free_guidance(uncond, cond, 1.0, phi).numpy(), cond.numpy(), atol=1e-5)
