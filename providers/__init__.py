"""LLM providers: OpenAI-compatible HTTP endpoints, a vLLM server, and the in-process vLLM engine.

The kinds (`llm.provider` values) are listed once, in `providers.registry`.

`import providers` needs neither torch nor vllm: `VLLMNativeProvider` and `VLLMNativeConfig`'s engine are
imported on first access.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .base import Capabilities, ChatResponse, LLMProvider, ToolCall, ToolCallsEvent, Usage, UsageEvent
from .config import OpenAICompatibleConfig, VLLMNativeConfig, VLLMServerConfig
from .errors import (
    AuthenticationError,
    BadRequestError,
    ContextLengthError,
    EmbeddingShapeError,
    EmbeddingsNotSupportedError,
    EngineError,
    MessageFormatError,
    ModelNotFoundError,
    ProviderConfigError,
    ProviderConnectionError,
    ProviderError,
    ProviderStatusError,
    ProviderTimeoutError,
    RateLimitedError,
    ServerError,
    ToolsNotSupportedError,
)
from .factory import create_provider
from .openai_compatible import OpenAICompatibleProvider
from .registry import (
    DEFAULT_PROVIDER_KIND,
    ProviderKind,
    ProviderSettings,
    embedding_kinds,
    provider_kind,
    provider_kinds,
    register,
)
from .vllm_server import VLLMProvider, normalize_vllm_base_url

if TYPE_CHECKING:
    from .vllm_native import VLLMNativeProvider

__all__ = [
    "AuthenticationError",
    "DEFAULT_PROVIDER_KIND",
    "BadRequestError",
    "Capabilities",
    "ChatResponse",
    "ContextLengthError",
    "EmbeddingShapeError",
    "EmbeddingsNotSupportedError",
    "EngineError",
    "LLMProvider",
    "MessageFormatError",
    "ModelNotFoundError",
    "OpenAICompatibleConfig",
    "OpenAICompatibleProvider",
    "ProviderConfigError",
    "ProviderConnectionError",
    "ProviderError",
    "ProviderKind",
    "ProviderSettings",
    "ProviderStatusError",
    "ProviderTimeoutError",
    "RateLimitedError",
    "ServerError",
    "ToolCall",
    "ToolCallsEvent",
    "ToolsNotSupportedError",
    "Usage",
    "UsageEvent",
    "VLLMNativeConfig",
    "VLLMNativeProvider",
    "VLLMProvider",
    "VLLMServerConfig",
    "create_provider",
    "embedding_kinds",
    "normalize_vllm_base_url",
    "provider_kind",
    "provider_kinds",
    "register",
]


def __getattr__(name: str) -> Any:
    if name == "VLLMNativeProvider":
        from .vllm_native import VLLMNativeProvider

        return VLLMNativeProvider
    raise AttributeError(f"module 'providers' has no attribute {name!r}")
