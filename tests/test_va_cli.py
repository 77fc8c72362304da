"""The `visual-agent` command's failure paths, run as a user runs it (subprocess)."""

from __future__ import annotations

import pytest

from tests.fixtures.daemon import free_tcp_port, run_cli, write_config

pytestmark = [pytest.mark.timeout(60)]


async def test_cli_bad_config_names_key_and_file(tmp_path):
    bad = write_config(tmp_path / "bad.yaml", {"mqtt": {"hots": "broker"}, "agent": {"frames": "many"}})
    for command in ("check", "run"):
        rc, out, err = await run_cli(command, "--config", str(bad))
        assert rc == 2, (out, err)
        assert str(bad) in err and "mqtt.hots" in err and "agent.frames" in err


async def test_cli_run_with_the_page_port_taken_says_so_without_a_traceback(tmp_path):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cfg = write_config(tmp_path / "p.yaml", {"webrtc": {"port": port}, "mqtt": {"enabled": False}})
        rc, out, err = await run_cli("run", "--config", str(cfg))
    assert rc == 2, (out, err)
    assert "error: cannot start" in err and f"127.0.0.1:{port}" in err and "Traceback" not in err


async def test_cli_check_says_what_fails(tmp_path):
    closed = free_tcp_port()
    cfg = write_config(tmp_path / "c.yaml", {
        "llm": {"provider": "vllm", "base_url": f"http://127.0.0.1:{closed}/v1", "max_retries": 0, "timeout": 2},
        "mqtt": {"host": "127.0.0.1", "port": closed, "connect_timeout_s": 1},
        "webrtc": {"port": 0},
    })
    rc, out, err = await run_cli("check", "--config", str(cfg), "--timeout", "2")
    assert rc == 1, out + err
    assert "config  OK" in out and "mqtt    FAIL" in out and "llm     FAIL" in out and "some checks failed" in out
    assert f"127.0.0.1:{closed}" in out


async def test_cli_check_refuses_a_model_family_without_an_embedding_encoder(tmp_path):
    folder = tmp_path / "mllama"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "mllama"}')
    cfg = write_config(tmp_path / "e.yaml", {
        "llm": {"provider": "vllm_native", "model_name": str(folder), "enable_mm_embeds": True},
        "mqtt": {"enabled": False}, "webrtc": {"port": 0},
    })
    rc, out, err = await run_cli("check", "--config", str(cfg), "--timeout", "2")
    assert rc == 1, out + err
    assert "encoder FAIL" in out and "'mllama'" in out and "qwen2_vl" in out and "encoder.embeddings: off" in out, out
    cfg = write_config(tmp_path / "off.yaml", {
        "llm": {"provider": "vllm_native", "model_name": str(folder), "enable_mm_embeds": True},
        "encoder": {"embeddings": "off"}, "mqtt": {"enabled": False}, "webrtc": {"port": 0},
    })
    rc, out, err = await run_cli("check", "--config", str(cfg), "--timeout", "2")
    assert "encoder OK    frames go to the LLM as JPEG" in out, out + err


@pytest.mark.mqtt
async def test_cli_ask_times_out_when_no_daemon_listens(tmp_path, running_mosquitto, topic_prefix):
    cfg = write_config(tmp_path / "a.yaml", {"mqtt": {"host": running_mosquitto.host, "port": running_mosquitto.port,
                                                      "prefix": topic_prefix}})
    rc, out, err = await run_cli("ask", "anyone?", "--config", str(cfg), "--timeout", "1")
    assert rc == 3 and "no answer within 1 s" in err, (out, err)


async def test_cli_ask_reports_unreachable_broker(tmp_path):
    cfg = write_config(tmp_path / "a.yaml", {"mqtt": {"host": "127.0.0.1", "port": free_tcp_port()}})
    rc, out, err = await run_cli("ask", "anyone?", "--config", str(cfg), "--timeout", "1")
    assert rc == 3 and "cannot reach the MQTT broker" in err, (out, err)


async def test_cli_run_sigint_exits_0_and_never_logs_secrets(tmp_path, stub_llm):
    """`visual-agent run` with the embedded broker and an API key: an error answer reaches `ask` (exit 1), SIGINT
    stops the daemon with exit 0, and the key is in no log line. The LLM is the stand-in server."""
    import signal

    from tests.fixtures.daemon import daemon_process

    page_port, mqtt_port = free_tcp_port(), free_tcp_port()
    secret = "sk-test-secret-1234567890"
    cfg = write_config(tmp_path / "s.yaml", {
        "llm": {"provider": "openai", "base_url": stub_llm.base_url, "model_name": stub_llm.model},
        "webrtc": {"port": page_port},
        "mqtt": {"embedded_port": mqtt_port},
    })
    env = {"VISUAL_AGENT__LLM__API_KEY": secret}
    async with daemon_process(cfg, page_port=page_port, log_path=tmp_path / "d.log", env=env) as daemon:
        rc, out, err = await run_cli("ask", "hello?", "--config", str(cfg), "--source", "nope", "--timeout", "20",
                                     "--log-level", "DEBUG", env=env)
        daemon.proc.send_signal(signal.SIGINT)
        code = await daemon.proc.wait()
        log = daemon.log()
    assert rc == 1 and "error (unknown_source)" in err, (out, err)
    assert code == 0, log
    assert secret not in log and secret not in out + err
    assert "stopped" in log


async def test_cli_check_masks_a_password_in_the_llm_url(tmp_path):
    closed = free_tcp_port()
    cfg = write_config(tmp_path / "c.yaml", {
        "llm": {"provider": "openai", "base_url": f"http://me:tok-secret@127.0.0.1:{closed}/v1", "model_name": "m",
                "max_retries": 0, "timeout": 2},
        "mqtt": {"enabled": False},
        "webrtc": {"port": 0},
    })
    rc, out, err = await run_cli("check", "--config", str(cfg), "--timeout", "2")
    assert rc == 1 and "llm     FAIL" in out, out + err
    assert "tok-secret" not in out + err and f"127.0.0.1:{closed}" in out
