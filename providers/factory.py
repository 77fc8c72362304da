"""`create_provider(config)`: the provider named by `config["provider"]`, looked up in `providers.registry`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .base import LLMProvider
from .errors import ProviderConfigError
from .registry import DEFAULT_PROVIDER_KIND, ProviderSettings, provider_kind

__all__ = ["create_provider"]


def create_provider(config: Mapping[str, Any] | ProviderSettings) -> LLMProvider:
    """A provider built from a config dict (the `llm` section of the daemon's YAML; no `provider`: the default kind)
    or from `ProviderSettings` (the daemon's config, already read)."""
    if isinstance(config, ProviderSettings):
        return config.create()
    if not isinstance(config, Mapping):
        raise ProviderConfigError(f"provider config must be a mapping, got {type(config).__name__}")
    return provider_kind(config.get("provider", DEFAULT_PROVIDER_KIND)).create(config)
