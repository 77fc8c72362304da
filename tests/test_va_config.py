"""Config loading: packaged default, YAML files, environment overrides, errors naming key and file, masking."""

from __future__ import annotations

from pathlib import Path

import pytest

from visual_agent.config import Config, MqttProtocol
from visual_agent.config_loading import load_config, parse_config
from visual_agent.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def test_config_packaged_default_matches_configs_default():
    packaged = (ROOT / "visual_agent" / "default.yaml").read_bytes()
    assert packaged == (ROOT / "configs" / "default.yaml").read_bytes()
    cfg = load_config(None, environ={})
    assert cfg.mqtt.embedded and cfg.mqtt.broker_address() == ("127.0.0.1", 1883)
    assert cfg.llm.config.base_url == "http://127.0.0.1:8000/v1" and cfg.llm.config.model_name is None


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_config_every_shipped_file_validates(path):
    cfg = load_config(path, environ={})
    assert isinstance(cfg, Config)


def test_config_unknown_key_names_key_and_file(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("mqtt:\n  prefx: x\n")
    with pytest.raises(ConfigError) as info:
        load_config(f, environ={})
    assert "mqtt.prefx" in str(info.value) and str(f) in str(info.value)


def test_config_mistyped_value_names_key_and_file(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("agent:\n  max_in_flight: lots\n")
    with pytest.raises(ConfigError) as info:
        load_config(f, environ={})
    assert "agent.max_in_flight" in str(info.value) and str(f) in str(info.value) and "'lots'" in str(info.value)


def test_config_unknown_section_and_llm_key_refused(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("camera: {}\n")
    with pytest.raises(ConfigError, match="unknown key 'camera'"):
        load_config(f, environ={})
    with pytest.raises(ConfigError, match="llm.*modle_name"):
        parse_config({"llm": {"provider": "openai", "modle_name": "x"}}, environ={})
    with pytest.raises(ConfigError, match="llm.provider"):
        parse_config({"llm": {"provider": "gpt"}}, environ={})


def test_config_webrtc_and_sources_checked_by_webrtc(tmp_path):
    with pytest.raises(ConfigError, match="webrtc"):
        parse_config({"webrtc": {"prot": 1}}, environ={})
    with pytest.raises(ConfigError, match="sources"):
        parse_config({"sources": [{"name": "cam", "kind": "tape", "url": "x"}]}, environ={})


def test_config_env_overrides_nested_and_typed():
    env = {
        "VISUAL_AGENT__MQTT__PORT": "1884",
        "VISUAL_AGENT__MQTT__HOST": "broker.local",
        "VISUAL_AGENT__MQTT__TLS__ENABLED": "true",
        "VISUAL_AGENT__MQTT__PASSWORD": "12345",
        "VISUAL_AGENT__LLM__API_KEY": "sk-secret-value",
        "VISUAL_AGENT__AGENT__FRAMES": "3",
    }
    cfg = parse_config({"llm": {"provider": "openai", "model_name": "m"}}, environ=env)
    assert cfg.mqtt.port == 1884 and cfg.mqtt.host == "broker.local" and cfg.mqtt.tls.enabled
    assert cfg.mqtt.password.get_secret_value() == "12345"
    assert cfg.llm.config.api_key == "sk-secret-value" and cfg.agent.frames == 3


def test_config_secrets_masked_in_repr_and_errors():
    env = {"VISUAL_AGENT__LLM__API_KEY": "sk-secret-value", "VISUAL_AGENT__MQTT__PASSWORD": "hunter2"}
    cfg = parse_config({"llm": {"provider": "openai", "model_name": "m"}}, environ=env)
    text = repr(cfg) + str(cfg) + repr(cfg.mqtt) + str(cfg.llm_masked())
    assert "sk-secret-value" not in text and "hunter2" not in text
    with pytest.raises(ConfigError) as info:
        parse_config({"mqtt": {"password": ["hunter2"]}}, environ={})
    assert "hunter2" not in str(info.value) and "mqtt.password" in str(info.value)


def test_config_section_level_errors_mask_secrets_in_the_shown_input():
    """A section-level check (reconnect_max_s < reconnect_min_s) shows the section's input: its password is masked."""
    with pytest.raises(ConfigError) as info:
        parse_config({"mqtt": {"password": "hunter2", "reconnect_min_s": 5, "reconnect_max_s": 1}}, environ={})
    assert "reconnect_max_s" in str(info.value) and "hunter2" not in str(info.value)
    env = {"VISUAL_AGENT__LLM__DEFAULT_HEADERS__AUTHORIZATION": "Bearer sk-secret-value"}
    cfg = parse_config({"llm": {"provider": "openai", "model_name": "m"}}, environ=env)
    assert "sk-secret-value" not in repr(cfg) + str(cfg.llm_masked())
    assert cfg.llm.config.default_headers["authorization"] == "Bearer sk-secret-value"


def test_config_url_credentials_masked_in_repr_and_llm_line():
    cfg = parse_config({"llm": {"provider": "openai", "base_url": "https://me:tok-secret@llm.local/v1"},
                        "sources": [{"name": "door", "kind": "rtsp", "url": "rtsp://admin:pw-secret@cam.local/s"}]}, environ={})
    text = repr(cfg) + cfg.describe_llm() + str(cfg.llm_masked())
    assert "tok-secret" not in text and "pw-secret" not in text and "cam.local" in text and "llm.local" in text
    assert cfg.sources[0].url == "rtsp://admin:pw-secret@cam.local/s"  # masked only where shown


def test_config_llm_without_provider_is_vllm_everywhere():
    """With no `llm.provider`, what is validated, logged and built is the same provider (create_provider's own default
    is openai)."""
    from providers import create_provider

    cfg = parse_config({"llm": {"base_url": "http://127.0.0.1:9/v1"}}, environ={})
    assert cfg.provider_name() == "vllm" and cfg.describe_llm().startswith("vllm ")
    assert type(create_provider(cfg.llm)).__name__ == "VLLMProvider"


def test_config_agent_frames_bounded_by_max_frames_not_by_the_default():
    cfg = parse_config({"agent": {"frames": 12, "max_frames": 16}}, environ={})
    assert (cfg.agent.frames, cfg.agent.max_frames) == (12, 16)
    with pytest.raises(ConfigError, match="agent: frames \\(4\\) must be at most max_frames \\(2\\)"):
        parse_config({"agent": {"frames": 4, "max_frames": 2}}, environ={})


def test_config_bad_yaml_and_missing_file(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("mqtt: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(f, environ={})
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "missing.yaml", environ={})


def test_config_protocol_spellings():
    assert parse_config({"mqtt": {"protocol": 5}}, environ={}).mqtt.protocol is MqttProtocol.V5
    assert parse_config({"mqtt": {"protocol": "3.1.1"}}, environ={}).mqtt.protocol is MqttProtocol.V311
    with pytest.raises(ConfigError, match="mqtt.protocol"):
        parse_config({"mqtt": {"protocol": "4"}}, environ={})


def test_config_llm_webrtc_sources_are_typed_once():
    """The sections other packages define are their typed objects, read when the config is read."""
    from providers import ProviderSettings, VLLMServerConfig
    from webrtc import SourceConfig, WebRTCConfig

    cfg = parse_config({"llm": {"vllm_base_url": "http://127.0.0.1:9/v1", "max_tokens": 64},
                        "webrtc": {"port": 0, "buffer_max_seconds": 3},
                        "sources": [{"name": "door", "kind": "rtsp", "url": "rtsp://cam.local/s"}]}, environ={})
    assert isinstance(cfg.llm, ProviderSettings) and isinstance(cfg.llm.config, VLLMServerConfig)
    assert (cfg.llm.kind, cfg.llm.config.base_url, cfg.llm.config.max_tokens) == ("vllm", "http://127.0.0.1:9/v1", 64)
    assert isinstance(cfg.webrtc, WebRTCConfig) and cfg.webrtc.port == 0 and cfg.webrtc.buffer_max_seconds == 3
    assert cfg.webrtc.keys_set == {"port", "buffer_max_seconds"}
    assert [type(s) for s in cfg.sources] == [SourceConfig] and cfg.sources[0].name == "door"
    assert parse_config({}, environ={}).webrtc.keys_set == frozenset()
    env = {"VISUAL_AGENT__WEBRTC__BUFFER_SPREAD_FRAMES": "3"}
    assert parse_config({}, environ=env).webrtc.keys_set == {"buffer_spread_frames"}


def test_config_ingest_derives_only_the_buffer_keys_the_file_did_not_give():
    from visual_agent.daemon import ingest_config

    agent = {"max_frames": 5, "window_s": 4.0}
    derived = ingest_config(parse_config({"agent": agent}, environ={}))
    assert (derived.buffer_spread_frames, derived.buffer_max_seconds) == (4, 4.0)
    given = ingest_config(parse_config({"agent": agent, "webrtc": {"buffer_max_seconds": 1.5}}, environ={}))
    assert (given.buffer_spread_frames, given.buffer_max_seconds) == (4, 1.5)
    kept = ingest_config(parse_config({"agent": agent, "webrtc": {"buffer_spread_frames": None}}, environ={}))
    assert (kept.buffer_spread_frames, kept.buffer_max_seconds) == (None, 2.0)
    cfg = parse_config({"agent": agent}, environ={})
    ingest_config(cfg)
    assert cfg.webrtc.buffer_spread_frames is None  # the config itself is not patched


def test_config_section_errors_name_the_section_and_mask_secrets():
    with pytest.raises(ConfigError, match=r"sources\[1\]: source 'b'") as info:
        parse_config({"sources": [{"name": "a", "url": "x"}, {"name": "b", "kind": "tape",
                                                              "url": "rtsp://u:pw-secret@cam/s"}]}, environ={})
    assert "pw-secret" not in str(info.value)
    with pytest.raises(ConfigError, match="webrtc: .*must be a mapping"):
        parse_config({"webrtc": [1]}, environ={})


def test_config_one_default_per_setting():
    """The embedded broker's own defaults are the config's (a broker built in code behaves like the default config)."""
    import inspect

    from visual_agent.broker import BrokerLimits, EmbeddedBroker
    from visual_agent.config import MqttConfig

    mqtt, params = MqttConfig(), inspect.signature(EmbeddedBroker).parameters
    assert params["port"].default == mqtt.embedded_port and params["host"].default == mqtt.embedded_host
    assert BrokerLimits() == BrokerLimits.from_config(mqtt)  # every `mqtt.embedded_*` bound
    from providers import VLLMServerConfig

    assert parse_config({"llm": {"provider": "vllm"}}, environ={}).llm.config.base_url == VLLMServerConfig().base_url


@pytest.mark.parametrize("section, key", [("agent", "frames"), ("agent", "question_timeout_s"), ("mqtt", "port"),
                                          ("mqtt", "keepalive_s"), ("encoder", "jpeg_quality"), ("webrtc", "port"),
                                          ("webrtc", "buffer_max_seconds"), ("llm", "temperature"), ("llm", "max_tokens"),
                                          ("rules", None)])
def test_config_booleans_are_not_numbers(section, key):
    """`true` is refused wherever a number goes (it used to be read as 1 or 1.0), naming the key."""
    if key is None:  # a section without a numeric key: a rule's
        data = {"rules": [{"name": "r", "source": "door", "question": "q?", "check_every_s": True}]}
        key = "check_every_s"
    else:
        data = {section: {key: True}}
    with pytest.raises(ConfigError, match=f"{key}.*(boolean|bool)"):
        parse_config(data, environ={})
    env = {"VISUAL_AGENT__AGENT__MAX_IN_FLIGHT": "true"}
    with pytest.raises(ConfigError, match="max_in_flight"):
        parse_config({}, environ=env)
