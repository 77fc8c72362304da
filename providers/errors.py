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
        ├── RateLimitedError                429, `retry_after` seconds when the server said so
        └── ServerError                     5xx

Every error carries `endpoint` (the base URL, or the model path for the native engine) and `status`
(the upstream HTTP status, or None). Errors of the `openai` package are translated in one place,
`translate_openai_error`, with `raise ... from exc`; secrets passed to it are scrubbed from messages.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = [
    "AuthenticationError",
    "BadRequestError",
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
        return BadRequestError(f"the endpoint refused the request: {detail}", endpoint=endpoint, status=status)
    return ProviderError(f"{type(exc).__name__}: {detail}", endpoint=endpoint)
