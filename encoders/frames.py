"""One place that understands every frame type the encoders accept, so each encoder validates the same way.

A frame is an `av.VideoFrame` (any pixel format), a `numpy.ndarray` of `uint8` shaped HxWx3 (RGB by default;
pass `channel_order="bgr"` for OpenCV arrays), HxWx4 (alpha dropped) or HxW (grey), or a PIL image (any mode).
Resizing uses area averaging: libswscale's AREA for video frames (resize and colour conversion in one pass),
OpenCV's INTER_AREA for arrays. `to_jpeg_planes` gives a 4:2:0 video frame's resized Y, U and V planes in JPEG's
own colour space, so a JPEG encoder can take them without a trip through RGB.
"""

from __future__ import annotations

import enum
import threading
from typing import Any

import cv2
import numpy as np

from .errors import EncoderConfigError, ImageInputError

__all__ = ["ChannelOrder", "fit_within", "frame_size", "parse_channel_order", "to_array", "to_jpeg_planes"]

try:  # av is a core dependency, but keep the other input types usable without it
    import av as _av

    _VideoFrame: type | None = _av.VideoFrame
except ImportError:  # pragma: no cover - av is installed with the project
    _VideoFrame = None

try:
    from PIL import Image as _PILImage
except ImportError:  # pragma: no cover - pillow is installed with the project
    _PILImage = None  # type: ignore[assignment]


class ChannelOrder(str, enum.Enum):
    """How the three channels of an ndarray are ordered (video frames and PIL images say it themselves)."""

    RGB = "rgb"
    BGR = "bgr"


_OUT_FORMATS = {"rgb": "rgb24", "bgr": "bgr24", "gray": "gray"}
_EXPECTED = "an av.VideoFrame, a PIL image, or a uint8 numpy array shaped HxWx3 (RGB), HxWx4 or HxW"


def _is_pil(frame: Any) -> bool:
    return _PILImage is not None and isinstance(frame, _PILImage.Image)


def _is_video_frame(frame: Any) -> bool:
    return _VideoFrame is not None and isinstance(frame, _VideoFrame)


def _check_array(frame: np.ndarray) -> None:
    if frame.dtype != np.uint8:
        raise ImageInputError(f"image array has dtype {frame.dtype}; expected uint8 ({_EXPECTED})")
    if not (frame.ndim == 2 or (frame.ndim == 3 and frame.shape[2] in (3, 4))):
        raise ImageInputError(f"image array has shape {frame.shape}; expected {_EXPECTED}")
    if frame.shape[0] == 0 or frame.shape[1] == 0:
        raise ImageInputError(f"image array is empty (shape {frame.shape})")


def frame_size(frame: Any) -> tuple[int, int]:
    """(width, height) of any accepted frame; raises ImageInputError for anything else."""
    if _is_video_frame(frame):
        return frame.width, frame.height
    if isinstance(frame, np.ndarray):
        _check_array(frame)
        return frame.shape[1], frame.shape[0]
    if _is_pil(frame):
        if frame.width == 0 or frame.height == 0:
            raise ImageInputError(f"PIL image is empty ({frame.width}x{frame.height})")
        return frame.size
    raise ImageInputError(f"cannot encode a {type(frame).__module__}.{type(frame).__qualname__}; expected {_EXPECTED}")


def fit_within(width: int, height: int, max_side: int | None) -> tuple[int, int]:
    """The size that keeps the aspect ratio with the longer side at most `max_side`; never larger than the input."""
    if max_side is None or max(width, height) <= max_side:
        return width, height
    scale = max_side / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def parse_channel_order(channel_order: ChannelOrder | str) -> ChannelOrder:
    """'rgb'/'bgr' (any case) or a ChannelOrder, else EncoderConfigError."""
    try:
        return ChannelOrder(channel_order.lower() if isinstance(channel_order, str) else channel_order)
    except ValueError:
        raise EncoderConfigError(f"channel_order must be 'rgb' or 'bgr', got {channel_order!r}") from None


_local = threading.local()


def _thread_reformatter() -> Any:
    """This thread's libswscale converter.

    `VideoFrame.to_ndarray(width=..., format=...)` goes through a converter cached on the frame itself,
    and two threads converting one shared frame (two questions taking the same newest frame) crash or hang
    the process. One converter per thread keeps libswscale's context cache and shares nothing.
    """
    reformatter = getattr(_local, "reformatter", None)
    if reformatter is None:
        from av.video.reformatter import VideoReformatter

        reformatter = _local.reformatter = VideoReformatter()
    return reformatter


def to_array(
    frame: Any,
    *,
    size: tuple[int, int] | None = None,
    out: str = "rgb",
    channel_order: ChannelOrder | str = ChannelOrder.RGB,
) -> np.ndarray:
    """The frame as a C-contiguous uint8 array in `out` ('rgb', 'bgr' or 'gray'), resized to `size` (w, h) if given.

    For a video frame this is one libswscale pass; only the output-sized array is allocated.
    """
    if out not in _OUT_FORMATS:
        raise EncoderConfigError(f"out must be one of {sorted(_OUT_FORMATS)}, got {out!r}")
    order = parse_channel_order(channel_order)
    width, height = frame_size(frame)
    target = size or (width, height)
    if _is_video_frame(frame):
        kwargs: dict[str, Any] = {"format": _OUT_FORMATS[out]}
        if target != (width, height):
            kwargs.update(width=target[0], height=target[1], interpolation="AREA")
        try:
            # A frame already in `out`'s format and size comes back as is, and its array is a view over the
            # frame's padded lines: copy it into C order (free when no padding was there).
            return np.ascontiguousarray(_thread_reformatter().reformat(frame, **kwargs).to_ndarray())
        except Exception as exc:  # av raises ValueError/FFmpegError for odd pixel formats
            raise ImageInputError(f"cannot convert video frame ({frame.format.name}, {width}x{height}): {exc}") from exc
    if _is_pil(frame):
        if frame.mode not in ("RGB", "L"):
            frame = frame.convert("RGB")
        array = np.asarray(frame)
        order = ChannelOrder.RGB
    else:
        array = frame
    if array.ndim == 3 and array.shape[2] == 4:
        array = array[:, :, :3]
    if target != (width, height):
        array = cv2.resize(np.ascontiguousarray(array), target, interpolation=cv2.INTER_AREA)
    return _convert(array, order, out)


_PLANAR_420 = frozenset({"yuv420p", "yuvj420p"})
"""Decoder output formats whose planes are already what a 4:2:0 JPEG holds (only the range and size differ)."""


def to_jpeg_planes(frame: Any, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Y, U, V planes (views) of a 4:2:0 video frame resized to `size` (w, h), or None for any other input.

    JPEG (JFIF) holds full-range BT.601 YCbCr while decoders hand out limited-range ("MPEG") YUV, so one libswscale
    pass resizes (area) and expands the range; the planes go to the encoder as they are, with no RGB in between.
    A frame at least twice the size is first box-shrunk by a whole factor (OpenCV's integer-factor area path is a
    few times quicker than libswscale's area filter at the same reduction), so libswscale only does the last step.
    """
    if not _is_video_frame(frame) or frame.format.name not in _PLANAR_420:
        return None
    width, height = size
    try:
        source = _box_preshrink(frame, size)
        out = _planes_state().reformatter.reformat(
            source, format="yuv420p", width=width, height=height, interpolation="AREA",
            dst_colorspace="ITU601", dst_color_range="JPEG", threads=1,
        )
    except Exception as exc:  # av raises ValueError/FFmpegError for frames libswscale cannot take
        raise ImageInputError(f"cannot convert video frame ({frame.format.name}, {frame.width}x{frame.height}): {exc}") from exc
    chroma = ((width + 1) // 2, (height + 1) // 2)
    return (
        _plane(out.planes[0], width, height),
        _plane(out.planes[1], *chroma),
        _plane(out.planes[2], *chroma),
    )


class _PlanesState:
    """This thread's JPEG-planes converter and its box-shrunk intermediate frame (kept: no allocation per call)."""

    def __init__(self) -> None:
        from av.video.reformatter import VideoReformatter

        self.reformatter: Any = VideoReformatter()  # its stubs miss the string forms of the colour arguments
        self.shrunk: Any = None


def _planes_state() -> _PlanesState:
    state = getattr(_local, "planes", None)
    if state is None:
        state = _local.planes = _PlanesState()
    return state


def _box_preshrink(frame: Any, size: tuple[int, int]) -> Any:
    """The frame box-shrunk by the largest whole factor that stays at or above `size`, or the frame itself."""
    factor = min(frame.width // size[0], frame.height // size[1])
    if factor < 2:
        return frame
    width, height = frame.width // factor, frame.height // factor
    state = _planes_state()
    shrunk = state.shrunk
    if shrunk is None or (shrunk.width, shrunk.height) != (width, height):
        shrunk = state.shrunk = _VideoFrame(width, height, "yuv420p")  # type: ignore[misc]
    shrunk.color_range = frame.color_range
    shrunk.colorspace = frame.colorspace
    sizes = [(frame.width, frame.height, width, height)] + [
        ((frame.width + 1) // 2, (frame.height + 1) // 2, (width + 1) // 2, (height + 1) // 2)
    ] * 2
    for index, (src_w, src_h, dst_w, dst_h) in enumerate(sizes):
        dst = _plane(shrunk.planes[index], dst_w, dst_h)
        cv2.resize(_plane(frame.planes[index], src_w, src_h), (dst_w, dst_h), dst=dst, interpolation=cv2.INTER_AREA)
    return shrunk


def _plane(plane: Any, width: int, height: int) -> np.ndarray:
    """A frame plane as an HxW view (its lines may be padded to `line_size`)."""
    return np.frombuffer(plane, np.uint8).reshape(-1, plane.line_size)[:height, :width]


def _convert(array: np.ndarray, order: ChannelOrder, out: str) -> np.ndarray:
    if array.ndim == 2:
        if out == "gray":
            return np.ascontiguousarray(array)
        return cv2.cvtColor(np.ascontiguousarray(array), cv2.COLOR_GRAY2RGB)  # same for BGR: all channels equal
    if out == "gray":
        code = cv2.COLOR_RGB2GRAY if order is ChannelOrder.RGB else cv2.COLOR_BGR2GRAY
        return cv2.cvtColor(np.ascontiguousarray(array), code)
    if out == order.value:
        return np.ascontiguousarray(array)
    return np.ascontiguousarray(array[:, :, ::-1])
