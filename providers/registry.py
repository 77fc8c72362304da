"""The one list of provider kinds (`llm.provider` values): kind -> provider class, config class, capabilities.

Everything that needs to know the kinds reads this module: `create_provider`, the daemon's config validation, the
daemon and `visual-agent check`. Adding a provider is one `register(ProviderKind(...))` call (here for the
built-in ones); config loading, the factory and the CLI then accept it. Provider classes that pull in heavy
dependencies (vllm) are named by module and imported on first use, so `import providers` stays light.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .base import Capabilities, LLMProvider
from .config import OpenAICompatibleConfig, VLLMNativeConfig, VLLMServerConfig
from .errors import ProviderConfigError

__all__ = [
    "DEFAULT_PROVIDER_KIND",
    "ProviderKind",
    "ProviderSettings",
    "embedding_kinds",
    "provider_kind",
    "provider_kinds",
    "register",
]

DEFAULT_PROVIDER_KIND = "vllm"
"""The kind a config without `provider` gets (a vLLM server on localhost): the daemon and `create_provider` agree."""


@dataclass(frozen=True, kw_only=True)
class ProviderKind:
    """One `llm.provider` value and what it means."""

    name: str
    """The value of `llm.provider` (`openai`, `vllm`, `vllm_native`, ...)."""
    module: str
    """Module holding the provider class, imported on first use (absolute, or relative to `providers`)."""
    class_name: str
    """The `LLMProvider` subclass in `module`."""
    config_class: type
    """The typed config its dict is checked against (`providers.config.config_from`)."""
    capabilities: Capabilities
    """The most the kind can do; an instance may do less (e.g. embeddings only with `enable_mm_embeds`)."""
    in_process: bool = False
    """The model runs in this process: `visual-agent check` does not load it, logs say `in-process`."""
    summary: str = ""
    """One line for docs and errors."""

    def provider_class(self) -> type[LLMProvider]:
        """The provider class (imports its module now)."""
        module = importlib.import_module(self.module, __package__ if self.module.startswith(".") else None)
        cls = getattr(module, self.class_name)
        if not (isinstance(cls, type) and issubclass(cls, LLMProvider)):
            raise ProviderConfigError(f"provider kind {self.name!r}: {self.module}.{self.class_name} is not an LLMProvider")
        return cls

    def create(self, config: Mapping[str, Any] | Any) -> LLMProvider:
        """A provider of this kind built from a config dict or its `config_class` instance."""
        return self.provider_class()(config)  # type: ignore[call-arg]

    def check_config(self, config: Mapping[str, Any]) -> Any:
        """The typed config of `config` (raises `ProviderConfigError` naming a bad key); needs no provider import."""
        from .config import config_from

        return config_from(self.config_class, dict(config))


@dataclass(frozen=True)
class ProviderSettings:
    """A provider's whole configuration, read once: its kind and that kind's typed config (what a YAML `llm`
    section becomes; `create_provider` builds from it without reading the mapping again)."""

    kind: str
    """The `llm.provider` value (a registered kind)."""
    config: Any
    """The kind's `config_class` instance (`OpenAICompatibleConfig`, `VLLMServerConfig`, `VLLMNativeConfig`, ...)."""

    @classmethod
    def from_mapping(cls, config: Mapping[str, Any]) -> ProviderSettings:
        """Read a config mapping (`provider` picks the kind, the default one when absent; the rest are its keys);
        an unknown kind or key raises `ProviderConfigError` naming it."""
        kind = provider_kind(config.get("provider", DEFAULT_PROVIDER_KIND))
        return cls(kind.name, kind.check_config(config))

    def create(self) -> LLMProvider:
        """The provider these settings describe."""
        return provider_kind(self.kind).create(self.config)


_KINDS: dict[str, ProviderKind] = {}


def register(kind: ProviderKind) -> ProviderKind:
    """Add a kind (or replace one of the same name); returns it."""
    if not kind.name or not isinstance(kind.name, str):
        raise ProviderConfigError(f"a provider kind needs a name, got {kind.name!r}")
    _KINDS[kind.name] = kind
    return kind


def provider_kinds() -> tuple[str, ...]:
    """The registered kind names, in registration order."""
    return tuple(_KINDS)


def embedding_kinds() -> tuple[str, ...]:
    """Kinds that can take precomputed image embeddings (for error messages that name them)."""
    return tuple(name for name, kind in _KINDS.items() if kind.capabilities.image_embeddings)


def provider_kind(name: str | None) -> ProviderKind:
    """The kind called `name` (None: the default); unknown names raise `ProviderConfigError` listing the known ones."""
    kind = _KINDS.get(DEFAULT_PROVIDER_KIND if name is None else name)
    if kind is None:
        raise ProviderConfigError(f"unknown provider {name!r}; choose one of {', '.join(_KINDS)}")
    return kind


register(ProviderKind(
    name="openai",
    module=".openai_compatible",
    class_name="OpenAICompatibleProvider",
    config_class=OpenAICompatibleConfig,
    capabilities=Capabilities(images=True, image_embeddings=False, streaming=True, tools=True),
    summary="any OpenAI-compatible HTTP endpoint (OpenAI, OpenRouter, Together, Ollama, vLLM serve)",
))
register(ProviderKind(
    name="vllm",
    module=".vllm_server",
    class_name="VLLMProvider",
    config_class=VLLMServerConfig,
    capabilities=Capabilities(images=True, image_embeddings=False, streaming=True, tools=True),
    summary="a vLLM OpenAI-compatible server (sampling extras, model auto-detect)",
))
register(ProviderKind(
    name="vllm_native",
    module=".vllm_native",
    class_name="VLLMNativeProvider",
    config_class=VLLMNativeConfig,
    capabilities=Capabilities(images=True, image_embeddings=True, streaming=True, tools=True),
    in_process=True,
    summary="the vLLM engine in this process; takes image embeddings with enable_mm_embeds: true",
))
