"""Typed provider configs built from the documented dict keys (`base_url`, `vllm_base_url`, `model_name`, ...).

Each provider takes a dict (as read from YAML) or its config object. Unknown keys are refused with the list of
known ones, so a misspelt key fails at start-up instead of being ignored. `api_key`, header values and secret-looking
keys of `extra_body`/`engine_args` (`hf_token`, ...) are masked in every repr.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from encoders.jpeg import DEFAULT_JPEG_QUALITY
from encoders.jpeg import DEFAULT_MAX_SIDE as DEFAULT_JPEG_MAX_SIDE

from .errors import ProviderConfigError

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

__all__ = [
    "DEFAULT_BASE_URL",
    "DEFAULT_JPEG_MAX_SIDE",
    "DEFAULT_JPEG_QUALITY",
    "DEFAULT_MAX_RETRIES",
    "DEFAULT_MAX_TOKENS",
    "DEFAULT_TEMPERATURE",
    "DEFAULT_TIMEOUT_S",
    "DEFAULT_VLLM_BASE_URL",
    "SECRET_KEY",
    "OpenAICompatibleConfig",
    "VLLMNativeConfig",
    "VLLMServerConfig",
    "config_from",
    "is_secret_key",
]

DEFAULT_BASE_URL = "https://api.openai.com/v1"
DEFAULT_VLLM_BASE_URL = "http://127.0.0.1:8000/v1"
DEFAULT_TEMPERATURE = 0.7
DEFAULT_MAX_TOKENS = 512
DEFAULT_TIMEOUT_S = 60.0
DEFAULT_MAX_RETRIES = 2
API_KEY_ENV = "OPENAI_API_KEY"
# Keys a config dict may carry that select the provider rather than configure it.
SELECTOR_KEYS = frozenset({"provider"})

C = TypeVar("C", bound="DataclassInstance")


def _mask(secret: str | None) -> str | None:
    return None if secret is None else "***"


SECRET_KEY = re.compile(r"(api[_-]?key|password|passwd|credential|secret|authorization|(^|_)token)$", re.IGNORECASE)
"""Keys whose values are secrets (api_key, password, hf_token; not max_tokens); the daemon's config masks by it too."""


def is_secret_key(key: str) -> bool:
    """True for a key holding a secret; a dotted key is judged by its last part."""
    return bool(SECRET_KEY.search(key.split(".")[-1]))


def _mask_secret_keys(options: Mapping[str, Any]) -> dict[str, Any]:
    """`options` for a repr: values of secret-looking keys (vLLM's `hf_token`, ...) masked, at any depth."""
    shown: dict[str, Any] = {}
    for key, value in options.items():
        if isinstance(key, str) and value and is_secret_key(key):
            shown[key] = "***"
        elif isinstance(value, Mapping):
            shown[key] = _mask_secret_keys(value)
        else:
            shown[key] = value
    return shown


def _check_sampling(temperature: float, max_tokens: int) -> None:
    if not isinstance(temperature, (int, float)) or temperature < 0:
        raise ProviderConfigError(f"temperature must be a number >= 0, got {temperature!r}")
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise ProviderConfigError(f"max_tokens must be a positive int, got {max_tokens!r}")


def _check_token_counts(context_tokens: Any, image_tokens: Any) -> None:
    for name, value in (("context_tokens", context_tokens), ("image_tokens", image_tokens)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ProviderConfigError(f"{name} must be a positive int or null, got {value!r}")


@dataclass(kw_only=True)
class OpenAICompatibleConfig:
    """Any OpenAI-compatible chat endpoint: OpenAI, a vLLM server, OpenRouter, Together, Ollama, ..."""

    base_url: str = DEFAULT_BASE_URL
    """Base URL including the API version path, e.g. `https://openrouter.ai/api/v1`."""
    api_key: str | None = field(default=None, repr=False)
    """Bearer key; None reads OPENAI_API_KEY, else sends a placeholder (local servers need none)."""
    model_name: str | None = None
    """Model to ask for; required here, optional for VLLMProvider (asked of /v1/models)."""
    temperature: float = DEFAULT_TEMPERATURE
    """Sampling temperature; 0 is greedy."""
    max_tokens: int = DEFAULT_MAX_TOKENS
    """Upper bound on generated tokens per answer."""
    timeout: float = DEFAULT_TIMEOUT_S
    """Seconds one HTTP attempt may take before ProviderTimeoutError."""
    max_retries: int = DEFAULT_MAX_RETRIES
    """Retries on connection errors, timeouts, 408/409/429/5xx (honouring Retry-After); never past the caller's
    deadline (`providers.deadline`)."""
    extra_body: dict[str, Any] = field(default_factory=dict)
    """Extra JSON fields merged into every request body (server-specific options)."""
    default_headers: dict[str, str] = field(default_factory=dict, repr=False)
    """Extra HTTP headers on every request (e.g. OpenRouter's HTTP-Referer); may hold secrets, so not shown."""
    jpeg_max_side: int = DEFAULT_JPEG_MAX_SIDE
    """Raw images are shrunk to this longest side before JPEG encoding."""
    jpeg_quality: int = DEFAULT_JPEG_QUALITY
    """JPEG quality for raw images, 1-100."""
    context_tokens: int | None = None
    """The model's context length in tokens; None: asked of the server where it says (vLLM's /v1/models), else
    learned from its first context-length refusal."""
    image_tokens: int | None = None
    """Prompt tokens one image costs this model; None: learned from the answers' reported usage."""

    def __post_init__(self) -> None:
        _check_sampling(self.temperature, self.max_tokens)
        _check_token_counts(self.context_tokens, self.image_tokens)
        if not isinstance(self.timeout, (int, float)) or self.timeout <= 0:
            raise ProviderConfigError(f"timeout must be a number of seconds > 0, got {self.timeout!r}")
        if isinstance(self.max_retries, bool) or not isinstance(self.max_retries, int) or self.max_retries < 0:
            raise ProviderConfigError(f"max_retries must be an int >= 0, got {self.max_retries!r}")
        # The JPEG encoder is built on the first image; its settings are checked now, by its own rules.
        from encoders import EncoderConfigError, JpegConfig

        try:
            JpegConfig(max_side=self.jpeg_max_side, quality=self.jpeg_quality)
        except EncoderConfigError as exc:
            raise ProviderConfigError(f"jpeg_{exc}") from None

    def resolved_api_key(self) -> str:
        """The key to send: the configured one, else OPENAI_API_KEY, else a placeholder."""
        key = self.api_key
        reveal = getattr(key, "get_secret_value", None)  # a pydantic SecretStr from the daemon's config
        if reveal is not None:
            key = reveal()
        return key or os.environ.get(API_KEY_ENV) or "EMPTY"

    def __repr__(self) -> str:
        shown = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.repr}
        shown["api_key"] = _mask(self.api_key)
        shown["extra_body"] = _mask_secret_keys(self.extra_body)
        if self.default_headers:
            shown["default_headers"] = {k: "***" for k in self.default_headers}
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in shown.items())})"


@dataclass(kw_only=True, repr=False)
class VLLMServerConfig(OpenAICompatibleConfig):
    """A vLLM OpenAI-compatible server; vLLM's sampling extras go into the request's `extra_body`."""

    base_url: str = DEFAULT_VLLM_BASE_URL
    """The server, with or without a trailing `/v1` or `/` (the documented key `vllm_base_url` maps here)."""
    top_k: int | None = None
    """vLLM sampling: consider only the k most likely tokens (None: server default)."""
    top_p: float | None = None
    """Nucleus sampling threshold (None: server default)."""
    min_p: float | None = None
    """vLLM sampling: drop tokens below this fraction of the top probability."""
    repetition_penalty: float | None = None
    """vLLM sampling: > 1 discourages repeats."""
    guided_json: dict[str, Any] | None = None
    """A JSON schema every answer must follow (sent as vLLM's `structured_outputs`)."""


@dataclass(kw_only=True, repr=False)
class VLLMNativeConfig:
    """The in-process vLLM engine; `engine_args` reaches `vllm.EngineArgs` unchanged."""

    model_name: str
    """Hugging Face id or local folder of a vision-language model (e.g. a LLaVA)."""
    enable_mm_embeds: bool = False
    """Accept precomputed image embeddings (vLLM's `enable_mm_embeds`)."""
    tensor_parallel_size: int = 1
    """Devices to shard the model over."""
    gpu_memory_utilization: float = 0.9
    """Fraction of accelerator memory vLLM may take (ignored on CPU, where kv_cache_memory_bytes rules)."""
    dtype: str = "auto"
    """Weights/activation dtype: auto, float32, bfloat16, float16."""
    max_model_len: int | None = None
    """Context length (None: the model's own)."""
    temperature: float = DEFAULT_TEMPERATURE
    """Sampling temperature; 0 is greedy."""
    max_tokens: int = DEFAULT_MAX_TOKENS
    """Upper bound on generated tokens per answer."""
    tool_parser: str | None = None
    """vLLM tool-call parser name for this model (e.g. `hermes`, `llama3_json`); None: tools are refused."""
    engine_args: dict[str, Any] = field(default_factory=dict)
    """Any other vLLM engine option, passed unchanged (wins over the keys above)."""
    image_tokens: int | None = None
    """Prompt tokens one image costs this model; None: the model's own count (embeddings) or learned."""

    def __post_init__(self) -> None:
        _check_token_counts(None, self.image_tokens)
        if not self.model_name or not isinstance(self.model_name, str):
            raise ProviderConfigError("model_name is required for vllm_native (a Hugging Face id or a local folder)")
        _check_sampling(self.temperature, self.max_tokens)
        if not isinstance(self.engine_args, Mapping):
            raise ProviderConfigError(f"engine_args must be a mapping, got {type(self.engine_args).__name__}")

    def __repr__(self) -> str:
        shown = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        shown["engine_args"] = _mask_secret_keys(self.engine_args)
        return f"VLLMNativeConfig({', '.join(f'{k}={v!r}' for k, v in shown.items())})"


_NUMBER_TYPES = frozenset({"int", "float", "int | None", "float | None"})
# The documented keys that differ from the field names.
_ALIASES: dict[type, dict[str, str]] = {VLLMServerConfig: {"vllm_base_url": "base_url", "vllm_api_key": "api_key"}}


def config_from(cls: type[C], config: Mapping[str, Any] | C | None, **overrides: Any) -> C:
    """`cls` built from a config object or a dict with the documented keys; unknown keys are refused."""
    if isinstance(config, cls):
        return dataclasses.replace(config, **overrides) if overrides else config
    if config is not None and not isinstance(config, Mapping):
        raise ProviderConfigError(f"config must be a mapping or {cls.__name__}, got {type(config).__name__}")
    raw = {**(config or {}), **overrides}
    aliases = _ALIASES.get(cls, {})
    names = {f.name for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    unknown = []
    for key, value in raw.items():
        if key in SELECTOR_KEYS:
            continue
        name = aliases.get(key, key)
        if name not in names:
            unknown.append(key)
            continue
        if name in values and key in aliases:
            continue  # an explicit field name wins over its alias
        values[name] = value
    if unknown:
        known = sorted(names | set(aliases))
        raise ProviderConfigError(f"unknown {cls.__name__} key(s) {sorted(unknown)}; known keys: {known}")
    for f in dataclasses.fields(cls):  # `true` is not 1: a number field given a boolean is a mistake, said at once
        if isinstance(values.get(f.name), bool) and str(f.type) in _NUMBER_TYPES:
            raise ProviderConfigError(f"{f.name} must be a number, not a boolean (got {values[f.name]!r})")
    try:
        return cls(**values)
    except TypeError as exc:
        raise ProviderConfigError(f"{cls.__name__}: {exc}") from exc
