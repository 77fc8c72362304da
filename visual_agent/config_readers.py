"""Reading the config sections whose keys other packages define: `llm` (providers), `webrtc` and `sources` (webrtc).

Each is read once, into that package's typed object, when the config is validated (`Config` uses these as its
fields' validators); a mistake is a `section` error whose message names the section and the key, secrets masked.
`masked` hides secrets in anything shown (secret keys at any depth, passwords and tokens in URLs).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic_core import PydanticCustomError

from providers.config import is_secret_key
from providers.registry import DEFAULT_PROVIDER_KIND, ProviderSettings, provider_kinds
from webrtc.config import SourceConfig, WebRTCConfig, mask_url_secrets

__all__ = ["Shown", "default_llm", "masked", "read_llm", "read_sources", "read_webrtc"]

def _section_error(section: str, exc: Exception) -> PydanticCustomError:
    """A section owned by another package refused its input: its own message, without the (long) input."""
    return PydanticCustomError("section", "{message}", {"message": f"{section}: {exc}"})


def read_llm(value: Any) -> ProviderSettings:
    """The `llm` section as `ProviderSettings` (providers/registry.py checks the kind and its keys)."""
    if isinstance(value, ProviderSettings):
        return value
    value = {} if value is None else value
    if not isinstance(value, Mapping):
        raise _section_error("llm", TypeError(f"must be a mapping, got {type(value).__name__}"))
    name = value.get("provider", DEFAULT_PROVIDER_KIND)
    if name not in provider_kinds():
        raise PydanticCustomError("section", "{message}", {
            "message": f"llm.provider must be one of {sorted(provider_kinds())}, got {name!r}"})
    try:
        return ProviderSettings.from_mapping(value)
    except Exception as exc:
        raise _section_error("llm", exc) from exc


def read_webrtc(value: Any) -> WebRTCConfig:
    """The `webrtc` section as `webrtc.WebRTCConfig` (its keys are defined there)."""
    if isinstance(value, WebRTCConfig):
        return value
    if not isinstance(value, Mapping):
        raise _section_error("webrtc", TypeError(f"must be a mapping, got {type(value).__name__}"))
    try:
        return WebRTCConfig.from_mapping(value)
    except Exception as exc:
        raise _section_error("webrtc", exc) from exc


def read_sources(value: Any) -> list[SourceConfig]:
    """The `sources` list as `webrtc.SourceConfig` objects (their keys are defined there)."""
    if value is None:
        return []
    if not isinstance(value, (list, tuple)):
        raise _section_error("sources", TypeError(f"must be a list, got {type(value).__name__}"))
    out = []
    for i, item in enumerate(value):
        try:
            if isinstance(item, SourceConfig):
                out.append(item)
            elif isinstance(item, Mapping):
                out.append(SourceConfig.from_mapping(item))
            else:
                raise TypeError(f"must be a mapping, got {type(item).__name__}")
        except Exception as exc:
            raise _section_error(f"sources[{i}]", exc) from exc
    return out


def default_llm() -> ProviderSettings:
    """The `llm` section of a config that has none: the default kind with its own defaults."""
    return ProviderSettings.from_mapping({"provider": DEFAULT_PROVIDER_KIND})


class Shown:
    """A value's repr with URL secrets masked (for `Config`'s repr)."""

    def __init__(self, value: Any) -> None:
        self.text = masked(repr(value))

    def __repr__(self) -> str:
        return self.text



def masked(value: Any) -> Any:
    """`value` with the values of secret keys masked, at any depth (a section's input holds its password), and
    secrets in URLs (``rtsp://user:password@camera``, ``?token=``) hidden."""
    if isinstance(value, Mapping):
        return {k: ("***" if isinstance(k, str) and is_secret_key(k) and v else masked(v)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [masked(v) for v in value]
    if isinstance(value, str):
        return mask_url_secrets(value)
    return value
