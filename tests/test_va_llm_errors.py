"""visual_agent.llm_errors: provider failures become answer errors by the providers' exception tree (isinstance)."""

from __future__ import annotations

from providers import (
    AuthenticationError,
    EngineError,
    ProviderConnectionError,
    ProviderTimeoutError,
)
from visual_agent import ErrorType
from visual_agent.llm_errors import llm_error


class GatewayTimeout(ProviderTimeoutError):
    """A provider's own subclass, named unlike anything in the tree."""


class ProviderError(Exception):  # noqa: N818 - named like the tree's base on purpose
    """Not a provider error, only named like one."""


def test_llm_error_by_isinstance_subclass_keeps_its_kind():
    err = llm_error(GatewayTimeout("slow", endpoint="http://127.0.0.1:9/v1"), "openai")
    assert err.type is ErrorType.TIMEOUT and "http://127.0.0.1:9/v1" in err.message


def test_llm_error_lookalike_name_is_internal():
    assert llm_error(ProviderError("not one of ours"), "openai").type is ErrorType.INTERNAL


def test_llm_error_each_branch():
    assert llm_error(ProviderConnectionError("refused", endpoint="e"), "p").type is ErrorType.LLM_UNREACHABLE
    assert llm_error(ConnectionResetError("reset"), "p").type is ErrorType.LLM_UNREACHABLE
    assert llm_error(AuthenticationError("no key", endpoint="e", status=401), "p").type is ErrorType.LLM_ERROR
    assert llm_error(EngineError("engine died", endpoint="e"), "p").type is ErrorType.LLM_ERROR
    assert llm_error(RuntimeError("bug"), "p").type is ErrorType.INTERNAL


def test_llm_error_masks_a_password_in_the_endpoint():
    err = llm_error(ProviderConnectionError("refused", endpoint="http://me:tok-secret@127.0.0.1:9/v1"), "openai")
    assert "tok-secret" not in err.message


def test_llm_error_names_the_endpoint_once():
    """The endpoint is in the message once, with the status where there is one (it failed before: twice)."""
    endpoint = "http://127.0.0.1:9/v1"
    for exc in (ProviderConnectionError("refused", endpoint=endpoint), GatewayTimeout("slow", endpoint=endpoint),
                AuthenticationError("no key", endpoint=endpoint, status=401)):
        message = llm_error(exc, "openai").message
        assert message.count(endpoint) == 1, message
    assert "status 401" in llm_error(AuthenticationError("no key", endpoint=endpoint, status=401), "p").message
