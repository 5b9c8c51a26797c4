"""``sma-guide ui``: a local web page (Gradio) for one motion transfer at a time.

Upload a clip or pick a bundled sample, write the prompts, choose the model, the mode and the main
knobs, press Run: a progress bar follows the pipeline's own steps, and the page shows the (input |
output) clip and offers the output video, its JSON record and, after a fine-tune, the motion adapter to
download. The work is :func:`pipelines.motion_transfer.run.transfer`, as the CLI's, so a page run writes exactly the files of
``sma-guide INPUT --side-by-side`` (into a fresh folder per run, under one temporary folder that the page
keeps for its lifetime: the last few runs stay, older ones and the whole folder at exit are removed).

Gradio is an optional extra (``pip install -e ".[ui]"``): it is imported here only, never by the core.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sma_guidance.config import SMAConfig
from sma_guidance.errors import UserError
from sma_guidance.video_io import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS

from ..motion_transfer.backbones import model_family
from ..motion_transfer.models import BUNDLED_MODELS, TINY_MODELS
from ..motion_transfer.run import build_config, transfer

SAMPLES = Path(__file__).resolve().parents[2] / "samples"
MODELS = (*BUNDLED_MODELS, *TINY_MODELS.values())
MODES = ("zero-shot", "fine-tune", "both")
# The knobs on the page: (`sma-guide run` flag name, SMAConfig field, label). Their values start as the
# chosen model's preset and are passed to `transfer` as that flag; a blank one keeps the preset.
# Inversion steps start blank: a count the user did not set is fitted to the sampling steps, as on the CLI.
UNSET_KNOBS = {"inversion_steps"}
KNOBS = (
    ("frames", "num_frames", "Frames"),
    ("steps", "num_inference_steps", "Sampling steps"),
    ("inversion_steps", "inversion_steps", "Inversion steps (blank: fitted to the sampling steps)"),
    ("guidance_scale", "guidance_scale", "Guidance scale"),
    ("optimization_steps", "optimization_steps", "Optimization steps"),
    ("lambda_global", "lambda_global", "λ global (wavelet term)"),
    ("lambda_local", "lambda_local", "λ local (FFT term)"),
    ("train_steps", "train_steps", "Fine-tune steps"),
    ("seed", "seed", "Seed"),
    ("window", "window", "Window: frames the model sees at once (longer clips go in windows)"),
    ("overlap", "overlap", "Window overlap (blank: a quarter of the window)"),
)
INTEGER_KNOBS = {"frames", "steps", "inversion_steps", "optimization_steps", "train_steps", "seed", "window", "overlap"}
# Local fonts: the default theme links Google Fonts, which an offline machine cannot reach.
_FONTS = {"font": ["ui-sans-serif", "system-ui", "sans-serif"], "font_mono": ["ui-monospace", "monospace"]}

KEEP_RUNS = 8  # run folders kept on disk; Gradio serves its own copies of the files, so older ones can go
_RUN_PREFIX = "sma-guide-run-"
QUEUE = 8  # runs waiting behind the one running; a submission beyond them is told the page is busy
MAX_UPLOAD_MB = 200  # a 1080p clip of a minute; the page resamples to a few dozen frames anyway
AUTH_ENV = "SMA_GUIDE_AUTH"  # USER:PASSWORD, kept out of the shell history
MASK_SUFFIXES = (*VIDEO_EXTENSIONS, *IMAGE_EXTENSIONS)  # a mask is an image or a video, as `--mask`

log = logging.getLogger(__name__)


def import_gradio() -> Any:
    """Gradio, or a one-line :class:`UserError` telling how to install it."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home from a local tool
    try:
        import gradio
    except ImportError:
        raise UserError('the web page needs gradio: pip install -e ".[ui]"') from None
    return gradio


def is_loopback(host: str) -> bool:
    """Whether ``host`` serves this machine only (127.0.0.0/8, ::1, localhost)."""
    import ipaddress

    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def parse_auth(value: str | None) -> tuple[str, str] | None:
    """``USER:PASSWORD`` (from ``--auth`` or :data:`AUTH_ENV`) as a pair; ``None`` when not given."""
    if value is None or not value.strip():
        return None
    user, sep, password = value.partition(":")
    if not sep or not user.strip() or not password:
        raise UserError(f"--auth / {AUTH_ENV} is USER:PASSWORD with both parts non-empty (got {len(value)} characters "
                        "without a USER:PASSWORD shape)")
    return user.strip(), password


@dataclass(frozen=True)
class ModelPolicy:
    """What the page may load: ``allowed`` by name, and, when ``any_local`` (loopback without --models),
    also any other model a user types (a local folder or a Hub id), as the CLI would."""

    allowed: tuple[str, ...]
    any_local: bool

    def check(self, model: str | None) -> None:
        model = (model or "").strip()
        if model and model not in self.allowed and not self.any_local:
            raise UserError(f"this page may load only {', '.join(self.allowed)} (the server's --models); "
                            f"{model!r} is not one of them")


def model_policy(host: str, models: str | None, start: str) -> ModelPolicy:
    """The page's :class:`ModelPolicy`: ``--models A,B,...`` when given (the starting model must be one of
    them), else the built-in models plus, on loopback only, anything typed."""
    if models is not None:
        allowed = tuple(dict.fromkeys(m.strip() for m in models.split(",") if m.strip()))
        if not allowed:
            raise UserError("--models lists no model; give them comma-separated, e.g. --models shapes,tiny-random")
        if start not in allowed:
            raise UserError(f"--model {start} is not in --models ({', '.join(allowed)}); add it, or start with one of them")
        return ModelPolicy(allowed, any_local=False)
    return ModelPolicy(tuple(dict.fromkeys((start, *MODELS))), any_local=is_loopback(host))


def check_upload(path: str | Path | None, suffixes: tuple[str, ...], what: str) -> None:
    """Only the file types the page takes: a video (the clip), an image or video (the mask)."""
    if path and Path(path).suffix.lower() not in suffixes:
        raise UserError(f"{what} must be one of {', '.join(suffixes)} (got {Path(path).name})")


def sample_clips() -> dict[str, Path]:
    """The bundled sample clips by file name (none when the package is installed without ``samples/``)."""
    return {path.name: path for path in sorted(SAMPLES.glob("*.mp4"))}


def preset_values(model: str | None) -> list[Any]:
    """The knobs' values in ``model``'s preset (SMAConfig's defaults, the family's and the model's presets),
    or blanks when its family is unknown until it loads (a Hub id not in the local cache): filled-in base
    defaults would then override the family's preset (e.g. Wan's 4k + 1 frames) at run time."""
    model = (model or "").strip() or SMAConfig().model
    if model_family(model) is None:
        return [None] * len(KNOBS)
    try:
        config = build_config(None, {"model": model})
    except UserError:
        return [None] * len(KNOBS)
    return [None if name in UNSET_KNOBS else getattr(config, field) for name, field, _ in KNOBS]


@dataclass
class RunFiles:
    """What a page run wrote, all in ``folder``."""

    folder: Path
    output: Path
    record: Path
    comparison: Path
    adapter: Path | None


def run_transfer(
    video: str | Path | None,
    prompt: str,
    source_prompt: str | None,
    model: str | None,
    mode: str,
    adapter: str | Path | None,
    knobs: dict[str, Any],
    device: str = "auto",
    pipelines: dict[tuple[str | None, ...], Any] | None = None,
    show_progress: bool = True,
    runs_folder: str | Path | None = None,
    keep_runs: int = KEEP_RUNS,
    mask: str | Path | None = None,
    mask_box: str | None = None,
    new_scene: bool = False,
) -> RunFiles:
    """One run of :func:`~pipelines.motion_transfer.run.transfer` into a new folder under ``runs_folder`` (default: the system's
    temporary folder), with the side-by-side clip, and the trained adapter saved when the run fine-tunes;
    then, in a ``runs_folder`` that was given (a page's own), only the newest ``keep_runs`` run folders are
    kept; the shared temporary folder is never pruned, another process's runs may sit there. ``pipelines``
    caches loaded models across runs. ``mask`` (a file, white on the subject) or ``mask_box`` ("X0,Y0,X1,Y1")
    says whose motion to transfer; ``new_scene`` lets the prompt set the background (``--new-scene``)."""
    if not video:
        raise UserError("no input clip: upload a video or pick a bundled sample")
    check_upload(video, VIDEO_EXTENSIONS, "the input clip")
    check_upload(mask, MASK_SUFFIXES, "the mask")
    check_upload(adapter, (".safetensors",), "the motion adapter")
    values = {name: (int(value) if name in INTEGER_KNOBS else float(value)) for name, value in knobs.items()
              if value is not None}
    flags = {"model": (model or "").strip() or None, "source_prompt": source_prompt or None, "mode": mode,
             "adapter": adapter or None, "device": device, "mask": mask or None,
             "mask_box": (mask_box or "").strip() or None, "new_scene": bool(new_scene), **values}
    trains = build_config(None, flags).trains  # fails here, before a folder is made, on bad settings
    # The name starts with the clock so that the folders sort by age.
    folder = Path(tempfile.mkdtemp(prefix=f"{_RUN_PREFIX}{time.time_ns():020d}-", dir=runs_folder))
    output = folder / f"{Path(video).stem}.sma.mp4"
    save_adapter = folder / "motion.safetensors" if trains else None
    try:
        written = transfer(Path(video), prompt, output, None, save_adapter, True, not show_progress, flags, pipelines)
    finally:
        if runs_folder is not None:
            _prune_runs(Path(runs_folder), keep_runs)
    return RunFiles(folder, written.output, written.record, written.comparison, written.adapter)


def _prune_runs(parent: Path, keep: int) -> None:
    """Remove all but the newest ``keep`` run folders in ``parent`` (only ours: the name says so)."""
    runs = sorted(path for path in parent.glob(f"{_RUN_PREFIX}*") if path.is_dir())
    for old in runs[: max(0, len(runs) - keep)]:
        shutil.rmtree(old, ignore_errors=True)


def build_app(model: str = "shapes", device: str = "auto", policy: ModelPolicy | None = None) -> Any:
    """The page, a ``gradio.Blocks`` (not yet launched); ``model`` is the model it starts with, ``policy`` what
    it may load (default: :func:`model_policy` on loopback)."""
    gr = import_gradio()
    policy = policy or model_policy("127.0.0.1", None, model)
    pipelines: dict[tuple[str | None, ...], Any] = {}  # one load per model for the life of the page
    # Removed with the page (its finalizer runs at exit); Gradio's cached copies go after an hour.
    runs_folder = tempfile.TemporaryDirectory(prefix="sma-guide-ui-")
    samples = sample_clips()

    # Gradio finds the progress tracker only among named positional parameters, hence one per knob.
    def on_run(video: str | None, prompt: str, source_prompt: str, chosen_model: str, mode: str, adapter: str | None,
               frames: int | None, steps: int | None, inversion_steps: int | None, guidance_scale: float | None,
               optimization_steps: int | None, lambda_global: float | None, lambda_local: float | None,
               train_steps: int | None, seed: int | None, window: int | None, overlap: int | None,
               mask: str | None = None, mask_box: str | None = None, new_scene: bool = False,
               progress: Any = gr.Progress(track_tqdm=True)) -> tuple[Any, ...]:
        knobs = dict(frames=frames, steps=steps, inversion_steps=inversion_steps, guidance_scale=guidance_scale,
                     optimization_steps=optimization_steps, lambda_global=lambda_global, lambda_local=lambda_local,
                     train_steps=train_steps, seed=seed, window=window, overlap=overlap)
        try:
            policy.check(chosen_model)
            files = run_transfer(video, prompt, source_prompt, chosen_model, mode, adapter, knobs, device, pipelines,
                                 runs_folder=runs_folder.name, mask=mask, mask_box=mask_box, new_scene=new_scene)
        except UserError as err:
            raise gr.Error(str(err), print_exception=False) from None
        except Exception as err:  # noqa: BLE001 — the page shows a message; the server log keeps the traceback
            log.exception("sma-guide ui: the run failed")
            raise gr.Error(f"the run failed: {type(err).__name__}: {err}", print_exception=False) from None
        adapter_file = str(files.adapter) if files.adapter is not None else None
        return (str(files.comparison), str(files.output), str(files.record),
                gr.update(value=adapter_file, visible=adapter_file is not None))

    with gr.Blocks(title="sma-guide", analytics_enabled=False, delete_cache=(3600, 3600)) as app:
        gr.Markdown("# sma-guide: motion transfer\nThe motion of the clip, the content of the prompt "
                    "(Spectral Motion Alignment on DMT). Defaults are the model's preset.")
        with gr.Row():
            with gr.Column():
                video = gr.Video(label="Input clip", sources=["upload"], elem_id="input-video")
                sample = gr.Dropdown(list(samples), value=None, label="…or a bundled sample", elem_id="sample")
                prompt = gr.Textbox(label="Prompt: what the output shows", elem_id="prompt",
                                    placeholder="a yellow triangle on a black background")
                source_prompt = gr.Textbox(label="Source prompt: what the input shows (optional)", elem_id="source-prompt")
                chosen_model = gr.Dropdown(list(policy.allowed), value=model, allow_custom_value=policy.any_local,
                                           label="Model (or a Hub id / local diffusers folder)" if policy.any_local else "Model",
                                           elem_id="model")
                mode = gr.Radio(list(MODES), value="zero-shot", label="Mode", elem_id="mode")
                new_scene = gr.Checkbox(value=False, label="New scene: the prompt sets the background too "
                                        "(repainted around the subject before the inversion)", elem_id="new-scene")
                adapter = gr.File(label="Motion adapter to reuse (.safetensors, optional)", file_types=[".safetensors"],
                                  type="filepath", elem_id="adapter")
                with gr.Accordion("Subject (optional): whose motion to transfer", open=False):
                    mask = gr.File(label="Mask: an image or a video, white on the subject", type="filepath",
                                   file_types=["image", "video"], elem_id="mask")
                    mask_box = gr.Textbox(label="…or a box X0,Y0,X1,Y1 in pixels of the input", elem_id="mask-box",
                                          placeholder="10,20,40,50")
                knobs = []
                with gr.Accordion("Settings", open=True):
                    presets = list(zip(KNOBS, preset_values(model)))
                    for row in range(0, len(presets), 3):
                        with gr.Row():
                            knobs += [gr.Number(value=value, label=label, precision=0 if name in INTEGER_KNOBS else None,
                                                elem_id=name.replace("_", "-")) for (name, _, label), value in presets[row:row + 3]]
                run = gr.Button("Run", variant="primary", elem_id="run")
            with gr.Column():
                comparison = gr.Video(label="Input | output", interactive=False, elem_id="comparison")
                output = gr.Video(label="Output video", interactive=False, buttons=["download"], elem_id="output-video")
                record = gr.File(label="Run record (JSON)", interactive=False, elem_id="record")
                adapter_out = gr.File(label="Trained motion adapter (reuse it above)", interactive=False,
                                      visible=False, elem_id="adapter-out")
        sample.change(lambda name: str(samples[name]) if name else None, sample, video)
        chosen_model.change(preset_values, chosen_model, knobs)
        run.click(on_run, [video, prompt, source_prompt, chosen_model, mode, adapter, *knobs, mask, mask_box, new_scene],
                  [comparison, output, record, adapter_out])
    app.on_run = on_run  # for tests: the handler, without a browser
    app.runs_folder = runs_folder  # lives as long as the page
    return app


def launch(host: str = "127.0.0.1", port: int = 7860, model: str = "shapes", device: str = "auto",
           auth: str | None = None, models: str | None = None, queue: int = QUEUE, max_upload_mb: int = MAX_UPLOAD_MB) -> None:
    """Serve the page at http://HOST:PORT until Ctrl-C (no share link). Beyond loopback it needs credentials
    (``auth`` "USER:PASSWORD", else :data:`AUTH_ENV`); ``models`` (comma-separated) is what it may load; one
    run at a time with ``queue`` waiting, beyond which a submission is refused; uploads up to ``max_upload_mb``."""
    credentials = parse_auth(auth if auth is not None else os.environ.get(AUTH_ENV))
    if credentials is None and not is_loopback(host):
        raise UserError(f"--host {host} opens the page to the network: give --auth USER:PASSWORD (or set {AUTH_ENV}="
                        "USER:PASSWORD, which stays out of the shell history), or serve on 127.0.0.1")
    policy = model_policy(host, models, model)
    gr = import_gradio()
    app = build_app(model, device, policy)
    try:
        # One run at a time (the cached pipelines are not thread-safe); Gradio refuses what is beyond the queue.
        app.queue(default_concurrency_limit=1, max_size=queue).launch(
            server_name=host, server_port=port, share=False, inbrowser=False, ssr_mode=False, mcp_server=False,
            pwa=False, allowed_paths=[str(SAMPLES)], theme=gr.themes.Default(**_FONTS), footer_links=[],
            auth=credentials, max_file_size=f"{max_upload_mb}mb",
        )
    except OSError as err:
        raise UserError(f"cannot serve on {host}:{port} ({err}); choose another --port or --host") from None
