"""The daemon's side of issue 10: the page URL with its token, refusing to serve the network without one, the
/healthz detail behind the token, short unknown_source answers."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pty
import signal
import urllib.error
import urllib.request

import pytest

from tests.fixtures.daemon import cli_command, daemon_process, free_tcp_port, run_cli, write_config
from tests.waiting import wait_until

pytestmark = [pytest.mark.timeout(120)]

TOKEN = "daemon-test-token-abcdef0123"
TOKEN_ENV = {"VISUAL_AGENT__WEBRTC__AUTH_TOKEN": TOKEN}


def _get(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, {}


def _token_config(tmp_path, stub_llm, page_port: int):
    return write_config(tmp_path / "t.yaml", {
        "llm": {"provider": "openai", "base_url": stub_llm.base_url, "model_name": stub_llm.model},
        "webrtc": {"port": page_port, "host_candidate_addresses": ["127.0.0.1"]},
        "mqtt": {"enabled": False},
    })


async def test_va_security_run_keeps_the_token_out_of_a_log_file_and_hides_detail(tmp_path, stub_llm):
    """stdout and stderr to a file (what a service manager does): the token is in neither."""
    page_port = free_tcp_port()
    cfg = _token_config(tmp_path, stub_llm, page_port)
    async with daemon_process(cfg, page_port=page_port, log_path=tmp_path / "d.log", env=TOKEN_ENV) as daemon:
        url = f"http://127.0.0.1:{page_port}/healthz"
        assert _get(url) == (200, {"status": "ok"})
        status, detail = _get(url, {"Authorization": f"Bearer {TOKEN}"})
        assert status == 200 and "llm" in detail and "sources" in detail
        assert _get(f"http://127.0.0.1:{page_port}/webrtc-config")[0] == 401
        await daemon.terminate()
        log = daemon.log()
    assert TOKEN not in log and "`visual-agent url` prints the URL" in log, log


async def _run_until_page_is_up(cfg, stdout) -> tuple[asyncio.subprocess.Process, bytes]:
    """`visual-agent run` with stdout as given and stderr a pipe, read until the log says the page is up."""
    proc = await asyncio.create_subprocess_exec(*cli_command(), "run", "--config", str(cfg), stdout=stdout,
                                                stderr=asyncio.subprocess.PIPE, env={**os.environ, **TOKEN_ENV})
    err = b""

    async def read_until_page() -> None:
        nonlocal err
        while b"page: " not in err:
            line = await proc.stderr.readline()
            assert line, f"run exited before serving the page: {err.decode(errors='replace')}"
            err += line

    try:
        await asyncio.wait_for(read_until_page(), 60)
    except BaseException:
        proc.kill()
        await proc.wait()
        raise
    return proc, err


async def _stop(proc: asyncio.subprocess.Process) -> tuple[bytes, bytes]:
    proc.send_signal(signal.SIGTERM)
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err
    return out or b"", err or b""


async def test_va_security_run_with_stdout_a_pipe_prints_no_token(tmp_path, stub_llm):
    page_port = free_tcp_port()
    proc, err = await _run_until_page_is_up(_token_config(tmp_path, stub_llm, page_port), asyncio.subprocess.PIPE)
    out, rest = await _stop(proc)
    output = (out + err + rest).decode(errors="replace")
    assert TOKEN not in output and f"page: http://127.0.0.1:{page_port}/ (token required" in output, output


async def test_va_security_run_on_a_terminal_prints_the_page_url_with_token(tmp_path, stub_llm):
    page_port = free_tcp_port()
    terminal, stdout = pty.openpty()
    try:
        proc, err = await _run_until_page_is_up(_token_config(tmp_path, stub_llm, page_port), stdout)
        os.close(stdout)
        shown = bytearray()
        loop = asyncio.get_running_loop()
        loop.add_reader(terminal, lambda: shown.extend(_read_terminal(terminal)))
        try:
            await wait_until(lambda: b"#token=" in shown and b"\n" in shown[shown.find(b"#token="):], timeout=30,
                             what="the page URL on the terminal")
        finally:
            loop.remove_reader(terminal)
        _, rest = await _stop(proc)
    finally:
        os.close(terminal)
        with contextlib.suppress(OSError):
            os.close(stdout)
    assert f"page: http://127.0.0.1:{page_port}/#token={TOKEN}" in shown.decode(), shown
    assert TOKEN not in (err + rest).decode(errors="replace")  # the log (stderr) never has it


def _read_terminal(fd: int) -> bytes:
    try:
        return os.read(fd, 4096)
    except OSError:  # EIO: the other side closed
        return b""


async def test_va_security_url_command_prints_the_page_url_with_token(tmp_path):
    cfg = write_config(tmp_path / "u.yaml", {"webrtc": {"port": 8443, "host": "0.0.0.0"}})
    rc, out, err = await run_cli("url", "--config", str(cfg), "--host", "192.168.1.5", env=TOKEN_ENV)
    assert (rc, out.strip()) == (0, f"http://192.168.1.5:8443/#token={TOKEN}"), err
    assert TOKEN not in err
    local = write_config(tmp_path / "l.yaml", {"webrtc": {"port": 8443}})
    rc, out, err = await run_cli("url", "--config", str(local))
    assert (rc, out.strip()) == (0, "http://127.0.0.1:8443/") and "no webrtc.auth_token" in err
    rc, out, err = await run_cli("url", env={**TOKEN_ENV, "VISUAL_AGENT__WEBRTC__PORT": "0"})
    assert rc == 2 and "webrtc.port" in err and TOKEN not in out + err


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
