"""Provider configs, the factory and the package surface (no network, no engine)."""

from __future__ import annotations

import subprocess
import sys

import pytest

import providers
from providers import (
    OpenAICompatibleConfig,
    OpenAICompatibleProvider,
    ProviderConfigError,
    VLLMNativeConfig,
    VLLMProvider,
    VLLMServerConfig,
    create_provider,
)
from providers.config import config_from


def test_providers_exports_resolve():
    for name in providers.__all__:
        assert getattr(providers, name) is not None, name


def test_providers_import_needs_no_torch_or_vllm():
    code = "import sys, providers; assert 'torch' not in sys.modules and 'vllm' not in sys.modules, 'heavy import'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_config_unknown_key_refused_with_known_keys():
    with pytest.raises(ProviderConfigError, match="model_nmae") as info:
        OpenAICompatibleProvider({"model_nmae": "x"})
    assert "model_name" in str(info.value)


def test_config_vllm_aliases_map_to_fields():
    config = config_from(VLLMServerConfig, {"vllm_base_url": "http://h:1", "vllm_api_key": "k" * 8, "provider": "vllm"})
    assert config.base_url == "http://h:1" and config.api_key == "k" * 8


@pytest.mark.parametrize(
    "bad",
    [
        {"temperature": -1},
        {"max_tokens": 0},
        {"timeout": 0},
        {"max_retries": -1},
        {"max_tokens": True},
        {"jpeg_quality": 500},
        {"jpeg_max_side": 0},
    ],
)
def test_config_out_of_range_refused(bad):
    with pytest.raises(ProviderConfigError):
        OpenAICompatibleConfig(**bad)


def test_config_repr_masks_secrets():
    config = OpenAICompatibleConfig(api_key="sk-verysecret", default_headers={"X-Token": "hdr-secret"})
    assert "sk-verysecret" not in repr(config) and "hdr-secret" not in repr(config)
    llm = OpenAICompatibleProvider(config)
    assert "sk-verysecret" not in repr(llm) and "sk-verysecret" not in repr(llm.config)


def test_config_repr_masks_secrets_in_engine_args_and_extra_body():
    # vllm.EngineArgs takes hf_token; a proxy may want a key in the body. Their keys stay visible, values not.
    native = VLLMNativeConfig(model_name="m", engine_args={"hf_token": "hf_secret123", "max_num_seqs": 4})
    assert "hf_secret123" not in repr(native)
    assert "hf_token" in repr(native) and "'max_num_seqs': 4" in repr(native) and "max_tokens=512" in repr(native)
    server = VLLMServerConfig(extra_body={"api_key": "body-secret", "top_k": 3})
    assert "body-secret" not in repr(server) and "'top_k': 3" in repr(server)
    assert native.engine_args["hf_token"] == "hf_secret123"  # masked in the repr only


def test_config_native_requires_model_name():
    with pytest.raises(ProviderConfigError, match="model_name"):
        VLLMNativeConfig(model_name="")


def test_create_provider_picks_by_kind():
    assert type(create_provider({"provider": "openai", "model_name": "m"})) is OpenAICompatibleProvider
    assert type(create_provider({"provider": "vllm", "base_url": "http://127.0.0.1:9"})) is VLLMProvider
    assert type(create_provider({"provider": "vllm_native", "model_name": "m"})).__name__ == "VLLMNativeProvider"
    with pytest.raises(ProviderConfigError, match="vllm_native"):
        create_provider({"provider": "llamacpp"})


def test_openai_compatible_capabilities():
    caps = OpenAICompatibleProvider({"model_name": "m"}).capabilities
    assert (caps.images, caps.image_embeddings, caps.streaming, caps.tools) == (True, False, True, True)


def test_providers_expose_model_name():
    assert OpenAICompatibleProvider({"model_name": "m1"}).model == "m1"
    assert VLLMProvider({"vllm_base_url": "http://127.0.0.1:9", "model_name": "m2"}).model == "m2"
    assert create_provider({"provider": "vllm_native", "model_name": "m3"}).model == "m3"
