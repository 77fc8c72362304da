"""providers.registry: one list of kinds read by the factory, the daemon's config and `check`; one default kind."""

from __future__ import annotations

import pytest

import providers
from providers import (
    DEFAULT_PROVIDER_KIND,
    Capabilities,
    OpenAICompatibleConfig,
    OpenAICompatibleProvider,
    ProviderConfigError,
    ProviderKind,
    create_provider,
    provider_kind,
    provider_kinds,
    register,
    registry,
)
from visual_agent import ConfigError, parse_config


class EchoKindProvider(OpenAICompatibleProvider):
    """A provider of a kind the project does not ship: registered by the test, built from this module."""


@pytest.fixture
def echo_kind(monkeypatch):
    monkeypatch.setattr(registry, "_KINDS", dict(registry._KINDS))  # the registration ends with the test
    return register(ProviderKind(
        name="echo", module=__name__, class_name="EchoKindProvider", config_class=OpenAICompatibleConfig,
        capabilities=Capabilities(images=True, image_embeddings=False, streaming=True, tools=False),
    ))


def test_registry_lists_the_shipped_kinds_once():
    assert provider_kinds() == ("openai", "vllm", "vllm_native")
    assert provider_kind("vllm_native").in_process and not provider_kind("openai").in_process
    assert providers.embedding_kinds() == ("vllm_native",)


def test_registry_new_kind_is_accepted_by_config_and_factory(echo_kind):
    cfg = parse_config({"llm": {"provider": "echo", "base_url": "http://127.0.0.1:9/v1", "model_name": "m"}}, environ={})
    llm = create_provider(cfg.llm)
    assert type(llm) is EchoKindProvider and llm.model == "m"
    assert "echo" in cfg.describe_llm()


def test_registry_new_kind_config_is_checked_by_its_config_class(echo_kind):
    with pytest.raises(ConfigError, match="max_tokenz"):
        parse_config({"llm": {"provider": "echo", "model_name": "m", "max_tokenz": 3}}, environ={})


def test_registry_unknown_kind_refused_everywhere_with_the_known_ones():
    with pytest.raises(ProviderConfigError, match="openai, vllm, vllm_native"):
        create_provider({"provider": "echo"})
    with pytest.raises(ConfigError, match="echo"):
        parse_config({"llm": {"provider": "echo"}}, environ={})


def test_registry_kind_whose_class_is_not_a_provider_is_refused(monkeypatch):
    monkeypatch.setattr(registry, "_KINDS", dict(registry._KINDS))
    register(ProviderKind(name="bad", module=__name__, class_name="echo_kind", config_class=OpenAICompatibleConfig,
                          capabilities=Capabilities(images=True, image_embeddings=False, streaming=False, tools=False)))
    with pytest.raises(ProviderConfigError, match="not an LLMProvider"):
        create_provider({"provider": "bad"})


def test_registry_one_default_kind_for_config_and_factory():
    cfg = parse_config({"llm": {"model_name": "m"}}, environ={})
    assert cfg.provider_name() == DEFAULT_PROVIDER_KIND
    assert type(create_provider({"model_name": "m"})) is type(create_provider(cfg.llm))


async def test_registry_every_provider_has_start_and_aclose():
    llm = create_provider({"provider": "openai", "base_url": "http://127.0.0.1:9/v1", "model_name": "m"})
    await llm.start()  # nothing to load for an HTTP provider: no connection is opened
    await llm.start()
    await llm.aclose()
    await llm.aclose()


async def test_registry_native_preflight_checks_the_folder_without_loading(tmp_path):
    native = create_provider({"provider": "vllm_native", "model_name": str(tmp_path)})
    assert await native.preflight() == [str(tmp_path)]
    missing = create_provider({"provider": "vllm_native", "model_name": str(tmp_path / "nope")})
    with pytest.raises(ProviderConfigError, match="not a folder"):
        await missing.preflight()
