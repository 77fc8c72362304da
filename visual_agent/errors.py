"""The exceptions of the `visual_agent` package, in one tree.

::

    VisualAgentError
    ├── ConfigError          (also ValueError)  a config file, key or value is wrong; names the key and the file
    ├── MessagingError                          MQTT: the broker cannot be reached or refused us
    │   └── BrokerRefusedError                  the broker answered CONNACK with a failure (auth, protocol)
    ├── EmbeddedBrokerError                     the in-process amqtt broker could not start
    └── QuestionError                           a question could not be answered; `type` is the answer's
                                                ``error.type`` (see `ErrorType`)

Errors of paho, amqtt, pydantic and the provider/webrtc packages are translated where they cross into this
package, with ``raise ... from exc``.
"""

from __future__ import annotations

import enum

__all__ = [
    "BrokerRefusedError",
    "ConfigError",
    "EmbeddedBrokerError",
    "ErrorType",
    "MessagingError",
    "QuestionError",
    "VisualAgentError",
]


class ErrorType(str, enum.Enum):
    """The ``error.type`` values an answer can carry."""

    BAD_PAYLOAD = "bad_payload"
    """The question payload is not UTF-8, too large, or JSON of the wrong shape."""
    EMPTY_QUESTION = "empty_question"
    """The question text is empty."""
    UNKNOWN_SOURCE = "unknown_source"
    """No source of that name (the message lists the known ones)."""
    NO_FRAME = "no_frame"
    """The source has not delivered a frame yet."""
    BUSY = "busy"
    """Too many questions in flight; ask again later."""
    TIMEOUT = "timeout"
    """The answer took longer than `agent.question_timeout_s`."""
    LLM_UNREACHABLE = "llm_unreachable"
    """The LLM endpoint could not be reached (connection refused, DNS, down)."""
    LLM_ERROR = "llm_error"
    """The LLM answered with an error (auth, bad request, rate limit, server error)."""
    CONTEXT_EXCEEDED = "context_exceeded"
    """The question and one frame do not fit the model's context with room for an answer (the message says what
    to change)."""
    FORBIDDEN_RESPONSE_TOPIC = "forbidden_response_topic"
    """The MQTT 5 response topic is outside `mqtt.response_topic_prefixes`; the error answer goes to `<prefix>/answer`."""
    STORE_UNAVAILABLE = "store_unavailable"
    """A question about the past, and the event store cannot be read (see `storage` in /healthz)."""
    SHUTDOWN = "shutdown"
    """The daemon stopped before the answer was ready."""
    INTERNAL = "internal"
    """A bug; the message says what broke."""


class VisualAgentError(Exception):
    """Base class of every error raised by the `visual_agent` package."""


class ConfigError(VisualAgentError, ValueError):
    """A config file or value is wrong; the message names the key and the file."""


class MessagingError(VisualAgentError):
    """The MQTT broker could not be reached, or the connection failed."""


class BrokerRefusedError(MessagingError):
    """The broker refused the connection (CONNACK failure: bad credentials, unsupported protocol, ...)."""

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class EmbeddedBrokerError(VisualAgentError):
    """The embedded amqtt broker could not start (port taken, amqtt missing)."""


class QuestionError(VisualAgentError):
    """A question could not be answered; `type` becomes the answer's ``error.type``."""

    def __init__(self, type: ErrorType, message: str, *, id: object = None) -> None:
        super().__init__(message)
        self.type = ErrorType(type)
        self.message = message
        self.id = id

    def as_dict(self) -> dict[str, str]:
        """The answer's ``error`` object."""
        return {"type": self.type.value, "message": self.message}
