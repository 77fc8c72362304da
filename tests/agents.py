"""One `VisualAgent` over real mosquitto with an HTTP provider, for tests that drive the agent in-process."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from providers import create_provider
from visual_agent.agent import VisualAgent
from visual_agent.config import DEFAULT_MAX_PAYLOAD_BYTES, AgentConfig, MqttConfig
from visual_agent.intakes import serve
from visual_agent.mqtt import MqttMessager


@contextlib.asynccontextmanager
async def agent_over_mqtt(mosquitto: Any, prefix: str, driver: Any, llm: dict[str, Any], *, status: bool = True,
                          max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES, **agent_kw: Any) -> AsyncIterator[VisualAgent]:
    """A started agent on `driver`, asking the `openai` provider configured by `llm`; closed with its messager and
    provider. `status`: publish `<prefix>/status` as the daemon does."""
    provider = create_provider({"provider": "openai", **llm})
    messager = MqttMessager(MqttConfig(host=mosquitto.host, port=mosquitto.port, prefix=prefix, reconnect_min_s=0.1),
                            status_topic=f"{prefix}/status" if status else None)
    await messager.start()
    agent = VisualAgent(llm=provider, messager=messager, webrtc_driver=driver, config=AgentConfig(**agent_kw),
                        prefix=prefix, provider_name="openai", max_payload_bytes=max_payload_bytes)
    stack = contextlib.AsyncExitStack()
    await serve(stack, agent)
    try:
        yield agent
    finally:
        await agent.drain(0.5)
        await stack.aclose()
        await messager.close()
        await provider.aclose()


def running_agent(mosquitto: Any, driver: Any, llm_url: str, prefix: str, **agent_kw: Any):
    """`agent_over_mqtt` asking the LLM stand-in at `llm_url` (no retries, 5 s timeout, 4 KiB payloads)."""
    llm = {"base_url": llm_url, "model_name": "stub-model", "max_retries": 0, "timeout": 5}
    return agent_over_mqtt(mosquitto, prefix, driver, llm, max_payload_bytes=4096, **agent_kw)
