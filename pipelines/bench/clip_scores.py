"""CLIP scores of a generated video, from CLIP weights on disk (never downloaded).

- **text alignment**: the mean over frames of the cosine between the frame's CLIP image embedding and the
  prompt's text embedding (×100 is the "CLIP score" the motion-transfer papers print: CLIP's own logit scale);
- **temporal consistency**: the mean cosine between the CLIP image embeddings of consecutive frames (DMT's and
  SMA's definition).

The weights are a transformers ``CLIPModel`` folder (``--clip-model PATH``) or, by default,
``openai/clip-vit-base-patch32`` from the Hugging Face cache, read with ``local_files_only``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

DEFAULT_CLIP = "openai/clip-vit-base-patch32"


def load_clip_scorer(model: str | Path | None = None, device: str = "cpu"
                     ) -> tuple[Callable[[np.ndarray, str], dict[str, float]] | None, str | None]:
    """``(scorer, None)`` — ``scorer(frames uint8 (F, H, W, 3), prompt) -> {"clip_text_alignment",
    "clip_temporal_consistency"}`` — or ``(None, why)`` when the weights are not on disk."""
    import torch
    from transformers import CLIPModel, CLIPProcessor

    name = str(model or DEFAULT_CLIP)
    if model is not None and not Path(name).is_dir() and ("/" not in name or Path(name).anchor):
        return None, f"CLIP model folder not found: {name}"
    try:
        clip = CLIPModel.from_pretrained(name, local_files_only=True, use_safetensors=None).to(device).eval()
        processor = CLIPProcessor.from_pretrained(name, local_files_only=True)
    except (OSError, ValueError) as error:
        if model is None:
            return None, f"{name} is not in the Hugging Face cache; pass --clip-model FOLDER (a CLIPModel folder)"
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        return None, f"{name} is not a CLIP model folder ({first[:160]}); pass --clip-model FOLDER"

    def score(frames: np.ndarray, prompt: str) -> dict[str, float]:
        with torch.no_grad():
            inputs = processor(text=[prompt], images=list(frames), return_tensors="pt", padding=True).to(device)
            images = torch.nn.functional.normalize(_embedding(clip.get_image_features(pixel_values=inputs["pixel_values"])), dim=-1)
            text = torch.nn.functional.normalize(_embedding(clip.get_text_features(
                input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])), dim=-1)
            alignment = (images @ text.T).mean()
            consecutive = (images[1:] * images[:-1]).sum(-1).mean() if len(images) > 1 else torch.tensor(float("nan"))
        return {"clip_text_alignment": float(alignment), "clip_temporal_consistency": float(consecutive)}

    return score, None


def _embedding(output):
    """transformers 5 returns a model output where 4 returned the pooled tensor."""
    return output if hasattr(output, "shape") else output.pooler_output


__all__ = ["DEFAULT_CLIP", "load_clip_scorer"]
