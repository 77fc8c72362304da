"""The `mcp` section: off by default, the light install never imports the SDK, and a daemon with MCP on but no SDK
fails at start with a message that says what to install."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures.daemon import run_cli, write_config
from visual_agent.config_loading import parse_config
from visual_agent.daemon import Daemon
from visual_agent.errors import ConfigError


def test_mcp_config_defaults_and_paths():
    config = parse_config({}, environ={})
    assert config.mcp.enabled is False and config.mcp.path == "/mcp"
    assert parse_config({"mcp": {"enabled": True, "path": "/agents/mcp"}}, environ={}).mcp.path == "/agents/mcp"
    for bad in ("mcp", "/offer", "/events/x", "/a b", "/"):
        with pytest.raises(ConfigError, match="mcp.path"):
            parse_config({"mcp": {"path": bad}}, environ={})
    with pytest.raises(ConfigError, match="mcp.max_in_flight"):
        parse_config({"mcp": {"max_in_flight": True}}, environ={})  # a boolean is not a number
    env = parse_config({}, environ={"VISUAL_AGENT__MCP__ENABLED": "true"})
    assert env.mcp.enabled is True


def test_mcp_light_install_never_imports_the_sdk():
    code = ("import sys; import visual_agent, visual_agent.cli, visual_agent.daemon\n"
            "from visual_agent.config_loading import parse_config\n"
            "parse_config({}, environ={})\n"
            "assert 'mcp' not in sys.modules and 'visual_agent.mcp_server.server' not in sys.modules, sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


async def test_mcp_enabled_without_the_sdk_says_what_to_install(monkeypatch):
    for name in [n for n in sys.modules if n == "mcp" or n.startswith("mcp.")] + ["mcp"]:
        monkeypatch.setitem(sys.modules, name, None)  # `import mcp...` now raises ImportError, as on the light install
    monkeypatch.delitem(sys.modules, "visual_agent.mcp_server.server", raising=False)
    config = parse_config({"mqtt": {"enabled": False}, "webrtc": {"host": "127.0.0.1", "port": 0},
                           "mcp": {"enabled": True}}, environ={})
    daemon = Daemon(config)
    with pytest.raises(ConfigError, match=r"mcp.enabled is true but the MCP SDK cannot be imported .*"
                                          r"pip install 'visual-agent\[mcp\]'"):
        await daemon.start()
    await daemon.close()


async def test_mcp_check_says_whether_the_sdk_is_there(tmp_path):
    root = Path(__file__).resolve().parents[1]
    blocked = tmp_path / "light"
    (blocked / "mcp").mkdir(parents=True)
    (blocked / "mcp" / "__init__.py").write_text("raise ImportError(\"No module named 'mcp' (the light install)\")\n")
    cfg = write_config(tmp_path / "mcp.yaml", {
        "llm": {"provider": "vllm", "base_url": "http://127.0.0.1:9/v1"}, "mqtt": {"enabled": False},
        "webrtc": {"host": "127.0.0.1", "port": 0, "auth_token": "a-long-enough-t0ken"}, "mcp": {"enabled": True}})
    rc, out, _ = await run_cli("check", "--config", str(cfg), "--timeout", "2", env={"PYTHONPATH": str(root)})
    assert "mcp     OK    tools at http://127.0.0.1:0/mcp (token required)" in out
    rc, out, _ = await run_cli("check", "--config", str(cfg), "--timeout", "2",
                               env={"PYTHONPATH": f"{blocked}:{root}"})
    assert rc != 0 and "mcp     FAIL  mcp.enabled is true but the MCP SDK cannot be imported" in out
    assert "pip install 'visual-agent[mcp]'" in out
