"""One entry point from a model folder to the encoder that makes that model's image embeddings.

`encoder_for(path)` reads `config.json`'s `model_type` and returns the family's encoder; each has
`embed_for_llm(images)` / `aembed_for_llm(images)` returning what `VLLMNativeProvider` takes as `image_embeddings`
for that model, and `close()`. A family we cannot encode is refused here, naming the ones we can.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .errors import CheckpointError, UnsupportedModelFamilyError

__all__ = ["SUPPORTED_FAMILIES", "encoder_for", "model_family"]

SUPPORTED_FAMILIES = {
    "llava": "LLaVA-1.5 (CLIP tower + projector, run by open_clip: ClipEncoder.from_llava)",
    "qwen2_vl": "Qwen2-VL (vision tower + patch merger: Qwen2VLEncoder)",
}


def model_family(path: str | Path) -> str:
    """The `model_type` of a local Hugging Face model folder."""
    config = Path(path).expanduser() / "config.json"
    try:
        model_type = json.loads(config.read_text()).get("model_type")
    except (OSError, ValueError) as exc:
        raise CheckpointError(
            f"cannot read {config}: {exc}; image embeddings need a local model folder (a Hugging Face id is not one)"
        ) from exc
    if not isinstance(model_type, str):
        raise CheckpointError(f"{config} has no model_type")
    return model_type


def encoder_for(path: str | Path, **options: Any) -> Any:
    """The image-embedding encoder for the model in `path`; `options` (device, dtype, ...) go to its constructor."""
    family = model_family(path)
    if family == "llava":
        from .clip import ClipEncoder

        return ClipEncoder.from_llava(path, **options)
    if family == "qwen2_vl":
        from .qwen2_vl import Qwen2VLEncoder

        return Qwen2VLEncoder(path, **options)
    supported = "; ".join(f"{name}: {what}" for name, what in SUPPORTED_FAMILIES.items())
    raise UnsupportedModelFamilyError(
        f"cannot compute image embeddings for {path}: its model_type is {family!r}; supported families are {supported}. "
        "Send raw images instead, or pass your own embedding_function."
    )
