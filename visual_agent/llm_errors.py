"""`llm_error`: a provider's failure as the error of an answer, by the providers' exception tree.

The message goes out to every MQTT listener, so a password in an endpoint URL (user:token@) is masked.
"""

from __future__ import annotations

import logging

from providers.errors import ContextLengthError, ProviderConnectionError, ProviderError, ProviderTimeoutError

from .errors import ErrorType, QuestionError

__all__ = ["llm_error"]

logger = logging.getLogger(__name__)


def llm_error(exc: Exception, provider: str) -> QuestionError:
    """Map a failure while answering to an answer error: unreachable, timeout, context exceeded, LLM error, or
    internal."""
    from webrtc.config import mask_url_secrets  # here: `import visual_agent` does not load the WebRTC stack

    where = exc.endpoint if isinstance(exc, ProviderError) else None
    suffix = f" ({where})" if where else ""
    # A ProviderError's str() ends with its endpoint; the message names it once, in `suffix`.
    detail = (f"{exc.message} [status {exc.status}]" if exc.status is not None else exc.message) \
        if isinstance(exc, ProviderError) else str(exc)
    if isinstance(exc, (ProviderConnectionError, ConnectionError)):
        kind = ErrorType.LLM_UNREACHABLE
        text = f"the LLM{suffix} cannot be reached: {detail}; is it running? `visual-agent check` says what is wrong"
    elif isinstance(exc, ContextLengthError):
        kind = ErrorType.CONTEXT_EXCEEDED
        text = (f"the model{suffix} refused the request for context length even trimmed: {exc.message}; set "
                "llm.context_tokens (and llm.image_tokens) to the model's, or serve it with a longer context")
    elif isinstance(exc, ProviderTimeoutError):
        kind, text = ErrorType.TIMEOUT, f"the LLM{suffix} did not answer in time: {detail}"
    elif isinstance(exc, ProviderError):
        kind, text = ErrorType.LLM_ERROR, f"{type(exc).__name__}{suffix}: {detail}"
    else:
        logger.error("agent: unexpected %s from %s: %s", type(exc).__name__, provider, mask_url_secrets(str(exc)),
                     exc_info=exc)
        kind, text = ErrorType.INTERNAL, f"{type(exc).__name__}: {exc}"
    return QuestionError(kind, mask_url_secrets(text))
