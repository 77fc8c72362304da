"""The daemon's side of issue 10: the page URL with its token, refusing to serve the network without one, the
/healthz detail behind the token, short unknown_source answers."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest

from tests.fixtures.daemon import daemon_process, free_tcp_port, run_cli, write_config

pytestmark = [pytest.mark.timeout(120)]

TOKEN = "daemon-test-token-abcdef0123"


def _get(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, {}


async def test_va_security_run_prints_page_url_with_token_and_hides_detail(tmp_path, stub_llm):
    page_port = free_tcp_port()
    cfg = write_config(tmp_path / "t.yaml", {
        "llm": {"provider": "openai", "base_url": stub_llm.base_url, "model_name": stub_llm.model},
        "webrtc": {"port": page_port, "host_candidate_addresses": ["127.0.0.1"]},
        "mqtt": {"enabled": False},
    })
    env = {"VISUAL_AGENT__WEBRTC__AUTH_TOKEN": TOKEN}
    async with daemon_process(cfg, page_port=page_port, log_path=tmp_path / "d.log", env=env) as daemon:
        url = f"http://127.0.0.1:{page_port}/healthz"
        assert _get(url) == (200, {"status": "ok"})
        status, detail = _get(url, {"Authorization": f"Bearer {TOKEN}"})
        assert status == 200 and "llm" in detail and "sources" in detail
        assert _get(f"http://127.0.0.1:{page_port}/webrtc-config")[0] == 401
        await daemon.terminate()
        log = daemon.log()
    lines = [line for line in log.splitlines() if TOKEN in line]
    assert lines == [f"page: http://127.0.0.1:{page_port}/#token={TOKEN}"], log  # printed once, in no log line


async def test_va_security_run_refuses_the_network_without_a_token(tmp_path):
    cfg = write_config(tmp_path / "n.yaml", {"webrtc": {"host": "0.0.0.0", "port": free_tcp_port()},
                                             "mqtt": {"enabled": False}})
    rc, out, err = await run_cli("run", "--config", str(cfg), timeout=60)
    assert rc == 2, (out, err)
    assert "webrtc.auth_token" in err and "VISUAL_AGENT__WEBRTC__AUTH_TOKEN" in err and "allow_unauthenticated" in err


def test_va_security_new_webrtc_keys_take_env_overrides():
    from visual_agent.config_loading import parse_config

    cfg = parse_config({}, environ={
        "VISUAL_AGENT__WEBRTC__AUTH_TOKEN": "1234567890123456",
        "VISUAL_AGENT__WEBRTC__ALLOWED_HOSTS": "[cam.local, 192.168.1.5]",
        "VISUAL_AGENT__WEBRTC__MAX_SOURCES": "5",
        "VISUAL_AGENT__WEBRTC__MAX_PENDING_PER_CLIENT": "3",
        "VISUAL_AGENT__WEBRTC__HEADER_TIMEOUT_S": "4",
        "VISUAL_AGENT__WEBRTC__BODY_TIMEOUT_S": "6",
        "VISUAL_AGENT__WEBRTC__TLS_CERTFILE": "/etc/va/cert.pem",
        "VISUAL_AGENT__WEBRTC__TLS_KEYFILE": "/etc/va/key.pem",
        "VISUAL_AGENT__WEBRTC__HOST": "0.0.0.0",
        "VISUAL_AGENT__WEBRTC__ALLOW_UNAUTHENTICATED": "false",
    })
    web = cfg.webrtc
    assert (web.auth_token, web.allowed_hosts, web.max_sources, web.max_pending_per_client) == (
        "1234567890123456", ["cam.local", "192.168.1.5"], 5, 3)
    assert (web.header_timeout_s, web.body_timeout_s, web.tls_certfile, web.tls_keyfile) == (
        4, 6, "/etc/va/cert.pem", "/etc/va/key.pem")
    assert "1234567890123456" not in repr(cfg) and "1234567890123456" not in repr(web)


async def test_va_security_unknown_source_answer_lists_a_few_names(tmp_path):
    from providers import create_provider
    from visual_agent.agent import VisualAgent
    from visual_agent.messages import Question
    from webrtc import SourceConfig, WebRTCConfig, WebRTCServer

    sources = [SourceConfig(name=f"cam{i:02d}", url=str(tmp_path / "none.mp4")) for i in range(40)]
    async with WebRTCServer(WebRTCConfig(port=0), sources) as driver:
        # never reached: the source is refused before the LLM is asked (port 9 listens to nobody)
        llm = create_provider({"provider": "openai", "base_url": "http://127.0.0.1:9/v1", "model_name": "m"})
        agent = VisualAgent(llm=llm, webrtc_driver=driver)
        try:
            answer = await agent.ask(Question(id="q1", question="what?", source="nope"))
        finally:
            await llm.aclose()
    assert answer.error is not None and answer.error["type"] == "unknown_source"
    message = answer.error["message"]
    assert "cam00" in message and "cam39" not in message and "35 more" in message and len(message) < 200
