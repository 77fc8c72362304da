"""Frames to normalised pixel tensors, exactly as the model's own image processor would make them.

Hugging Face's `CLIPImageProcessor` (transformers 5.x) resizes uint8 tensors with torchvision (bicubic,
antialias), center-crops, then rescales and normalises; PIL's bicubic differs by about one grey level, which
breaks 1e-4 parity, so this module uses the same torchvision calls on the same uint8 tensors. The same steps
express open_clip's `PreprocessCfg` ('shortest' and 'squash' resize modes) for `ClipEncoder(model_name)`.
Needs torch and torchvision (installed with open_clip).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torchvision.transforms.v2 import functional as tvF

from .errors import ImageInputError, UnsupportedVisionConfigError
from .frames import ChannelOrder, to_array

__all__ = ["OPENAI_CLIP_MEAN", "OPENAI_CLIP_STD", "PreprocessConfig", "Preprocessor"]

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
DEFAULT_RESCALE_FACTOR = 1 / 255

# PIL resample codes, as preprocessor configs store them
_RESAMPLE = {
    0: tvF.InterpolationMode.NEAREST,
    2: tvF.InterpolationMode.BILINEAR,
    3: tvF.InterpolationMode.BICUBIC,
}
_OPEN_CLIP_INTERPOLATION = {"bicubic": 3, "bilinear": 2, "nearest": 0}
# keys of a Hugging Face image-processor config that change pixels and that this module does not implement
_UNSUPPORTED_TRUE_KEYS = ("do_pad", "do_reduce_labels", "do_flip_channel_order", "image_grid_pinpoints")


@dataclass(frozen=True, kw_only=True)
class PreprocessConfig:
    """Resize, crop and normalisation of a vision model's input, in the order CLIPImageProcessor applies them."""

    shortest_edge: int | None = 224
    """Resize so the shorter side has this length (aspect kept, longer side truncated like HF);
    None: see `resize_to`."""
    resize_to: tuple[int, int] | None = None
    """(height, width) to resize to, ignoring aspect; used when `shortest_edge` is None."""
    resample: int = 3
    """PIL resample code: 0 nearest, 2 bilinear, 3 bicubic (antialiased, as torchvision does it)."""
    crop_size: tuple[int, int] | None = (224, 224)
    """(height, width) of the center crop after resizing (zero-padded if larger); None: no crop."""
    rescale_factor: float | None = DEFAULT_RESCALE_FACTOR
    """Factor from uint8 to [0, 1]; None: no rescale."""
    image_mean: tuple[float, float, float] | None = OPENAI_CLIP_MEAN
    """Per-channel mean subtracted after rescaling; None: no normalisation."""
    image_std: tuple[float, float, float] = OPENAI_CLIP_STD
    """Per-channel standard deviation divided by after subtracting the mean."""

    def __post_init__(self) -> None:
        if self.resample not in _RESAMPLE:
            raise UnsupportedVisionConfigError(
                f"preprocessor resample={self.resample} is not supported (use 0, 2 or 3)"
            )
        if self.shortest_edge is None and self.resize_to is None and self.crop_size is None:
            raise UnsupportedVisionConfigError("preprocessor config gives no size: neither resize nor crop")

    @property
    def output_size(self) -> tuple[int, int] | None:
        """(height, width) of every output image, when fixed."""
        return self.crop_size or (self.resize_to if self.shortest_edge is None else None)

    @classmethod
    def from_hf(cls, cfg: dict[str, Any]) -> PreprocessConfig:
        """From a Hugging Face image-processor config (`preprocessor_config.json` or `processor_config.json`'s part)."""
        for key in _UNSUPPORTED_TRUE_KEYS:
            if cfg.get(key):
                raise UnsupportedVisionConfigError(
                    f"preprocessor config sets {key}={cfg[key]!r}, which is not supported"
                )
        shortest_edge = resize_to = crop = None
        if cfg.get("do_resize", True):
            size = cfg.get("size", {"shortest_edge": 224})
            if isinstance(size, int):
                size = {"shortest_edge": size}
            if "shortest_edge" in size and "longest_edge" not in size:
                shortest_edge = int(size["shortest_edge"])
            elif "height" in size and "width" in size:
                resize_to = (int(size["height"]), int(size["width"]))
            else:
                raise UnsupportedVisionConfigError(
                    f"preprocessor size={size!r} is not supported (shortest_edge or height/width)"
                )
        if cfg.get("do_center_crop", True):
            c = cfg.get("crop_size", {"height": 224, "width": 224})
            crop = (int(c), int(c)) if isinstance(c, int) else (int(c["height"]), int(c["width"]))
        if shortest_edge is None and resize_to is None and crop is None:
            raise UnsupportedVisionConfigError("preprocessor config neither resizes nor crops: image size undefined")
        mean = std = None
        if cfg.get("do_normalize", True):
            mean, std = _triple(cfg.get("image_mean", OPENAI_CLIP_MEAN)), _triple(cfg.get("image_std", OPENAI_CLIP_STD))
        return cls(
            shortest_edge=shortest_edge,
            resize_to=resize_to,
            resample=int(cfg.get("resample", 3)),
            crop_size=crop,
            rescale_factor=(
                float(cfg.get("rescale_factor", DEFAULT_RESCALE_FACTOR)) if cfg.get("do_rescale", True) else None
            ),
            image_mean=mean,
            image_std=std if std is not None else OPENAI_CLIP_STD,
        )

    @classmethod
    def from_open_clip(cls, cfg: dict[str, Any]) -> PreprocessConfig:
        """From an open_clip model's `visual.preprocess_cfg` (size, mean, std, interpolation, resize_mode)."""
        size = cfg.get("size", 224)
        h, w = (size, size) if isinstance(size, int) else tuple(size)
        interpolation = cfg.get("interpolation", "bicubic")
        if interpolation not in _OPEN_CLIP_INTERPOLATION:
            raise UnsupportedVisionConfigError(f"open_clip interpolation={interpolation!r} is not supported")
        mode = cfg.get("resize_mode", "shortest")
        common: dict[str, Any] = dict(
            resample=_OPEN_CLIP_INTERPOLATION[interpolation],
            image_mean=_triple(cfg.get("mean", OPENAI_CLIP_MEAN)),
            image_std=_triple(cfg.get("std", OPENAI_CLIP_STD)),
        )
        if mode == "shortest":
            return cls(shortest_edge=min(h, w), crop_size=(h, w), **common)
        if mode == "squash":
            return cls(shortest_edge=None, resize_to=(h, w), crop_size=None, **common)
        raise UnsupportedVisionConfigError(f"open_clip resize_mode={mode!r} is not supported ('shortest' or 'squash')")


def _triple(values: Any) -> tuple[float, float, float]:
    values = (values,) * 3 if isinstance(values, (int, float)) else tuple(float(v) for v in values)
    if len(values) != 3:
        raise UnsupportedVisionConfigError(f"image mean/std must have 3 values, got {values!r}")
    return values


def _resize_shape(height: int, width: int, shortest_edge: int) -> tuple[int, int]:
    """HF's get_resize_output_image_size(default_to_square=False): short side exact, long side truncated."""
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = shortest_edge, int(shortest_edge * long / short)
    return (new_long, new_short) if width <= height else (new_short, new_long)


class Preprocessor:
    """Turns a batch of frames into the (n, 3, H, W) float32 tensor the vision tower takes."""

    def __init__(self, config: PreprocessConfig) -> None:
        self.config = config
        if config.image_mean is not None:
            scale = config.rescale_factor or 1.0
            # fused like transformers: (x - mean/scale) / (std/scale), one pass over float32
            self._mean = torch.tensor(config.image_mean, dtype=torch.float32) * (1.0 / scale)
            self._std = torch.tensor(config.image_std, dtype=torch.float32) * (1.0 / scale)

    def __repr__(self) -> str:
        return f"Preprocessor({self.config})"

    def to_uint8_chw(self, frame: Any, channel_order: ChannelOrder | str = ChannelOrder.RGB) -> torch.Tensor:
        """An accepted frame as a (3, H, W) uint8 RGB tensor."""
        array = to_array(frame, out="rgb", channel_order=channel_order)
        if not array.flags.writeable:  # PIL's buffer: torch refuses to wrap read-only memory silently
            array = array.copy()
        return torch.from_numpy(array).permute(2, 0, 1)

    def one(self, image: torch.Tensor) -> torch.Tensor:
        """Resize and crop one (3, H, W) uint8 tensor (still uint8, like transformers before normalising)."""
        cfg = self.config
        interpolation = _RESAMPLE[cfg.resample]
        if cfg.shortest_edge is not None:
            size = _resize_shape(image.shape[-2], image.shape[-1], cfg.shortest_edge)
            image = tvF.resize(image, list(size), interpolation=interpolation, antialias=True)
        elif cfg.resize_to is not None:
            image = tvF.resize(image, list(cfg.resize_to), interpolation=interpolation, antialias=True)
        if cfg.crop_size is not None:
            image = _center_crop(image, cfg.crop_size)
        return image

    def __call__(
        self, frames: Sequence[Any], *, channel_order: ChannelOrder | str = ChannelOrder.RGB
    ) -> torch.Tensor:
        """(n, 3, H, W) float32 pixel values for a list of frames."""
        if not frames:
            raise ImageInputError("no images given")
        images = [self.one(self.to_uint8_chw(f, channel_order)) for f in frames]
        shapes = {tuple(i.shape) for i in images}
        if len(shapes) > 1:
            raise ImageInputError(
                f"preprocessing gave images of different sizes {sorted(shapes)}; the config has no crop"
            )
        batch = torch.stack(images)
        if self.config.image_mean is not None:
            batch = tvF.normalize(batch.to(torch.float32), self._mean.tolist(), self._std.tolist(), inplace=True)
        elif self.config.rescale_factor is not None:
            batch = batch.to(torch.float32) * self.config.rescale_factor
        else:
            batch = batch.to(torch.float32)
        return batch


def _center_crop(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """transformers' TorchvisionBackend.center_crop: zero-pad when smaller, then crop at the truncated center."""
    crop_h, crop_w = size
    height, width = image.shape[-2:]
    if crop_w > width or crop_h > height:
        pad = [
            (crop_w - width) // 2 if crop_w > width else 0,
            (crop_h - height) // 2 if crop_h > height else 0,
            (crop_w - width + 1) // 2 if crop_w > width else 0,
            (crop_h - height + 1) // 2 if crop_h > height else 0,
        ]
        image = tvF.pad(image, pad, fill=0)
        height, width = image.shape[-2:]
        if (height, width) == (crop_h, crop_w):
            return image
    top, left = int((height - crop_h) / 2.0), int((width - crop_w) / 2.0)
    return tvF.crop(image, top, left, crop_h, crop_w)
