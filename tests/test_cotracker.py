"""CoTracker3 from disk: its code from torch hub's cache, its weights from a file, never the network.

CoTracker3's weights cannot be had offline, so these tests put a stand-in predictor where torch hub keeps the
co-tracker code (a ``hubconf.py`` with CoTracker's entry point and call) and check what is ours: where the code
and weights are looked for, that the weights file is what the model runs with (read with ``weights_only``), the
call DMT's script makes, the tracks' layout, and the errors when something is missing."""

from __future__ import annotations

import argparse
import textwrap

import numpy as np
import pytest
import torch

from sma_guidance import metrics, tracking
from sma_guidance.errors import UserError

HUBCONF = textwrap.dedent('''
    import torch


    class Predictor(torch.nn.Module):
        """CoTrackerPredictor's call: video (B, T, 3, H, W) floats 0..255, grid_size, segm_mask (1, 1, H, W) ->
        tracks (B, T, N, 2) and visibility (B, T, N). Every query point moves by model.bias px per frame."""

        def __init__(self):
            super().__init__()
            self.model = torch.nn.Linear(1, 2)

        def forward(self, video, grid_size=0, segm_mask=None):
            assert video.ndim == 5 and video.shape[2] == 3 and video.dtype == torch.float32 and video.max() > 1
            count = grid_size * grid_size if segm_mask is None else int(segm_mask.sum().item() > 0) * grid_size
            start = torch.stack([torch.arange(count, dtype=torch.float32), torch.zeros(count)], -1)
            steps = torch.arange(video.shape[1], dtype=torch.float32)[:, None, None] * self.model.bias
            return (start + steps)[None], torch.ones(1, video.shape[1], count, dtype=torch.bool)


    def cotracker3_offline(pretrained=True, **kwargs):
        assert not pretrained, "the weights come from the file on disk, not from a download"
        return Predictor()
''')


@pytest.fixture
def hub(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))
    tracking.load_cotracker.cache_clear()
    yield tmp_path / "hub"
    tracking.load_cotracker.cache_clear()


def install_code(hub) -> None:
    repo = hub / "facebookresearch_co-tracker_main"
    repo.mkdir(parents=True)
    (repo / "hubconf.py").write_text(HUBCONF)


def save_weights(path, velocity) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"weight": torch.zeros(2, 1), "bias": torch.tensor(velocity)}, path)


def clip(frames: int = 6) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (frames, 24, 32, 3), dtype=np.uint8)


def test_tracks_come_from_the_weights_on_disk(hub, tmp_path):
    install_code(hub)
    weights = tmp_path / "mine.pth"
    save_weights(weights, [1.5, -0.5])
    tracks = tracking.cotracker_tracks(clip(), grid=3, weights=weights)
    assert tracks.shape == (9, 6, 2) and tracks.dtype == np.float64  # (N, F, 2)
    assert np.allclose(np.diff(tracks, axis=1), [1.5, -0.5])


def test_the_hub_caches_weights_are_the_default(hub):
    install_code(hub)
    save_weights(hub / "checkpoints" / "scaled_offline.pth", [0.0, 2.0])
    assert np.allclose(np.diff(tracking.cotracker_tracks(clip(), grid=2), axis=1), [0.0, 2.0])


def test_a_foreground_box_is_passed_as_cotrackers_segm_mask(hub):
    install_code(hub)
    save_weights(hub / "checkpoints" / "scaled_offline.pth", [1.0, 0.0])
    mask = np.zeros((24, 32), np.uint8)
    mask[5:15, 5:20] = 255
    assert len(tracking.cotracker_tracks(clip(), grid=4, box=tracking.dmt_box_mask(mask))) == 4  # the stand-in's sign


def test_evaluate_scores_cotracker_tracks_as_grid_pairs(hub):
    install_code(hub)
    save_weights(hub / "checkpoints" / "scaled_offline.pth", [1.0, 1.0])
    result = metrics.evaluate(clip(), clip(), method="cotracker", grid=3)
    assert result["tracker"] == "cotracker" and result["formula"] == "paired" and result["grid"] == 3
    assert result["input_tracks"] == 9 and result["motion_fidelity"] == pytest.approx(1.0)


def test_missing_weights_or_code_say_what_to_do(hub, tmp_path):
    with pytest.raises(UserError, match="--tracker-weights"):
        tracking.cotracker_tracks(clip(), weights=tmp_path / "absent.pth")
    weights = tmp_path / "w.pth"
    save_weights(weights, [1.0, 0.0])
    with pytest.raises(UserError, match="code is not on disk"):  # no hub repo, no cotracker package here
        tracking.cotracker_tracks(clip(), weights=weights)
    install_code(hub)
    broken = tmp_path / "broken.pth"
    broken.write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="not a CoTracker3 checkpoint"):
        tracking.cotracker_tracks(clip(), weights=broken)


def test_a_pickled_object_in_the_weights_is_refused(hub, tmp_path):
    install_code(hub)
    weights = tmp_path / "pickled.pth"
    state = {"weight": torch.zeros(2, 1), "bias": torch.zeros(2)}
    torch.save({"model": state, "args": argparse.Namespace(grid=55)}, weights)  # loads fine without weights_only
    with pytest.raises(UserError, match="not a CoTracker3 checkpoint"):  # weights_only: no arbitrary objects
        tracking.cotracker_tracks(clip(), weights=weights)
    torch.save({"model": state}, weights)  # a checkpoint's usual {"model": state_dict} wrapping
    assert np.allclose(np.diff(tracking.cotracker_tracks(clip(), grid=2, weights=weights), axis=1), 0.0)
