"""Step counts that fit together: an inversion count the user did not choose is fitted to the sampling
timesteps (the closest count whose grid passes through them) and recorded; a chosen one that cannot work
stays a one-line error."""

import json

import pytest
from click.testing import CliRunner
from diffusers import DDIMInverseScheduler, DDIMScheduler

from cli import main
from pipelines import SMAMotionTransferPipeline
from pipelines.motion_transfer.backbones.zeroscope import ZEROSCOPE_SCHEDULER_CONFIG
from sma_guidance.config import SMAConfig
from sma_guidance.errors import UserError

from conftest import quiet_pipeline, write_moving_square


def closest_fitting_count(preferred: int, sampling_steps: int) -> int:
    """Independent reference: scan every count with diffusers' own schedulers."""
    sampler = DDIMScheduler(**ZEROSCOPE_SCHEDULER_CONFIG)
    sampler.set_timesteps(sampling_steps)
    needed = set(sampler.timesteps.tolist())

    def fits(count: int) -> bool:
        inverse = DDIMInverseScheduler(**ZEROSCOPE_SCHEDULER_CONFIG)
        inverse.set_timesteps(count)
        return needed <= set(inverse.timesteps.tolist())

    return min((count for count in range(1, 1001) if fits(count)), key=lambda count: (abs(count - preferred), -count))


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return write_moving_square(tmp_path_factory.mktemp("steps") / "clip.mp4")


def _run(clip, out, *extra):
    return CliRunner().invoke(main, [str(clip), "--prompt", "a bear", "--model", "tiny-random", "-o", str(out),
                                     "--no-cache", "--optimization-steps", "1", *extra])


def test_the_preset_count_is_fitted_to_the_sampling_steps_and_recorded(clip, tmp_path):
    preset = SMAConfig.for_model("tiny-random").inversion_steps
    expected = closest_fitting_count(preset, 3)
    assert expected != preset  # the preset's grid misses 3-step sampling: the case the rule exists for
    result = _run(clip, tmp_path / "out.mp4", "--steps", "3")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "out.json").read_text())["config"]["inversion_steps"] == expected
    assert f"note: {expected} inversion steps" in result.output


def test_a_chosen_count_that_cannot_work_stays_an_error(clip, tmp_path):
    result = _run(clip, tmp_path / "out.mp4", "--steps", "3", "--inversion-steps", "20", "-q")
    assert result.exit_code == 1 and result.output.startswith("error: inversion_steps=20 does not pass through")
    assert not (tmp_path / "out.mp4").exists()
    config_file = tmp_path / "config.json"
    config_file.write_text(json.dumps({"inversion_steps": 20}))
    result = _run(clip, tmp_path / "out.mp4", "--steps", "3", "--config", str(config_file), "-q")
    assert result.exit_code == 1 and "inversion_steps=20" in result.output


def test_fine_tune_and_batch_fit_it_too(clip, tmp_path):
    result = _run(clip, tmp_path / "ft.mp4", "--steps", "3", "--mode", "fine-tune", "--train-steps", "2", "-q")
    assert result.exit_code == 0, result.output
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text(json.dumps({"input": str(clip), "prompt": "a cat", "model": "tiny-random", "output": "b.mp4",
                                "steps": 3, "optimization-steps": 1, "cache": False}) + "\n")
    result = CliRunner().invoke(main, ["batch", str(jobs), "-q"])
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "b.json").read_text())
    assert record["config"]["inversion_steps"] == closest_fitting_count(20, 3)


def test_python_calls_follow_the_same_rule(clip):
    pipe = quiet_pipeline("tiny-random")
    out = pipe(clip, "a bear", num_inference_steps=3, optimization_steps=1, inversion_cache=False)
    assert out.config["inversion_steps"] == closest_fitting_count(20, 3)
    with pytest.raises(UserError, match="inversion_steps=20 does not pass through"):
        pipe(clip, "a bear", num_inference_steps=3, inversion_steps=20)
    with pytest.raises(UserError, match="inversion_steps=20"):
        pipe(clip, "a bear", config=pipe.default_config().replace(num_inference_steps=3))  # a whole config is chosen


def test_flow_matching_takes_the_closest_multiple(clip):
    pipe = SMAMotionTransferPipeline.load("tiny-random-wan", device="cpu")
    config = pipe.default_config().replace(num_inference_steps=4)
    assert config.inversion_steps == 50
    assert pipe.fit_inversion_steps(config).inversion_steps == 52  # 48 and 52 are as close: the finer grid
    assert pipe.fit_inversion_steps(config.replace(num_inference_steps=7)).inversion_steps == 49
    assert pipe.fit_inversion_steps(config.replace(num_inference_steps=10)).inversion_steps == 50  # fits already
