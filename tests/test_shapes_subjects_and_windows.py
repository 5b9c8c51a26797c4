"""Subject masks and temporal windows on the bundled shapes model: the two behaviours the benchmarks measure
(`sma-guide bench masks`, `sma-guide bench windows`), each checked on one clip from the CLI or Python."""

import numpy as np
import pytest

from pipelines.motion_transfer.backbones import BUNDLED_MODELS
from conftest import quiet_pipeline

pytestmark = [
    pytest.mark.skipif(
        not (BUNDLED_MODELS["shapes"] / "model_index.json").is_file(), reason="the bundled shapes model is not built"
    ),
    pytest.mark.long_running,  # real transfers: a minute and a half
]


def test_cli_mask_file_picks_whose_motion_is_transferred(tmp_path):
    """Two objects moving apart (right / left); the mask on the second: the output follows it, not the first.
    Without the mask the model follows the first (pipelines/bench/RESULTS.md, "Subject masks")."""
    from click.testing import CliRunner

    from cli import main
    from pipelines.bench import subjects
    from sma_guidance.shapes import render
    from sma_guidance.video_io import export_to_video, read_frames

    case = subjects.cases()[0]
    clip = export_to_video(render(case.spec), tmp_path / "two.mp4")
    mask = subjects.object_mask(case, 1)
    mask_file = export_to_video(np.repeat(mask[..., None], 3, -1).astype(np.uint8) * 255, tmp_path / "mask.mp4")
    output = tmp_path / "out.mp4"
    args = [clip, "--prompt", case.prompt, "--source-prompt", case.source_prompt, "--model", "shapes",
            "--mask", mask_file, "-o", output, "-q"]
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    frames, _ = read_frames(output)
    scores = subjects.score(case, frames / 255.0)
    assert scores["fidelity_second"] >= 0.8 and scores["fidelity_first"] < 0.3, scores


def test_a_24_frame_clip_through_the_8_frame_model_follows_the_path_without_a_seam():
    """Four windows of 8 frames sharing 2; at 10 steps (the bench's 25 give 0.990 and 1.28): fidelity 0.974,
    largest step 1.31x the median."""
    from pipelines.bench import long_clips

    pipe = quiet_pipeline("shapes")
    clip = long_clips.clips()[0]
    out = pipe(clip.frames, clip.prompt, source_prompt=clip.source_prompt, num_frames=24, num_inference_steps=10,
               inversion_steps=10, inversion_cache=False)
    assert out.frames.shape[:2] == (1, 24) and out.windows == [[0, 8], [6, 14], [12, 20], [16, 24]]
    scores = long_clips.score(clip, out.frames[0])
    assert scores["fidelity"] >= 0.8 and scores["jump_ratio"] <= 2.5, scores
