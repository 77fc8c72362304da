"""Frames to JPEG bytes and `data:` URLs for HTTP providers, fast enough to run on every sampled frame.

The video-frame path touches only the sampled frame. A 4:2:0 frame (what VP8 and H.264 decoders hand out) is resized
plane by plane (OpenCV's box shrink by a whole factor, then libswscale's area filter with the range expanded to
JPEG's) and its Y, U and V planes go straight to libjpeg-turbo's YUV-planes encoder through `simplejpeg`: no RGB in
between, a third quicker (BENCHMARKS.md, "Encoders"). Without `simplejpeg`, and for other frames, libswscale
converts to BGR and OpenCV's libjpeg-turbo encodes. Arrays and PIL images are area-resized with OpenCV.
The aspect ratio is kept and images are never upscaled. `aencode`/`adata_url` run in a worker thread so the
event loop (and RTP reception) never waits on the encoder. To skip re-encoding a static scene, wrap calls in an
`EmbeddingCache`: `cache.get_or_compute(frame, encoder.data_url, namespace="jpeg")`.
"""

from __future__ import annotations

import asyncio
import base64
from dataclasses import dataclass
from typing import Any

import cv2

from .errors import EncoderConfigError, EncodingError
from .frames import ChannelOrder, fit_within, frame_size, to_array, to_jpeg_planes

try:  # a core dependency; without it (a platform with no wheel) video frames take the BGR path
    import simplejpeg as _simplejpeg
except ImportError:  # pragma: no cover - installed with the project
    _simplejpeg = None

__all__ = ["DEFAULT_JPEG_QUALITY", "DEFAULT_MAX_SIDE", "JpegConfig", "JpegEncoder"]

DEFAULT_MAX_SIDE = 512
DEFAULT_JPEG_QUALITY = 85
JPEG_MIME = "image/jpeg"


@dataclass(frozen=True, kw_only=True)
class JpegConfig:
    """How frames become JPEG."""

    max_side: int | None = DEFAULT_MAX_SIDE
    """Longest side of the output in pixels; larger frames are shrunk (aspect kept), smaller ones kept.
    None: never resize."""
    quality: int = DEFAULT_JPEG_QUALITY
    """libjpeg quality, 1 (smallest) to 100 (best)."""

    def __post_init__(self) -> None:
        side = self.max_side
        if side is not None and (isinstance(side, bool) or not isinstance(side, int) or side < 1):
            raise EncoderConfigError(f"max_side must be a positive int or None, got {self.max_side!r}")
        if isinstance(self.quality, bool) or not isinstance(self.quality, int) or not 1 <= self.quality <= 100:
            raise EncoderConfigError(f"quality must be an int from 1 to 100, got {self.quality!r}")


class JpegEncoder:
    """Encode an `av.VideoFrame`, an RGB (or, with `channel_order="bgr"`, BGR) uint8 ndarray or a PIL image as JPEG."""

    def __init__(self, max_side: int | None = DEFAULT_MAX_SIDE, quality: int = DEFAULT_JPEG_QUALITY) -> None:
        self.config = JpegConfig(max_side=max_side, quality=quality)
        self._params = [cv2.IMWRITE_JPEG_QUALITY, self.config.quality]

    @classmethod
    def from_config(cls, config: JpegConfig) -> JpegEncoder:
        return cls(max_side=config.max_side, quality=config.quality)

    def __repr__(self) -> str:
        return f"JpegEncoder(max_side={self.config.max_side}, quality={self.config.quality})"

    def output_size(self, frame: Any) -> tuple[int, int]:
        """(width, height) the JPEG of this frame will have."""
        return fit_within(*frame_size(frame), self.config.max_side)

    def encode(self, frame: Any, *, channel_order: ChannelOrder | str = ChannelOrder.RGB) -> bytes:
        """JPEG bytes of the frame; `channel_order` says how a 3- or 4-channel ndarray is ordered ('rgb' or 'bgr')."""
        size = self.output_size(frame)
        if _simplejpeg is not None:
            planes = to_jpeg_planes(frame, size)
            if planes is not None:
                return self._encode_planes(*planes)
        bgr = to_array(frame, size=size, out="bgr", channel_order=channel_order)
        ok, buf = cv2.imencode(".jpg", bgr, self._params)
        if not ok:
            raise EncodingError(f"libjpeg refused a {bgr.shape[1]}x{bgr.shape[0]} image")
        return buf.tobytes()

    def _encode_planes(self, y: Any, u: Any, v: Any) -> bytes:
        try:
            return bytes(_simplejpeg.encode_jpeg_yuv_planes(y, u, v, quality=self.config.quality))
        except Exception as exc:  # simplejpeg raises ValueError/RuntimeError for planes libjpeg-turbo refuses
            raise EncodingError(f"libjpeg-turbo refused {y.shape[1]}x{y.shape[0]} YUV planes: {exc}") from exc

    def data_url(self, frame: Any, *, channel_order: ChannelOrder | str = ChannelOrder.RGB) -> str:
        """`data:image/jpeg;base64,...` of the frame, what OpenAI-compatible `image_url` parts take."""
        jpeg = self.encode(frame, channel_order=channel_order)
        return f"data:{JPEG_MIME};base64," + base64.b64encode(jpeg).decode("ascii")

    async def aencode(self, frame: Any, *, channel_order: ChannelOrder | str = ChannelOrder.RGB) -> bytes:
        """`encode` in a worker thread."""
        return await asyncio.to_thread(self.encode, frame, channel_order=channel_order)

    async def adata_url(self, frame: Any, *, channel_order: ChannelOrder | str = ChannelOrder.RGB) -> str:
        """`data_url` in a worker thread."""
        return await asyncio.to_thread(self.data_url, frame, channel_order=channel_order)
