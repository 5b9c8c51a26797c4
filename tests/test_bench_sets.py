"""`sma-guide bench set`: the set readers (ours, DiTFlow's prompts.js, MTBench's folder), CLIP scores from weights
on disk, and a whole resumable run on a tiny generated manifest with tiny-random."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from cli import main
from pipelines.bench.benchmark_sets import find_clip, paired_differences, read_set
from sma_guidance.errors import UserError
from sma_guidance.shapes import render, sample_clip_spec
from sma_guidance.video_io import export_to_video

PROMPTS_JS = """const prompts = {
    'blackswan': {
        'easy': 'A black swan swimming in a river',
        'medium': 'A duck with a tophat swimming in a river',
        'hard': 'A paper boat floating in a bathtub'
    },
    'car-turn': {
        'easy': 'A gray car driving on a road in a forest',
        'medium': "A man's bike on a road",
        'hard': 'A black suv driving through a roundabout'
    },
};
"""


def write_clip(path: Path, seed: int, frames: int = 8) -> Path:
    spec = sample_clip_spec(np.random.default_rng(seed), num_frames=frames, p_two=0, motion="right")
    return Path(export_to_video(render(spec), path, fps=8))


def test_ditflow_prompts_js_finds_davis_folders_and_videos(tmp_path):
    manifest = tmp_path / "prompts.js"
    manifest.write_text(PROMPTS_JS)
    davis = tmp_path / "DAVIS" / "JPEGImages" / "480p" / "blackswan"
    davis.mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(davis / "00000.jpg")
    write_clip(tmp_path / "DAVIS" / "car-turn.mp4", 0)
    items = read_set(manifest, tmp_path / "DAVIS")
    assert [i.name for i in items] == ["blackswan", "car-turn"]
    assert items[0].clip == davis and items[1].clip.name == "car-turn.mp4"
    assert items[0].targets == {"easy": "A black swan swimming in a river", "medium": "A duck with a tophat swimming in a river",
                                "hard": "A paper boat floating in a bathtub"}
    assert items[1].targets["medium"] == "A man's bike on a road" and items[0].source_prompt == ""
    with pytest.raises(UserError, match="--clips"):
        read_set(manifest)
    with pytest.raises(UserError, match="not found under"):
        find_clip(tmp_path, "nowhere")
    (tmp_path / "other.js").write_text("var x = 3;")
    with pytest.raises(UserError, match="DiTFlow"):
        read_set(tmp_path / "other.js", tmp_path)


def test_mtbench_folder_gives_source_targets_and_first_frame_mask(tmp_path):
    root = tmp_path / "MTBench"
    for name, with_mask in (("dance-twirl", True), ("snowboard", False)):
        (root / name / "videos").mkdir(parents=True)
        write_clip(root / name / "videos" / f"{name}.mp4", 1)
        (root / name / "prompts.txt").write_text(f"A woman dancing ({name}).\n")
        (root / name / "eval_prompts.txt").write_text("A robot is dancing on the stage.  \nAn astronaut is dancing on mars.  \n\n")
        if with_mask:
            (root / name / "masks" / name).mkdir(parents=True)
            Image.fromarray(np.zeros((8, 8), np.uint8)).save(root / name / "masks" / name / "00000.png")
    (root / "README.md").write_text("not a clip")
    items = read_set(root)
    assert [i.name for i in items] == ["dance-twirl", "snowboard"]
    assert items[0].source_prompt == "A woman dancing (dance-twirl)."
    assert items[0].targets == {"0": "A robot is dancing on the stage.", "1": "An astronaut is dancing on mars."}
    assert items[0].foreground is not None and items[1].foreground is None


def test_our_manifest_and_its_errors(tmp_path):
    write_clip(tmp_path / "a.mp4", 2)
    manifest = tmp_path / "set.json"
    manifest.write_text(json.dumps({"clips": [{"clip": "a.mp4", "source_prompt": "a circle", "targets": ["a square"],
                                               "start": 0.25, "duration": 0.5}]}))
    (item,) = read_set(manifest)
    assert (item.name, item.clip, item.targets, item.start, item.duration) == ("a", tmp_path / "a.mp4", {"0": "a square"}, 0.25, 0.5)
    manifest.write_text(json.dumps({"clips": [{"clip": "missing.mp4", "targets": ["x"]}]}))
    with pytest.raises(UserError, match="clip not found"):
        read_set(manifest)
    manifest.write_text(json.dumps({"clips": [{"clip": "a.mp4"}]}))
    with pytest.raises(UserError, match="not a benchmark manifest"):
        read_set(manifest)


def test_paired_differences_pair_the_same_clip_target_and_seed():
    records = [{"clip": c, "target": "0", "seed": 0, "method": m, "motion_fidelity": v}
               for c, m, v in (("a", "DMT", 0.5), ("a", "DMT + SMA", 0.7), ("b", "DMT", 0.2), ("b", "DMT + SMA", 0.1),
                               ("c", "DMT + SMA", 0.9))]  # c has no baseline: left out
    (diff,) = paired_differences(records, ["DMT", "DMT + SMA"])
    assert diff["n"] == 2 and diff["mean"] == pytest.approx(0.05)
    assert diff["sem"] == pytest.approx(np.std([0.2, -0.1], ddof=1) / math.sqrt(2))


def tiny_clip_folder(path: Path) -> Path:
    """A CLIP model of a few thousand weights saved by transformers itself, with a processor."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    from pipelines.motion_transfer.backbones.tokenizers import build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer()
    ids = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    config = CLIPConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=77, **ids),
        vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=32,
                           patch_size=8),
        projection_dim=8)
    torch.manual_seed(0)
    CLIPModel(config).save_pretrained(path)
    processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    CLIPProcessor(image_processor=processor, tokenizer=tokenizer).save_pretrained(path)
    return path


def test_clip_scores_match_clips_own_logits(tmp_path):
    from transformers import CLIPModel, CLIPProcessor

    from pipelines.bench.clip_scores import load_clip_scorer

    folder = tiny_clip_folder(tmp_path / "clip")
    scorer, why = load_clip_scorer(folder)
    assert why is None
    frames = np.random.default_rng(0).integers(0, 256, (4, 40, 48, 3), dtype=np.uint8)
    got = scorer(frames, "a red circle")
    model, processor = CLIPModel.from_pretrained(folder).eval(), CLIPProcessor.from_pretrained(folder)
    with torch.no_grad():
        out = model(**processor(text=["a red circle"], images=list(frames), return_tensors="pt", padding=True))
        cosines = out.logits_per_image[:, 0] / model.logit_scale.exp()  # CLIP's logits are scaled cosines
    assert got["clip_text_alignment"] == pytest.approx(float(cosines.mean()), abs=1e-5)
    images = out.image_embeds / out.image_embeds.norm(dim=-1, keepdim=True)
    assert got["clip_temporal_consistency"] == pytest.approx(float((images[1:] * images[:-1]).sum(-1).mean()), abs=1e-5)
    scorer, why = load_clip_scorer(tmp_path / "absent")
    assert scorer is None and "not found" in why


FAST = {"num_frames": 4, "num_inference_steps": 4, "inversion_steps": 4, "optimization_steps": 1, "height": 32, "width": 32}


def test_bench_set_runs_end_to_end_and_resumes(tmp_path):
    write_clip(tmp_path / "right.mp4", 3)
    write_clip(tmp_path / "other.mp4", 4)
    manifest = tmp_path / "set.json"
    manifest.write_text(json.dumps({"clips": [
        {"clip": "right.mp4", "source_prompt": "a circle", "targets": {"sq": "a blue square", "tri": "a red triangle"}},
        {"clip": "other.mp4", "source_prompt": "a shape", "targets": ["a green circle"]},
    ]}))
    (tmp_path / "fast.json").write_text(json.dumps(FAST))
    clip_folder = tiny_clip_folder(tmp_path / "clip")
    out = tmp_path / "run"
    args = ["bench", "set", str(manifest), "--model", "tiny-random", "--config", str(tmp_path / "fast.json"),
            "--device", "cpu", "--dtype", "float32", "--tracker", "klt", "--clip-model", str(clip_folder), "--output", str(out)]
    first = CliRunner().invoke(main, args + ["--limit", "1"])  # a first look: the first clip only
    assert first.exit_code == 0, first.output
    lines = (out / "records.jsonl").read_text().splitlines()
    assert len(lines) == 1 + 2 * 2  # settings, then 2 targets x 2 methods
    second = CliRunner().invoke(main, args)
    assert second.exit_code == 0, second.output
    assert "continuing a stopped run: 4 of 6 videos already made" in second.output
    results = json.loads((out / "results.json").read_text())
    records = results["records"]
    assert len(records) == 6 and results["settings"]["resumed_videos"] == 4
    assert {(r["clip"], r["target"], r["method"]) for r in records} == {
        (c, t, m) for c, t in (("right", "sq"), ("right", "tri"), ("other", "0")) for m in ("DMT", "DMT + SMA")}
    for record in records:
        assert (out / record["video"]).is_file()
        assert record["tracker"] == "klt" and record["formula"] == "paired" and record["tracks"] == 55 * 55
        assert {"motion_fidelity_dmt", "motion_fidelity_ditflow", "motion_fidelity_symmetric", "motion_fidelity_paired",
                "clip_text_alignment", "clip_temporal_consistency"} <= set(record)
        assert -1 <= record["clip_text_alignment"] <= 1
    table = (out / "results.md").read_text()
    assert "| DMT + SMA | 3 |" in table and "CLIP text" in table
    assert results["paired_differences"][0]["n"] == 3
    third = CliRunner().invoke(main, args + ["--clip-model", str(tmp_path / "none")])  # other settings: starts over
    assert third.exit_code == 0 and "continuing" not in third.output and "CLIP scores skipped" in third.output
    assert "n/a" in (out / "results.md").read_text()


def test_the_shipped_tiny_set_reads():
    root = Path(__file__).resolve().parents[1] / "samples"
    items = read_set(root / "tiny_set.json")
    assert [i.name for i in items] == ["red_circle_right", "yellow_square_circling", "cyan_triangle_bouncing"]
    assert all(i.clip.is_file() and i.source_prompt and i.targets for i in items)
