"""One exception tree for every provider, so callers catch the same names whichever backend answers.

    ProviderError                       anything a provider raises on purpose
    ├── ProviderConfigError (ValueError)    a config key missing, misspelt or out of range
    ├── MessageFormatError (ValueError)     a message or image the provider cannot read
    ├── EmbeddingsNotSupportedError         image embeddings handed to a provider that cannot take them
    ├── EmbeddingShapeError (ValueError)    embeddings whose shape does not fit the model
    ├── ToolsNotSupportedError              tools asked of a model with no tool-call parser
    ├── ModelNotFoundError                  no model given and the server lists none
    ├── EngineError                         the in-process engine failed or is closed
    ├── ProviderConnectionError (ConnectionError)   the endpoint could not be reached
    ├── ProviderTimeoutError (TimeoutError)         no answer within the configured timeout
    └── ProviderStatusError                 the endpoint answered with an error status
        ├── AuthenticationError             401 / 403: the key is missing, wrong or not allowed
        ├── BadRequestError                 400 / 404 / 409 / 413 / 422: the request (or model name) is wrong
        │   └── ContextLengthError          the prompt (plus the answer) does not fit the model's context
        ├── RateLimitedError                429, `retry_after` seconds when the server said so
        └── ServerError                     5xx

Every error carries `endpoint` (the base URL, or the model path for the native engine) and `status`
(the upstream HTTP status, or None). Errors of the `openai` package are translated in one place,
`translate_openai_error`, with `raise ... from exc`; secrets passed to it are scrubbed from messages.
A refusal for context length is recognised by its message (`context_length_error`), whichever server wrote it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

__all__ = [
    "AuthenticationError",
    "BadRequestError",
    "ContextLengthError",
    "EmbeddingShapeError",
    "EmbeddingsNotSupportedError",
    "EngineError",
    "MessageFormatError",
    "ModelNotFoundError",
    "ProviderConfigError",
    "ProviderConnectionError",
    "ProviderError",
    "ProviderStatusError",
    "ProviderTimeoutError",
    "RateLimitedError",
    "ServerError",
    "ToolsNotSupportedError",
    "scrub",
    "context_length_error",
    "translate_openai_error",
]

MASK = "***"


class ProviderError(Exception):
    """Base of every provider error; `endpoint` and `status` say where it came from."""

    def __init__(self, message: str, *, endpoint: str | None = None, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.endpoint = endpoint
        self.status = status

    def __str__(self) -> str:
        where = []
        if self.status is not None:
            where.append(f"status {self.status}")
        if self.endpoint:
            where.append(self.endpoint)
        return f"{self.message} [{', '.join(where)}]" if where else self.message

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, endpoint={self.endpoint!r}, status={self.status!r})"


class ProviderConfigError(ProviderError, ValueError):
    """A config key is missing, misspelt or out of range."""


class MessageFormatError(ProviderError, ValueError):
    """A message, content part or image the provider cannot read."""


class EmbeddingsNotSupportedError(ProviderError):
    """Image embeddings were handed to a provider that cannot send them; they are never dropped silently."""


class EmbeddingShapeError(ProviderError, ValueError):
    """Image embeddings whose shape does not fit the model (the engine never saw them)."""


class ToolsNotSupportedError(ProviderError):
    """Tools were asked for but the model has no tool-call parser configured."""


class ModelNotFoundError(ProviderError):
    """No model name was configured and the server lists none."""


class EngineError(ProviderError):
    """The in-process engine failed, or was used after `aclose()`."""


class ProviderConnectionError(ProviderError, ConnectionError):
    """The endpoint could not be reached (refused, DNS, TLS, dropped connection)."""


class ProviderTimeoutError(ProviderError, TimeoutError):
    """The endpoint did not answer within the configured timeout."""


class ProviderStatusError(ProviderError):
    """The endpoint answered with an error status."""


class AuthenticationError(ProviderStatusError):
    """401/403: the API key is missing, wrong, or not allowed to use this model."""


class BadRequestError(ProviderStatusError):
    """The endpoint refused the request itself (bad parameters, unknown model, too long)."""


class ContextLengthError(BadRequestError):
    """The prompt (plus the answer's tokens) does not fit the model's context; `limit` is the context length and
    `input_tokens` the prompt's length when the message said them (`input_at_least`: the server counted only
    that far)."""

    def __init__(self, message: str, *, endpoint: str | None = None, status: int | None = None,
                 limit: int | None = None, input_tokens: int | None = None, input_at_least: bool = False) -> None:
        super().__init__(message, endpoint=endpoint, status=status)
        self.limit = limit
        self.input_tokens = input_tokens
        self.input_at_least = input_at_least


# How servers word a context-length refusal (vLLM's OpenAI server and engine, OpenAI, older vLLM).
_LIMIT_PATTERNS = (
    re.compile(r"maximum context length (?:is |of )?\(?(\d+)\)?", re.I),
    re.compile(r"maximum model length (?:is |of )?\(?(\d+)\)?", re.I),
    re.compile(r"max_model_len\s*=?\s*\(?(\d+)\)?", re.I),
    re.compile(r"context (?:length|window) (?:is |of )?\(?(\d+)\)?", re.I),
)
_INPUT_PATTERNS = (
    re.compile(r"input length \(?(\d+)\)?", re.I),
    re.compile(r"prompt contains (at least )?(\d+) input tokens", re.I),
    re.compile(r"prompt \(length (\d+)\)", re.I),
    re.compile(r"messages resulted in (\d+) tokens", re.I),
    re.compile(r"\((\d+) in the messages", re.I),
)
_CONTEXT_WORDS = re.compile(r"context length|model length|max_model_len|context window|max_tokens must be at least 1", re.I)


def context_length_error(message: str, *, endpoint: str | None = None, status: int | None = None) -> ContextLengthError | None:
    """A `ContextLengthError` when `message` is a context-length refusal (with the numbers it names), else None."""
    if not _CONTEXT_WORDS.search(message):
        return None
    limit = next((int(m.group(1)) for p in _LIMIT_PATTERNS if (m := p.search(message))), None)
    input_tokens, at_least = None, False
    for pattern in _INPUT_PATTERNS:
        match = pattern.search(message)
        if match:
            groups = [g for g in match.groups()]
            at_least = len(groups) == 2 and groups[0] is not None
            input_tokens = int(groups[-1])
            break
    return ContextLengthError(message, endpoint=endpoint, status=status, limit=limit, input_tokens=input_tokens,
                              input_at_least=at_least)


class RateLimitedError(ProviderStatusError):
    """429: too many requests; `retry_after` is the server's hint in seconds, or None."""

    def __init__(
        self, message: str, *, endpoint: str | None = None, status: int | None = 429, retry_after: float | None = None
    ) -> None:
        super().__init__(message, endpoint=endpoint, status=status)
        self.retry_after = retry_after


class ServerError(ProviderStatusError):
    """5xx: the endpoint failed; retrying later may help."""


def scrub(text: str, secrets: Iterable[str | None]) -> str:
    """`text` with every secret (long enough to matter) replaced by a mask."""
    for secret in secrets:
        if secret and len(secret) >= 4 and secret in text:
            text = text.replace(secret, MASK)
    return text


def _retry_after(response) -> float | None:
    if response is None:
        return None
    headers = response.headers
    try:
        if "retry-after-ms" in headers:
            return float(headers["retry-after-ms"]) / 1000.0
        if "retry-after" in headers:
            return float(headers["retry-after"])
    except ValueError:
        # An HTTP date: rare from LLM servers; say we do not know rather than guess.
        return None
    return None


def translate_openai_error(exc: BaseException, *, endpoint: str, secrets: Iterable[str | None] = ()) -> ProviderError:
    """The `ProviderError` for an exception of the `openai` package (raise it `from exc`)."""
    import openai

    secrets = list(secrets)
    detail = scrub(str(exc), secrets)
    if isinstance(exc, openai.APITimeoutError):
        return ProviderTimeoutError(f"no answer within the timeout: {detail}", endpoint=endpoint)
    if isinstance(exc, openai.APIConnectionError):
        cause = exc.__cause__ or exc.__context__
        reason = scrub(f"{type(cause).__name__}: {cause}", secrets) if cause else detail
        return ProviderConnectionError(f"cannot reach the endpoint ({reason})", endpoint=endpoint)
    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        if status in (401, 403):
            return AuthenticationError(
                f"the endpoint refused the credentials: {detail} (set api_key in the config or OPENAI_API_KEY)",
                endpoint=endpoint,
                status=status,
            )
        if status == 429:
            retry_after = _retry_after(exc.response)
            hint = f"; retry after {retry_after:g} s" if retry_after is not None else ""
            return RateLimitedError(
                f"rate limited{hint}: {detail}", endpoint=endpoint, status=status, retry_after=retry_after
            )
        if status >= 500:
            return ServerError(f"the endpoint failed: {detail}", endpoint=endpoint, status=status)
        message = f"the endpoint refused the request: {detail}"
        return (context_length_error(message, endpoint=endpoint, status=status)
                or BadRequestError(message, endpoint=endpoint, status=status))
    return ProviderError(f"{type(exc).__name__}: {detail}", endpoint=endpoint)
