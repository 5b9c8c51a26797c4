"""The models that need no download, by name: one registry, light to import (no torch), so that the CLI's
help, the web page's model list and the benchmarks read the names from here.

Each family's module (:mod:`.backbones`) builds its models under these names; a bundled model is a saved
diffusers folder inside the package. The presets of these models are :data:`sma_guidance.config.MODEL_PRESETS`.
"""

from __future__ import annotations

from pathlib import Path

#: per family, a toy model built in code with seeded random weights (seconds on a CPU; its output is noise)
TINY_MODELS: dict[str, str] = {"zeroscope": "tiny-random", "animatediff": "tiny-random-animatediff", "wan": "tiny-random-wan"}
#: per family, the real architecture at full size with seeded random weights (speed, memory, precision)
ARCH_MODELS: dict[str, str] = {"zeroscope": "zeroscope-arch", "animatediff": "animatediff-arch", "wan": "wan2.1-1.3b-arch"}
#: models shipped inside the package, by name -> their diffusers folder
BUNDLED_MODELS: dict[str, Path] = {"shapes": Path(__file__).resolve().parents[1] / "shapes_model"}

__all__ = ["ARCH_MODELS", "BUNDLED_MODELS", "TINY_MODELS"]
