"""``sma-guide``: transfer the motion of a video to new content described by a prompt.

    sma-guide input.mp4 --prompt "a car driving in a forest"          # writes input.sma.mp4 + input.sma.json
    sma-guide input.mp4 --prompt "..." --model tiny-random -o out.mp4  # ~20 s on 2 CPU cores (output is noise)
    sma-guide input.mp4 --prompt "..." --model BASE --motion-adapter ADAPTER   # AnimateDiff (SD 1.5 + adapter)
    sma-guide ui                                                       # the same in a local web page

Only the click wiring lives here: a run is :func:`pipelines.motion_transfer.run.transfer` (defaults and
their precedence: :func:`~pipelines.motion_transfer.run.build_config`), the benchmarks' commands are in
:mod:`pipelines.bench.commands`, loaded only when ``sma-guide bench`` runs.
"""

from __future__ import annotations

import importlib
import sys
import warnings
from pathlib import Path
from typing import Any

import click

from pipelines.frontends.shell import note, reports_user_errors, show_advice
from pipelines.motion_transfer.models import BUNDLED_MODELS, TINY_MODELS
from pipelines.motion_transfer.run import check_json_path, transfer
from sma_guidance.atomic import write_json

# Subcommands whose module is imported only when they run: name -> "module:attribute".
LAZY_COMMANDS = {"bench": "pipelines.bench.commands:bench"}


class _SmaGuideGroup(click.Group):
    """``sma-guide IN ...`` means ``sma-guide run IN ...``; the lazy subcommands load on use."""

    default_command = "run"

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*self.commands, *LAZY_COMMANDS])

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in LAZY_COMMANDS:
            module, attribute = LAZY_COMMANDS[name].split(":")
            return getattr(importlib.import_module(module), attribute)
        return super().get_command(ctx, name)

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        known = (*self.commands, *LAZY_COMMANDS, "--help", "-h", "--version")
        if args and args[0] not in known:
            args = [self.default_command, *args]
        return super().parse_args(ctx, args)


@click.group(cls=_SmaGuideGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="sma-guide")
def main() -> None:
    """Zero-shot video motion transfer with Spectral Motion Alignment (SMA) on DMT.

    Usage: sma-guide INPUT --prompt TEXT [options]   (see `sma-guide run --help`)
    """
    warnings.showwarning = show_advice


@main.command("run")
@click.argument("input_path", metavar="INPUT", type=click.Path(path_type=Path))
@click.option("--prompt", "-p", required=True, help="Target prompt: what the output shows.")
@click.option("-o", "--output", type=click.Path(path_type=Path), help="Output video (.mp4 or .gif). [default: INPUT.sma.mp4]")
@click.option("--source-prompt", help='Prompt describing the input (inversion and reference features). [default: ""]')
@click.option("--negative-prompt", help="Negative prompt for classifier-free guidance. [default: DMT's]")
@click.option("--model", help=f"Hub id (Zeroscope, AnimateDiff, Wan 2.1), local diffusers folder, {', '.join(BUNDLED_MODELS)} "
                   f"or a tiny model ({', '.join(TINY_MODELS.values())}). [default: cerspense/zeroscope_v2_576w]")
@click.option("--motion-adapter", help="AnimateDiff: a diffusers MotionAdapter (Hub id or folder) for an SD 1.5 --model.")
@click.option("--frames", type=int, help="Frames resampled from the input. [default: 24; AnimateDiff: 16; Wan: 81, always 4k + 1]")
@click.option("--start", type=float, help="Seconds of the input skipped before the part used. [default: 0]")
@click.option("--duration", type=float, help="Seconds of the input used from --start on; only those frames are decoded. "
                                             "[default: to the end]")
@click.option("--window", type=int, help="Frames the model sees at once; a longer clip is sampled in overlapping windows, "
                                         "cross-faded. [default: the family's native clip: 24; AnimateDiff 16; Wan 81; shapes 8]")
@click.option("--overlap", type=int, help="Frames shared by consecutive windows. [default: a quarter of --window]")
@click.option("--mask", type=click.Path(path_type=Path), help="Whose motion to transfer: an image, a video or an image folder "
                                                              "(one per frame), white on the subject.")
@click.option("--mask-box", metavar="X0,Y0,X1,Y1", help="The subject as a box in pixels of the input (instead of --mask).")
@click.option("--new-scene/--keep-scene", "new_scene", default=None,
              help="new: the prompt sets the background too — all but the subject (--mask, or what stands off a plain "
                   "background) is repainted in the colour the model draws for the prompt before the inversion. "
                   "[default: keep]")
@click.option("--height", type=int, help="Output height, a multiple of 8 (Wan: 16). [default: 320; AnimateDiff: 512; Wan: 480]")
@click.option("--width", type=int, help="Output width, a multiple of 8 (Wan: 16). [default: 576; AnimateDiff: 512; Wan: 832]")
@click.option("--steps", type=int, help="Sampling steps (DDIM; Euler for flow-matching Wan). [default: 50]")
@click.option("--inversion-steps", type=int, help="Inversion steps; unset, the preset's count is fitted to pass through "
                                                  "the sampling timesteps. [default: 999; Wan: 50, a multiple of --steps]")
@click.option("--guidance-scale", type=float, help="Classifier-free guidance scale. [default: 10; AnimateDiff 7.5; Wan 5]")
@click.option("--feature-layers", help="Recorded layers, comma-separated submodule names of the UNet / transformer. "
                                       "[default: the family's: DMT's decoder block 1; Wan: blocks.15]")
@click.option("--guidance-fraction", type=float, help="Share of the first steps with latent optimization. [default: 0.4]")
@click.option("--optimization-steps", type=int, help="Adam steps on the latent per guided step. [default: 10]")
@click.option("--learning-rate-start", type=float, help="Adam's learning rate on the latent at the first guided step. [default: 0.007; shapes: preset]")
@click.option("--learning-rate-end", type=float, help="... and at the last guided step (linear in between). [default: 0.004; shapes: preset]")
@click.option("--lambda-global", type=float, help="Weight of the global (Haar wavelet) motion term. [default: 0.4]")
@click.option("--lambda-local", type=float, help="Weight of the local (FFT) motion term. [default: 0.2]")
@click.option("--levels", type=int, help="Haar wavelet levels, 1 to ceil(log2(frames - 1)). [default: that maximum, the paper's: 3 for 8 frames, 4 for 16]")
@click.option("--delta", type=float, help="Exponent δ of the low-frequency weights. [default: 0.05]")
@click.option("--downsample-factor", type=int, help="DMT's initial latent keeps the inversion's frequencies below 1/FACTOR of the latent size. [default: 4]")
@click.option("--low-pass-grid", type=int, help="The same cut-off as a grid of N cells along the latent's shorter side (overrides --downsample-factor). [default: off; shapes: preset]")
@click.option("--restart/--no-restart", "restart_sampling", default=None, help="DMT's restart sampling. [default: on]")
@click.option("--eta", type=float, help="DDIM eta of the steps after the guided ones: 0 deterministic, 1 DDPM-like. [default: 0; shapes: preset]")
@click.option("--guidance-rescale", type=float, help="Rescale of classifier-free guidance toward the conditional prediction's spread, 0 to 1. [default: 0; shapes: preset]")
@click.option("--cache/--no-cache", "inversion_cache", default=None, help="Reuse cached inversions. [default: on]")
@click.option("--cache-dir", type=click.Path(path_type=Path), help="Inversion cache. [default: $SMA_GUIDE_CACHE or ~/.cache/sma-guide]")
@click.option("--mode", type=click.Choice(["zero-shot", "fine-tune", "both"]), help="zero-shot guidance, a motion fine-tune, or both. [default: zero-shot]")
@click.option("--train-steps", type=int, help="Fine-tune steps (modes fine-tune, both). [default: 400, VMC's; shapes: 60]")
@click.option("--trainable-modules", help="What the fine-tune trains: vmc (VMC's recipe: the temporal attentions' q/k/v; "
                                          "Wan: a LoRA on the self-attention's q/k/v from the recorded block on), "
                                          "vmc+transformer_in (ours: also Zeroscope's input temporal transformer) or a "
                                          "regular expression over the denoiser's submodule names. [default: vmc]")
@click.option("--lora-rank", type=int, help="Wan: rank of the fine-tune's LoRA. [default: 16]")
@click.option("--train-lambda-global", type=float, help="λg of the fine-tune objective. [default: 0.4]")
@click.option("--train-lambda-local", type=float, help="λl of the fine-tune objective. [default: 0.2]")
@click.option("--residual", type=click.Choice(["signed", "abs"]), help="Frame residuals of the fine-tune's spectral terms. [default: signed]")
@click.option("--adapter", type=click.Path(path_type=Path), help="Apply a saved motion adapter (no training).")
@click.option("--save-adapter", type=click.Path(path_type=Path), help="Save the trained motion adapter (.safetensors).")
@click.option("--fps", type=float, help="Output frame rate. [default: keeps the input's duration]")
@click.option("--seed", type=int, help="Random seed. [default: 0]")
@click.option("--device", help="auto, cpu, cuda or cuda:N. [default: auto]")
@click.option("--dtype", type=click.Choice(["auto", "float32", "float16", "bfloat16"]), help="[default: auto: float16 on GPU (Wan: bfloat16)]")
@click.option("--loss-scaling", type=click.Choice(["dynamic", "static", "off"]),
              help="float16 only: scale the loss in the guidance and fine-tune backward so gradients do not underflow. [default: dynamic]")
@click.option("--loss-scale", type=float, help="The (initial) loss scale of --loss-scaling. [default: 65536]")
@click.option("--attention", type=click.Choice(["sdpa", "classic"]), help="Attention kernel: PyTorch's fused SDPA or the explicit softmax. [default: sdpa]")
@click.option("--activation-checkpointing", type=click.Choice(["off", "blocks", "layers"]),
              help="Recompute UNet activations in the guidance backward: less memory, more time. [default: blocks; off in the tiny-random and shapes presets]")
@click.option("--vae-batch-size", type=click.IntRange(min=1), help="Frames per VAE encode/decode call. [default: 1]")
@click.option("--vae-tiling/--no-vae-tiling", default=None, help="VAE in tiles, for frames above its tile size. [default: off]")
@click.option("--config", "config_file", type=click.Path(path_type=Path), help="JSON of SMAConfig fields (or a saved run's JSON).")
@click.option("--side-by-side", is_flag=True, help="Also write OUT.side_by_side.mp4: (input | output).")
@click.option("--strip", is_flag=True, help="Also write OUT.strip.png: input frames over output frames, in one picture.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
@reports_user_errors
def run_command(
    input_path: Path,
    prompt: str,
    output: Path | None,
    config_file: Path | None,
    save_adapter: Path | None,
    side_by_side: bool,
    strip: bool,
    quiet: bool,
    **flags: Any,
) -> None:
    """Transfer the motion of INPUT (video file or folder of images) to PROMPT."""
    written = transfer(input_path, prompt, output, config_file, save_adapter, side_by_side, quiet, flags, strip=strip,
                       on_note=note)
    if not quiet:
        extra = "".join(f", {path}" for path in (written.adapter, written.comparison, written.strip) if path is not None)
        click.echo(f"wrote {written.output}{extra} and {written.record}")


@main.command("ui")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to serve on (0.0.0.0: every network interface).")
@click.option("--port", type=click.IntRange(1, 65535), default=7860, show_default=True)
@click.option("--model", default="shapes", show_default=True, help="The model the page starts with (any --model of `sma-guide run`).")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--auth", metavar="USER:PASSWORD", help="Credentials the page asks for; needed beyond loopback. "
              "[default: $SMA_GUIDE_AUTH]")
@click.option("--models", metavar="A,B,...", help="The models the page may load. [default: the built-in models, "
              "plus any folder or Hub id on loopback only]")
@click.option("--queue", "queue_size", type=click.IntRange(min=1), default=8, show_default=True,
              help="Runs that may wait behind the running one; beyond them the page says it is busy.")
@click.option("--max-upload-mb", type=click.IntRange(min=1), default=200, show_default=True, help="Largest upload.")
@reports_user_errors
def ui_command(host: str, port: int, model: str, device: str, auth: str | None, models: str | None, queue_size: int,
               max_upload_mb: int) -> None:
    """A web page: upload a clip or pick a sample, set the prompt, model, mode and knobs, follow the
    progress, watch the side-by-side and download the video, its JSON and a trained adapter.
    Needs the ui extra: pip install -e ".[ui]"."""
    from pipelines.frontends.ui import launch

    launch(host, port, model, device, auth, models, queue_size, max_upload_mb)


@main.command("eval")
@click.argument("input_path", metavar="INPUT", type=click.Path(path_type=Path))
@click.argument("output_path", metavar="OUTPUT", type=click.Path(path_type=Path))
@click.option("--prompt", "-p", help="OUTPUT's prompt; a shapes-world prompt adds edit and motion checks.")
@click.option("--tracker", type=click.Choice(["auto", "shapes", "klt", "cotracker", "points"]), default="auto", show_default=True,
              help="shapes: object centroids (shapes-world renders); klt: OpenCV's Lucas-Kanade on DMT's query grid "
                   "(any video; the eval extra); cotracker: CoTracker3, DMT's own tracker, from weights on disk; "
                   "points: block-matched textured points; auto: shapes for renders, else klt.")
@click.option("--tracker-weights", type=click.Path(path_type=Path),
              help="CoTracker3's scaled_offline.pth. [default: torch hub's cache]")
@click.option("--grid", type=click.IntRange(min=1), help="Query points per side of klt and cotracker. [default: 55, DMT's]")
@click.option("--foreground-mask", type=click.Path(path_type=Path),
              help="INPUT's first-frame mask: only query points in the box over it are tracked, in both clips (DMT's use_mask).")
@click.option("--json", "json_path", type=click.Path(path_type=Path), help="Also write the metrics to this JSON file.")
@reports_user_errors
def eval_command(input_path: Path, output_path: Path, prompt: str | None, tracker: str, tracker_weights: Path | None,
                 grid: int | None, foreground_mask: Path | None, json_path: Path | None) -> None:
    """Score a motion transfer: how well OUTPUT follows INPUT's motion (DMT's motion fidelity, every formula), how
    smooth it is, and, for a shapes-world PROMPT, whether it shows the prompted object and motion."""
    from sma_guidance.metrics import evaluate, format_report, json_safe
    from sma_guidance.tracking import read_foreground
    from sma_guidance.video_io import read_frames

    if json_path is not None:  # fail before the (slow) tracking, not after it
        check_json_path(json_path, (input_path, output_path))
    foreground = read_foreground(foreground_mask) if foreground_mask is not None else None
    metrics = evaluate(read_frames(input_path)[0], read_frames(output_path)[0], prompt=prompt, method=tracker, grid=grid,
                       foreground=foreground, tracker_weights=tracker_weights)
    click.echo(format_report(metrics))
    if json_path is not None:
        record = {"input": str(input_path), "output": str(output_path), "prompt": prompt}
        write_json(json_path, {**record, "metrics": json_safe(metrics)})
        click.echo(f"wrote {json_path}")


@main.command("batch")
@click.argument("jobs_path", metavar="JOBS.jsonl", type=click.Path(path_type=Path))
@click.option("--device", default="auto", show_default=True,
              help="Device when not launched by accelerate (under `accelerate launch`, each process takes its GPU).")
@click.option("--quiet", "-q", is_flag=True, help="No per-job lines or progress bar.")
@reports_user_errors
def batch_command(jobs_path: Path, device: str, quiet: bool) -> None:
    """Run every job of JOBS.jsonl (one JSON object per line: input, prompt, optional output and any
    option of `sma-guide run` by its long name, e.g. "optimization-steps": 5), skipping finished ones.

    On several GPUs: `accelerate launch --multi_gpu --num_processes N -m cli batch JOBS.jsonl` (one process per GPU,
    jobs dealt round-robin). Paths in the file are relative to its folder.
    """
    from pipelines.frontends.batch import run_batch

    done, skipped, failed, total = run_batch(jobs_path, run_command, device, quiet)
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
