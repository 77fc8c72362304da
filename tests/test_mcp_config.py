"""The `mcp` section: off by default, the light install never imports the SDK, and a daemon with MCP on but no SDK
fails at start with a message that says what to install."""

from __future__ import annotations

import subprocess
import sys

import pytest

from visual_agent.config import parse_config
from visual_agent.daemon import Daemon
from visual_agent.errors import ConfigError


def test_mcp_config_defaults_and_paths():
    config = parse_config({}, environ={})
    assert config.mcp.enabled is False and config.mcp.path == "/mcp"
    assert parse_config({"mcp": {"enabled": True, "path": "/agents/mcp"}}, environ={}).mcp.path == "/agents/mcp"
    for bad in ("mcp", "/offer", "/events/x", "/a b", "/"):
        with pytest.raises(ConfigError, match="mcp.path"):
            parse_config({"mcp": {"path": bad}}, environ={})
    env = parse_config({}, environ={"VISUAL_AGENT__MCP__ENABLED": "true"})
    assert env.mcp.enabled is True


def test_mcp_light_install_never_imports_the_sdk():
    code = ("import sys; import visual_agent, visual_agent.cli, visual_agent.daemon\n"
            "from visual_agent.config import parse_config\n"
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
