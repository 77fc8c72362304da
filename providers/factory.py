"""`create_provider(config)`: the provider named by `config["provider"]` (openai | vllm | vllm_native)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .base import LLMProvider
from .errors import ProviderConfigError

__all__ = ["PROVIDER_KINDS", "create_provider"]

PROVIDER_KINDS = ("openai", "vllm", "vllm_native")


def create_provider(config: Mapping[str, Any]) -> LLMProvider:
    """A provider built from a config dict (the `llm` section of the daemon's YAML)."""
    if not isinstance(config, Mapping):
        raise ProviderConfigError(f"provider config must be a mapping, got {type(config).__name__}")
    kind = config.get("provider", "openai")
    if kind == "openai":
        from .openai_compatible import OpenAICompatibleProvider

        return OpenAICompatibleProvider(config)
    if kind == "vllm":
        from .vllm_server import VLLMProvider

        return VLLMProvider(config)
    if kind == "vllm_native":
        from .vllm_native import VLLMNativeProvider

        return VLLMNativeProvider(config)
    raise ProviderConfigError(f"unknown provider {kind!r}; choose one of {', '.join(PROVIDER_KINDS)}")
