"""`Daemon`: wires config → embedded broker (if no broker is configured), MQTT, WebRTC ingest, LLM, encoder, agent.

Start order puts what the user sees first: the page is served and MQTT connects even when the LLM is down
(questions then get `llm_unreachable` answers and the log says what to fix). SIGINT/SIGTERM: in-flight questions
get `agent.shutdown_grace_s` to finish (then fail with `shutdown`), ``offline`` is published, peers are closed, the
process exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from typing import Any

from .agent import VisualAgent, topics
from .broker import EmbeddedBroker
from .config import Config, EmbeddingsMode
from .errors import ConfigError, VisualAgentError
from .homeassistant import HomeAssistantDiscovery
from .mqtt import MqttMessager

__all__ = ["Daemon", "build_embedding_function", "run_daemon"]

logger = logging.getLogger(__name__)

_LLM_PROBE_TIMEOUT_S = 10.0


async def build_embedding_function(config: Config, llm: Any) -> tuple[Any, Any]:
    """(embedding_function, encoder to close) for the config and provider; (None, None) means JPEG frames.

    With `encoder.embeddings: auto` the CLIP encoder serves when the provider takes embeddings.
    """
    mode = config.encoder.embeddings
    takes = bool(getattr(getattr(llm, "capabilities", None), "image_embeddings", False))
    if mode is EmbeddingsMode.OFF or (mode is EmbeddingsMode.AUTO and not takes):
        return None, None
    if not takes:
        raise ConfigError(
            f"{config.path}: encoder.embeddings is 'clip' but provider {config.provider_name()!r} cannot take image "
            "embeddings; use provider vllm_native with enable_mm_embeds: true, or set encoder.embeddings: auto"
        )
    checkpoint = config.encoder.clip_checkpoint or config.llm.get("model_name")
    if not checkpoint:
        raise ConfigError(f"{config.path}: encoder.clip_checkpoint (a LLaVA folder) is needed for CLIP embeddings")
    from encoders import ClipEncoder

    encoder = await asyncio.to_thread(ClipEncoder.from_llava, checkpoint)
    logger.info("frames go to the LLM as CLIP embeddings from %s", checkpoint)
    return encoder.aembed_for_llm, encoder


class Daemon:
    """The running product: `await start()`, then `await close()` (idempotent); or `await run_daemon(config)`."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.broker: EmbeddedBroker | None = None
        self.messager: MqttMessager | None = None
        self.driver: Any = None
        self.llm: Any = None
        self.agent: VisualAgent | None = None
        self.homeassistant: HomeAssistantDiscovery | None = None
        self.llm_state: dict[str, Any] = {"state": "unknown", "detail": config.describe_llm()}
        self._clip: Any = None
        self._probe: asyncio.Task[None] | None = None
        self._closed = False

    async def start(self) -> None:
        cfg = self.config
        try:
            if cfg.mqtt.enabled:
                await self._start_mqtt()
            from webrtc import WebRTCServer

            self.driver = WebRTCServer(cfg.webrtc_config(), cfg.source_configs())
            await self.driver.start()
            from providers import create_provider

            self.llm = create_provider(cfg.llm)
            embedding_function, self._clip = await build_embedding_function(cfg, self.llm)
            jpeg_encoder = None
            if embedding_function is None:
                from encoders import JpegEncoder

                jpeg_encoder = JpegEncoder(max_side=cfg.encoder.jpeg_max_side, quality=cfg.encoder.jpeg_quality)
            self.agent = VisualAgent(
                llm=self.llm, messager=self.messager, webrtc_driver=self.driver, embedding_function=embedding_function,
                config=cfg.agent, prefix=cfg.mqtt.prefix, provider_name=cfg.provider_name(), jpeg_encoder=jpeg_encoder,
                frames_as="embeddings" if embedding_function is not None else "jpeg",
                max_payload_bytes=cfg.mqtt.max_payload_bytes,
            )
            if self.messager is not None and cfg.mqtt.homeassistant.enabled:
                self.homeassistant = HomeAssistantDiscovery(self.messager, cfg.mqtt.prefix, cfg.mqtt.homeassistant)
                self.agent.on_answer = self.homeassistant.on_answer
            await self.agent.start()
            await self._connect_mqtt()  # after the agent subscribed: `online` means questions are taken
            self.driver.healthz_extra = self.health
            self._probe = asyncio.get_running_loop().create_task(self._probe_llm(), name="daemon-llm-probe")
        except BaseException as exc:
            await self.close()
            if _is_startup_error(exc):  # a page port in use, a provider that cannot be built: a message, not a traceback
                raise VisualAgentError(f"cannot start: {exc}") from exc
            raise
        logger.info("page: %s/", self.driver.url)
        logger.info("LLM: %s (frames as %s)", cfg.describe_llm(), "CLIP embeddings" if self._clip else "JPEG")
        if self.messager is not None:
            t = topics(cfg.mqtt.prefix)
            logger.info("MQTT: %s%s; ask on %s, answers on %s", f"{self.messager.host}:{self.messager.port}",
                        " (embedded)" if self.broker else "", t["ask"], t["answer"])

    async def _start_mqtt(self) -> None:
        mqtt = self.config.mqtt
        host, port = mqtt.broker_address()
        client_config = mqtt.for_client()
        if mqtt.embedded:
            self.broker = await EmbeddedBroker.from_config(mqtt).start()
            port = self.broker.port or port
            client_config = self.broker.daemon_client_config(client_config)  # its own credentials: may publish status
        t = topics(mqtt.prefix)
        self.messager = MqttMessager(client_config, host=host, port=port, status_topic=t["status"], name="mqtt")

    async def _connect_mqtt(self) -> None:
        """Start the messager once its subscriptions are known; the page comes up even while the broker is away."""
        if self.messager is None:
            return
        mqtt = self.config.mqtt
        host, port = self.messager.host, self.messager.port
        await self.messager.start(wait=False)  # do not wait: the messager keeps trying in the background
        with contextlib.suppress(Exception):
            await self.messager.wait_connected(min(3.0, mqtt.connect_timeout_s))
        if not self.messager.connected:
            logger.warning("MQTT broker %s:%d not reachable yet (%s); retrying in the background",
                           host, port, self.messager.last_error)

    async def _probe_llm(self) -> None:
        """Ask the LLM for its models once, so the log and /healthz say at once whether it is reachable."""
        started = time.monotonic()
        try:
            if hasattr(self.llm, "start") and self.config.provider_name() == "vllm_native":
                await self.llm.start()
                models = [self.config.llm.get("model_name")]
            else:
                models = await asyncio.wait_for(self.llm.list_models(), _LLM_PROBE_TIMEOUT_S)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            from webrtc.config import mask_url_secrets

            detail = mask_url_secrets(f"{type(exc).__name__}: {exc}")  # the endpoint may hold user:token@
            self.llm_state = {"state": "unreachable", "detail": detail}
            logger.warning("LLM %s is not reachable: %s. The page and MQTT work; questions get error answers until it "
                           "is up (`visual-agent check` says what to fix)", self.config.describe_llm(), detail)
            return
        self.llm_state = {"state": "ok", "models": models, "probe_s": round(time.monotonic() - started, 3)}
        logger.info("LLM reachable; models: %s", ", ".join(map(str, models)) or "none listed")

    def health(self) -> dict[str, Any]:
        """Broker, LLM and agent state for GET /healthz."""
        return {
            "broker": self.messager.describe() if self.messager else {"state": "disabled"},
            **({"embedded_broker": self.broker.describe()} if self.broker is not None else {}),
            "llm": {"provider": self.config.provider_name(), **self.llm_state},
            "agent": self.agent.describe_state() if self.agent else None,
        }

    async def close(self) -> None:
        """Finish or fail in-flight questions, publish offline, close peers, the LLM and the broker. Safe twice."""
        if self._closed:
            return
        self._closed = True
        if self._probe is not None:
            self._probe.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._probe
        if self.agent is not None:
            await self.agent.close()
        if self.messager is not None:
            await self.messager.close()
        if self.driver is not None:
            await self.driver.close()
        if self.llm is not None:
            with contextlib.suppress(Exception):
                await self.llm.aclose()
        if self._clip is not None:
            with contextlib.suppress(Exception):
                await self._clip.aclose()
        if self.broker is not None:
            await self.broker.close()
        logger.info("stopped")


def _is_startup_error(exc: BaseException) -> bool:
    """The webrtc and providers packages' own errors (imported here: the light import of this package stays light)."""
    from providers.errors import ProviderError
    from webrtc.errors import WebRTCError

    return isinstance(exc, (WebRTCError, ProviderError))


async def run_daemon(config: Config) -> int:
    """Run until SIGINT/SIGTERM; returns the exit code (0 on a signal)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    daemon = Daemon(config)
    try:
        await daemon.start()
        await stop.wait()
        logger.info("signal received: finishing in-flight questions, then stopping")
    finally:
        await daemon.close()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    return 0
