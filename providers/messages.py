"""Chat messages in every form callers use, read once into one shape, then written out per backend.

A message is an OpenAI chat message. Its `content` may be
- a string;
- an OpenAI content list: `{"type": "text", "text"}`, `{"type": "image_url", "image_url": {"url"}}`, and
  `{"type": "image", "image": <raw image>}` for pixels that have not been encoded yet;
- the documented dict `{"text": ..., "images": [...], "image_embeddings": tensor}` (images come before the text,
  the order LLaVA-style models were trained on).

An image is an `av.VideoFrame`, an RGB `ndarray`, a PIL image, JPEG/PNG/GIF/WebP bytes, a `data:` URL or an
http(s) URL. HTTP providers send URLs as they are, bytes as a data URL of their own type, and pixels as JPEG
(encoded by `encoders.JpegEncoder` in a worker thread). The native engine needs pixels: see `load_image`.
"""

from __future__ import annotations

import asyncio
import base64
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .errors import EmbeddingsNotSupportedError, MessageFormatError

__all__ = [
    "EmbeddingsPart",
    "ImagePart",
    "Message",
    "TextPart",
    "has_embeddings",
    "image_mime",
    "load_image",
    "normalize_messages",
    "to_openai_messages",
]

ROLES = frozenset({"system", "developer", "user", "assistant", "tool"})
_MAGIC = (
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
)
_IMAGE_FORMS = "an av.VideoFrame, RGB ndarray, PIL image, JPEG/PNG bytes, data: URL or http(s) URL"


@dataclass(frozen=True)
class TextPart:
    text: str


@dataclass(frozen=True)
class ImagePart:
    """A raw image, image bytes, or a URL (data: or http(s)), as the caller gave it."""

    source: Any


@dataclass(frozen=True)
class EmbeddingsPart:
    """Precomputed image embeddings: a `(n_images, tokens, hidden)` tensor or a list of 2-D tensors."""

    embeddings: Any


@dataclass(frozen=True)
class OtherPart:
    """A content part we do not interpret (audio, files, ...): HTTP providers pass it through unchanged."""

    raw: Mapping[str, Any]


Part = TextPart | ImagePart | EmbeddingsPart | OtherPart


@dataclass
class Message:
    """One chat message; `parts` is None when content was a plain string (kept in `text`) or absent."""

    role: str
    text: str | None = None
    parts: list[Part] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    """Other keys of the message (`name`, `tool_calls`, `tool_call_id`), passed through."""


def image_mime(data: bytes) -> str | None:
    """The MIME type of encoded image bytes, from their magic number (None: not an image we know)."""
    for magic, mime in _MAGIC:
        if data.startswith(magic):
            return mime
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None


def _check_image(source: Any, where: str) -> ImagePart:
    if isinstance(source, str):
        if not source.startswith(("data:", "http://", "https://")):
            raise MessageFormatError(f"{where}: an image string must be a data: or http(s) URL, got {source[:40]!r}")
    elif isinstance(source, (bytes, bytearray, memoryview)):
        if image_mime(bytes(source[:16])) is None:
            raise MessageFormatError(f"{where}: image bytes are not JPEG, PNG, GIF or WebP")
    elif source is None:
        raise MessageFormatError(f"{where}: image is None; expected {_IMAGE_FORMS}")
    return ImagePart(source)


def _read_part(part: Any, where: str) -> Part:
    if isinstance(part, str):
        return TextPart(part)
    if not isinstance(part, Mapping):
        raise MessageFormatError(f"{where}: a content part must be a dict, got {type(part).__name__}")
    kind = part.get("type")
    if kind == "text":
        if not isinstance(part.get("text"), str):
            raise MessageFormatError(f"{where}: a text part needs a string 'text'")
        return TextPart(part["text"])
    if kind == "image_url":
        url = part.get("image_url")
        url = url.get("url") if isinstance(url, Mapping) else url
        if not isinstance(url, str):
            raise MessageFormatError(f"{where}: an image_url part needs image_url.url as a string")
        return _check_image(url, where)
    if kind == "image":
        return _check_image(part.get("image"), where)
    if kind in ("image_embeds", "image_embeddings"):
        return EmbeddingsPart(part.get(kind))
    if not isinstance(kind, str):
        raise MessageFormatError(f"{where}: a content part needs a 'type'")
    return OtherPart(dict(part))


def _read_dict_content(content: Mapping[str, Any], where: str) -> list[Part]:
    unknown = set(content) - {"text", "images", "image_embeddings"}
    if unknown:
        raise MessageFormatError(
            f"{where}: unknown content key(s) {sorted(unknown)}; a content dict takes text, images, image_embeddings"
        )
    parts: list[Part] = []
    images = content.get("images") or []
    if not isinstance(images, (list, tuple)):
        images = [images]
    for i, image in enumerate(images):
        parts.append(_check_image(image, f"{where}.images[{i}]"))
    if content.get("image_embeddings") is not None:
        parts.append(EmbeddingsPart(content["image_embeddings"]))
    text = content.get("text")
    if text is not None:
        if not isinstance(text, str):
            raise MessageFormatError(f"{where}.text must be a string, got {type(text).__name__}")
        parts.append(TextPart(text))
    return parts


def normalize_messages(messages: Sequence[Mapping[str, Any]]) -> list[Message]:
    """Every message read and checked; a bad one raises MessageFormatError saying which and why."""
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
        raise MessageFormatError("messages must be a list of chat messages (dicts with 'role' and 'content')")
    if not messages:
        raise MessageFormatError("messages is empty")
    out = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, Mapping):
            raise MessageFormatError(f"{where} must be a dict, got {type(message).__name__}")
        role = message.get("role")
        if role not in ROLES:
            raise MessageFormatError(f"{where}.role must be one of {sorted(ROLES)}, got {role!r}")
        content = message.get("content")
        extra = {k: v for k, v in message.items() if k not in ("role", "content")}
        if content is None or isinstance(content, str):
            out.append(Message(role, text=content, extra=extra))
        elif isinstance(content, Mapping):
            out.append(Message(role, parts=_read_dict_content(content, f"{where}.content"), extra=extra))
        elif isinstance(content, (list, tuple)):
            parts = [_read_part(p, f"{where}.content[{j}]") for j, p in enumerate(content)]
            out.append(Message(role, parts=parts, extra=extra))
        else:
            raise MessageFormatError(
                f"{where}.content must be a string, a content list or a dict, got {type(content).__name__}"
            )
    return out


def has_embeddings(messages: Sequence[Message]) -> bool:
    return any(isinstance(p, EmbeddingsPart) for m in messages for p in (m.parts or ()))


async def _image_url(source: Any, encoder: Any) -> str:
    if isinstance(source, str):
        return source
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        return f"data:{image_mime(data[:16])};base64," + base64.b64encode(data).decode("ascii")
    from encoders import ImageInputError

    try:
        return await asyncio.to_thread(encoder.data_url, source)
    except ImageInputError as exc:
        raise MessageFormatError(f"cannot encode image: {exc}; expected {_IMAGE_FORMS}") from exc


async def to_openai_messages(messages: Sequence[Message], *, encoder: Any, provider_name: str) -> list[dict[str, Any]]:
    """OpenAI wire messages; raw images become JPEG data URLs (off the loop); embeddings are refused."""
    if has_embeddings(messages):
        raise EmbeddingsNotSupportedError(
            f"{provider_name} cannot send precomputed image embeddings: the OpenAI chat API has no field for them. "
            "Use VLLMNativeProvider (provider: vllm_native, enable_mm_embeds: true), or send the raw images instead."
        )
    out = []
    for message in messages:
        wire: dict[str, Any] = {"role": message.role, **message.extra}
        if message.parts is None:
            wire["content"] = message.text
        else:
            images = [p.source for p in message.parts if isinstance(p, ImagePart)]
            urls = iter(await asyncio.gather(*(_image_url(s, encoder) for s in images)))
            content: list[dict[str, Any]] = []
            for part in message.parts:
                if isinstance(part, TextPart):
                    content.append({"type": "text", "text": part.text})
                elif isinstance(part, ImagePart):
                    content.append({"type": "image_url", "image_url": {"url": next(urls)}})
                elif isinstance(part, OtherPart):
                    content.append(dict(part.raw))
            wire["content"] = content
        out.append(wire)
    return out


def load_image(source: Any, *, fetched: bytes | None = None):
    """A PIL RGB image of any accepted image (blocking: call it in a worker thread).

    http(s) URLs must be fetched by the caller and handed in as `fetched`.
    """
    from PIL import Image

    if isinstance(source, Image.Image):
        return source.convert("RGB") if source.mode != "RGB" else source
    data: bytes | None = None
    if isinstance(source, str):
        if source.startswith("data:"):
            try:
                header, b64 = source.split(",", 1)
                data = base64.b64decode(b64) if header.endswith(";base64") else b64.encode()
            except ValueError as exc:
                raise MessageFormatError(f"malformed data: URL ({exc})") from exc
        elif fetched is not None:
            data = fetched
        else:
            raise MessageFormatError(f"image URL {source[:60]!r} was not fetched")
    elif isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
    if data is not None:
        try:
            return Image.open(io.BytesIO(data)).convert("RGB")
        except Exception as exc:  # PIL raises UnidentifiedImageError, OSError, ...
            raise MessageFormatError(f"cannot decode image bytes: {exc}") from exc
    from encoders import ImageInputError
    from encoders.frames import to_array

    try:
        return Image.fromarray(to_array(source, out="rgb"))
    except ImageInputError as exc:
        raise MessageFormatError(f"cannot read image: {exc}; expected {_IMAGE_FORMS}") from exc
