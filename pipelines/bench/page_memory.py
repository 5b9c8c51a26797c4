"""Does the web page's process grow run after run? ``RUNS`` consecutive runs of the page's run function
(:func:`pipelines.frontends.ui.run_transfer`, as the page calls it: one pipeline cache, one runs folder) on two
tiny models in turn, printing after each run the process's peak and current resident memory and how many run
folders the page keeps. Run it in a fresh process — the peak is the whole process's:

    python -m pipelines.bench.page_memory [RUNS] [--json PATH]

The page keeps both models loaded (that is its cache), so the peak after the 2nd run — both loaded, one run
each — is the baseline; a leak shows as a peak that keeps rising after it.
"""

from __future__ import annotations

import json
import resource
import sys
import tempfile
import time
from pathlib import Path

MODELS = ("tiny-random", "tiny-random-animatediff")
KNOBS = {"frames": 4, "steps": 4, "inversion_steps": 4, "optimization_steps": 1, "seed": 0}


def _current_rss_kb() -> int:
    try:
        fields = Path("/proc/self/status").read_text().split("VmRSS:")[1].split()
        return int(fields[0])
    except (OSError, IndexError, ValueError):
        return 0


def measure(runs: int = 20, clip: str | Path | None = None) -> list[dict[str, float]]:
    """One record a run: ``{"run", "model", "peak_rss_mb", "rss_mb", "run_folders", "seconds"}``."""
    import torch

    from pipelines.frontends.ui import SAMPLES, run_transfer

    torch.set_num_threads(1)
    clip = Path(clip or SAMPLES / "red_circle_right.mp4")
    pipelines: dict = {}
    records = []
    with tempfile.TemporaryDirectory(prefix="sma-guide-page-memory-") as folder:
        for index in range(runs):
            model = MODELS[index % len(MODELS)]
            clock = time.perf_counter()
            run_transfer(clip, "a yellow square", "a red circle", model, "zero-shot", None, dict(KNOBS), "cpu", pipelines,
                         show_progress=False, runs_folder=folder)
            records.append({
                "run": index + 1, "model": model, "seconds": time.perf_counter() - clock,
                "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                "rss_mb": _current_rss_kb() / 1024,
                "run_folders": sum(1 for p in Path(folder).iterdir() if p.is_dir()),
            })
            print(json.dumps(records[-1]), flush=True)
    return records


def main(argv: list[str]) -> None:
    runs = int(argv[0]) if argv and not argv[0].startswith("--") else 20
    records = measure(runs)
    if "--json" in argv:
        Path(argv[argv.index("--json") + 1]).write_text(json.dumps(records, indent=2) + "\n")
    second, last = records[min(1, len(records) - 1)], records[-1]
    print(f"peak RSS after run 2: {second['peak_rss_mb']:.0f} MB; after run {last['run']}: {last['peak_rss_mb']:.0f} MB "
          f"({last['peak_rss_mb'] / second['peak_rss_mb'] - 1:+.1%}); run folders kept: {last['run_folders']}")


if __name__ == "__main__":
    main(sys.argv[1:])
