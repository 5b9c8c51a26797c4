"""SMAConfig: the published defaults, presets, file round trips and validation."""

import json
import math

import pytest

from sma_guidance.atomic import write_json as write_run_record
from sma_guidance.config import PRESET_FILE, SMAConfig
from sma_guidance.errors import UserError


def test_defaults_are_dmt_and_sma_published_settings():
    config = SMAConfig()
    assert config.model == "cerspense/zeroscope_v2_576w"
    assert (config.num_frames, config.height, config.width) == (24, 320, 576)
    assert (config.num_inference_steps, config.guidance_scale, config.inversion_steps) == (50, 10.0, 999)
    assert (config.optimization_steps, config.guidance_fraction) == (10, 0.4)
    assert (config.learning_rate_start, config.learning_rate_end) == (0.007, 0.004)
    assert (config.lambda_global, config.lambda_local, config.delta, config.wavelet) == (0.4, 0.2, 0.05, "haar")
    assert config.feature_normalization == "ref-rms"  # the scale chosen in RESULTS.md, "What λ means at full size"
    assert config.feature_layers is None  # read off the loaded model: DMT's names on Zeroscope (test_default_layers)
    assert config.num_guided_steps == 20
    assert config.validate() is config


def test_preset_then_overrides():
    config = SMAConfig.for_model("tiny-random", num_frames=6)
    assert (config.model, config.height, config.width, config.num_frames) == ("tiny-random", 64, 64, 6)
    assert SMAConfig.for_model("some/other-model").height == 320


def test_dict_and_file_round_trip(tmp_path):
    config = SMAConfig(levels=2, level_weights=(1.0, 0.5, 0.25), feature_layers=("a", "b"))
    assert SMAConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    record = write_run_record(tmp_path / "run.json", {"config": config.to_dict(), "loss_history": []})
    assert SMAConfig.from_file(record) == config
    assert not list(tmp_path.glob(".*tmp"))


def test_replace_ignores_none():
    assert SMAConfig().replace(num_frames=None, seed=3).num_frames == 24


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"num_frames": 2}, "at least 3"),
        ({"height": 100}, "multiple of 8"),
        ({"width": 0}, "positive"),
        ({"num_inference_steps": 0}, "positive"),
        ({"delta": 0.0}, "positive"),
        ({"delta": math.nan}, "finite"),
        ({"lambda_global": math.inf}, "finite"),
        ({"lambda_local": -0.1}, "negative"),
        ({"guidance_fraction": 1.5}, "between 0 and 1"),
        ({"optimization_steps": -1}, "at least 0"),
        ({"levels": 6}, "too deep"),
        ({"level_weights": (1.0, 1.0)}, "entries"),
        ({"feature_normalization": "zscore"}, "feature_normalization"),
        ({"num_frames": 3.5}, "whole number"),
        ({"feature_layers": ()}, "empty"),
        ({"generate_restarts": -1}, "generate_restarts must be"),
        ({"generate_eta": 1.5}, "generate_eta must be between"),
        ({"generate_num_inference_steps": 0}, "generate_num_inference_steps must be"),
        ({"generate_num_inference_steps": 1001}, "generate_num_inference_steps must be at most 1000"),
        ({"generate_guidance_rescale": -0.5}, "generate_guidance_rescale"),
    ],
)
def test_validation_errors_are_one_line(changes, message):
    with pytest.raises(UserError, match=message) as info:
        SMAConfig().replace(**changes).validate()
    assert "\n" not in str(info.value)


def test_levels_limit_follows_frame_count():
    SMAConfig(num_frames=24, levels=5).validate()  # 23 residuals: ceil(log2 23) = 5
    with pytest.raises(UserError, match="at most 5"):
        SMAConfig(num_frames=24, levels=6).validate()
    SMAConfig(num_frames=8, levels=3).validate()  # the paper's level for 8 frames
    with pytest.raises(UserError, match="at most 3"):
        SMAConfig(num_frames=8, levels=4).validate()
    SMAConfig(num_frames=3, levels=1).validate()


def test_unknown_keys_and_bad_files(tmp_path):
    with pytest.raises(UserError, match="unknown configuration key"):
        SMAConfig.from_dict({"num_frame": 4})
    with pytest.raises(UserError, match="not found"):
        SMAConfig.from_file(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]")
    with pytest.raises(UserError, match="JSON object"):
        SMAConfig.from_file(bad)


def test_a_model_folder_names_its_preset(tmp_path):
    """A folder loaded by path (a retrained shapes model) takes the preset its marker file names; a folder
    without one gets the family's defaults; a broken marker is a one-line error."""
    folder = tmp_path / "my-shapes"
    folder.mkdir()
    assert SMAConfig.for_model(str(folder)).num_frames == SMAConfig().num_frames == 24
    (folder / PRESET_FILE).write_text('{"preset": "shapes"}')
    config = SMAConfig.for_model(str(folder), num_inference_steps=7)
    expected = SMAConfig.for_model("shapes", num_inference_steps=7)
    assert config.model == str(folder)
    assert config.replace(model="shapes") == expected and config.num_frames == 8
    (folder / PRESET_FILE).write_text('{"name": "shapes"}')
    with pytest.raises(UserError, match="should read"):
        SMAConfig.for_model(str(folder))
    (folder / PRESET_FILE).write_text('{"preset": "shepes"}')
    with pytest.raises(UserError, match="unknown preset 'shepes'; use one of .*shapes"):
        SMAConfig.for_model(str(folder))


def test_generate_settings_replace_the_transfers_only_where_set():
    config = SMAConfig(num_inference_steps=25, guidance_scale=7.5, eta=0.0, guidance_rescale=0.2)
    assert config.for_generate() == config  # nothing set: generate samples as the transfer does
    chosen = config.replace(generate_num_inference_steps=50, generate_eta=1.0).for_generate()
    assert (chosen.num_inference_steps, chosen.guidance_scale, chosen.eta, chosen.guidance_rescale) == (50, 7.5, 1.0, 0.2)
