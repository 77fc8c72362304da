"""The newcomer's first commands: `check` right after a daemon stopped, `check`'s output without log lines, and
`ask`'s model, latency and frame age without --json."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from tests.fixtures.daemon import free_tcp_port, run_cli, write_config
from tests.waiting import wait_until
from visual_agent.cli import _port_free, _print_answer, answer_meta

pytestmark = [pytest.mark.timeout(60)]

ROOT = Path(__file__).resolve().parents[1]


async def test_console_cli_port_probe_ignores_connections_in_time_wait():
    """A stopped daemon leaves its closed connections in TIME_WAIT; `run` binds anyway (SO_REUSEADDR), so `check`
    must not call the port in use (it did, binding without SO_REUSEADDR)."""
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", 0))
    server.listen()
    port = server.getsockname()[1]
    client = socket.create_connection(("127.0.0.1", port))
    accepted, _ = server.accept()
    accepted.close()  # the server side closes first: its end waits in TIME_WAIT
    await wait_until(lambda: client.recv(1) == b"", 5, "the client to see the close")
    client.close()
    server.close()
    assert _port_free("127.0.0.1", port)
    with socket.socket() as holder:  # a port really held is still in use
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        assert not _port_free("127.0.0.1", holder.getsockname()[1])


def test_console_cli_ask_prints_model_latency_and_frame_age_without_json(capsys):
    answer = {"id": "a", "question": "q", "text": "A red car.", "model": "smolvlm", "latency_s": 0.8234,
              "frames": [{"pts": 1, "age_s": 0.125}], "error": None}
    assert _print_answer(answer, False, False) == 0
    out, err = capsys.readouterr()
    assert out == "A red car.\n" and err == "(smolvlm · 0.82 s · frame 0.12 s old)\n"
    assert answer_meta({**answer, "frames": [{"age_s": 0.3}, {"age_s": 0.1}]}) == "smolvlm · 0.82 s · 2 frames, newest 0.10 s old"
    assert _print_answer(answer, True, False) == 0
    assert '"latency_s": 0.8234' in capsys.readouterr().out


async def test_console_cli_check_prints_its_lines_only(tmp_path, stub_llm):
    cfg = write_config(tmp_path / "c.yaml", {
        "llm": {"provider": "vllm", "base_url": stub_llm.base_url},
        "webrtc": {"port": free_tcp_port()},
        "mqtt": {"embedded_port": free_tcp_port()},
    })
    rc, out, err = await run_cli("check", "--config", str(cfg), env={"PYTHONPATH": str(ROOT)})  # this checkout's code
    assert rc == 0, (out, err)
    assert out.splitlines()[-1] == "all checks passed" and "INFO" not in out + err
