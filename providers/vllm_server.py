"""A vLLM OpenAI-compatible server: the documented `vllm_base_url` in any spelling, model auto-detection, vLLM's
sampling extras sent through `extra_body`. Everything else is OpenAICompatibleProvider.
"""

from __future__ import annotations

import asyncio
from typing import Any

from .config import OpenAICompatibleConfig, VLLMServerConfig
from .errors import ModelNotFoundError, ProviderConfigError
from .openai_compatible import OpenAICompatibleProvider

__all__ = ["VLLM_EXTRA_OPTIONS", "VLLMProvider", "normalize_vllm_base_url"]

# vLLM sampling options outside the OpenAI schema; per call or from config, they travel in `extra_body`.
VLLM_EXTRA_OPTIONS = frozenset(
    {
        "top_k",
        "min_p",
        "repetition_penalty",
        "min_tokens",
        "ignore_eos",
        "stop_token_ids",
        "skip_special_tokens",
        "structured_outputs",
        "guided_json",
        "chat_template_kwargs",
        "mm_processor_kwargs",
    }
)


def normalize_vllm_base_url(url: str) -> str:
    """`http://host:8000`, `.../`, `.../v1` and `.../v1/` all become `http://host:8000/v1`.

    (`url.rstrip('/v1')` would strip characters, not a suffix: `http://host:8001/v1` would lose its port's 1.)
    """
    if not isinstance(url, str) or not url.strip():
        raise ProviderConfigError("vllm_base_url is required, e.g. http://localhost:8000/v1")
    url = url.strip().rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise ProviderConfigError(f"vllm_base_url must start with http:// or https://, got {url!r}")
    return url if url.endswith("/v1") else url + "/v1"


class VLLMProvider(OpenAICompatibleProvider):
    """A vLLM server; with no `model_name` it asks `/v1/models` once, on first use."""

    config_class: type[VLLMServerConfig] = VLLMServerConfig
    config: VLLMServerConfig
    """Always a VLLMServerConfig: the base builds `config` from `config_class`."""

    def __init__(self, config: Any = None, **overrides: Any) -> None:
        super().__init__(config, **overrides)
        self._detected_model: str | None = None
        self._detect_lock = asyncio.Lock()
        self._context_length: int | None = None

    def _base_url(self, config: OpenAICompatibleConfig) -> str:
        return normalize_vllm_base_url(config.base_url)

    @property
    def model(self) -> str | None:
        """The configured model, or the detected one once a request has run (None before)."""
        return self.config.model_name or self._detected_model

    async def _model(self) -> str:
        if self.config.model_name:
            return self.config.model_name
        if self._detected_model is None:
            async with self._detect_lock:
                if self._detected_model is None:
                    models = await self.list_models()
                    if not models:
                        raise ModelNotFoundError("the server lists no models; set model_name", endpoint=self.base_url)
                    self._detected_model = models[0]
        return self._detected_model

    async def context_length(self) -> int | None:
        """`context_tokens` from the config, else the served model's `max_model_len` from `/v1/models` (asked once)."""
        if self.config.context_tokens is not None:
            return self.config.context_tokens
        if self._context_length is None:
            page = await self._retrying(self._client.models.list)
            wanted = self.config.model_name or self._detected_model
            for entry in page.data:
                length = (entry.model_extra or {}).get("max_model_len")
                if isinstance(length, int) and length > 0 and (wanted is None or entry.id == wanted):
                    self._context_length = length
                    break
        return self._context_length

    def _extra_body(self, opts: dict[str, Any]) -> dict[str, Any]:
        extra: dict[str, Any] = {}
        for name in ("top_k", "min_p", "repetition_penalty"):
            value = getattr(self.config, name)
            if value is not None:
                extra[name] = value
        if self.config.top_p is not None:
            opts.setdefault("top_p", self.config.top_p)
        if self.config.guided_json is not None:
            extra["structured_outputs"] = {"json": self.config.guided_json}
        extra.update(super()._extra_body(opts))
        for name in VLLM_EXTRA_OPTIONS & set(opts):
            extra[name] = opts.pop(name)
        if "guided_json" in extra:
            # vLLM 0.12+ reads structured output from `structured_outputs`; the older `guided_json` still works here.
            extra["structured_outputs"] = {"json": extra.pop("guided_json")}
        return extra
