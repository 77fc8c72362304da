"""`Daemon`: wires config → embedded broker (if no broker is configured), MQTT, WebRTC ingest, LLM, encoder, agent.

Start order puts what the user sees first: the page is served and MQTT connects even when the LLM is down
(questions then get `llm_unreachable` answers and the log says what to fix). Each part is put on one
`AsyncExitStack` as it starts, so `close()` (and a failed start) undoes exactly what was started, in reverse:
the LLM probe, the rules, the intakes (descriptions stop, in-flight questions get `agent.shutdown_grace_s` to finish,
then fail with `shutdown`), the agent, the peers, the MQTT connection (``offline`` is published), the LLM, the
encoder, the embedded broker, the traces. SIGINT/SIGTERM close it; the process exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import faulthandler
import json
import logging
import os
import signal
import time
from typing import TYPE_CHECKING, Any

from .agent import VisualAgent
from .broker import EmbeddedBroker
from .broker_metrics import BrokerCollector
from .config import Config
from .console import Console
from .encoding import FrameEncoding
from .errors import ConfigError, QuestionError, VisualAgentError
from .homeassistant import HomeAssistantDiscovery
from .intakes import Intakes, serve
from .memory.service import MemoryService
from .metrics import AgentMetrics
from .mqtt import MqttMessager
from .page_link import show_on_terminal
from .rules import RuleControl, RuleDiscovery, RuleEngine
from .subscription_check import SubscriptionCheck
from .tasks import cancel_and_wait
from .telemetry import Telemetry
from .topics import Topics

if TYPE_CHECKING:
    from providers import LLMProvider
    from webrtc import WebRTCServer

__all__ = ["Daemon", "build_frame_encoding", "run_daemon"]

logger = logging.getLogger(__name__)

_LLM_PROBE_TIMEOUT_S = 10.0
STOP_WATCHDOG_S = 10.0
"""Beyond the questions' grace, what a stop may take (MQTT flush and disconnect, the event store) before the watchdog;
with the default grace (5 s) it fires before systemd's `TimeoutStopSec=20` kills the process without a word."""


async def build_frame_encoding(config: Config, llm: LLMProvider) -> FrameEncoding:
    """The `encoder` section applied to this provider, its embedding encoder (picked by the model folder's family)
    loaded now when it will serve.

    A mode the provider cannot take, a model family no encoder computes, or a checkpoint that cannot be loaded is a
    `ConfigError` naming the file.
    """
    try:
        encoding = FrameEncoding.from_config(config.encoder, llm, provider_name=config.provider_name())
    except ValueError as exc:
        raise ConfigError(f"{config.path}: {exc}") from None
    from encoders import EncoderError

    try:
        await encoding.start()
    except QuestionError as exc:
        raise ConfigError(f"{config.path}: {exc.message}") from None
    except EncoderError as exc:  # a model folder the encoder cannot read, torch/open_clip missing
        await encoding.aclose()
        raise ConfigError(f"{config.path}: cannot load the embedding encoder: {exc}") from None
    return encoding


def ingest_config(config: Config) -> Any:
    """The `webrtc` section, with buffers that keep what sampling can use when the section does not say: the newest
    frame and `agent.max_frames - 1` older ones spread over at least `agent.window_s` (not 32 consecutive decoded
    frames), so a question for `agent.max_frames` frames still gets them all; the older ones kept at
    `encoder.jpeg_max_side`, the size they are sent at."""
    from dataclasses import replace

    webrtc = config.webrtc
    given = webrtc.keys_set
    derived: dict[str, Any] = {}
    if "buffer_older_max_side" not in given:
        derived["buffer_older_max_side"] = config.encoder.jpeg_max_side
    if "buffer_spread_frames" not in given:
        derived["buffer_spread_frames"] = max(1, config.agent.max_frames - 1)
        if "buffer_max_seconds" not in given:
            derived["buffer_max_seconds"] = max(webrtc.buffer_max_seconds, config.agent.window_s)
    return replace(webrtc, **derived) if derived else webrtc


class Daemon:
    """The running product: `await start()`, then `await close()` (idempotent); or `await run_daemon(config)`."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.broker: EmbeddedBroker | None = None
        self.messager: MqttMessager | None = None
        self.driver: WebRTCServer | None = None
        self.llm: LLMProvider | None = None
        self.agent: VisualAgent | None = None
        self.homeassistant: HomeAssistantDiscovery | None = None
        self.llm_state: dict[str, Any] = {"state": "unknown", "detail": config.describe_llm()}
        self.encoding: FrameEncoding | None = None
        self.metrics: AgentMetrics | None = None
        """The Prometheus metrics served on GET /metrics (`telemetry.metrics`)."""
        self.tracing: Any = None
        """`tracing.QuestionTracing` with `telemetry.otlp_endpoint`."""
        self.rules: RuleEngine | None = None
        self.rules_control: RuleControl | None = None
        self.rules_messager: MqttMessager | None = None
        self.subscription_check: SubscriptionCheck | None = None
        """Whether the broker delivers what the daemon subscribes to (not needed with the embedded broker)."""
        self.intakes: Intakes | None = None
        self.console = Console(self)
        """The page's console API (`visual_agent/console`): state, snapshots, rules."""
        self.memory = MemoryService(config.storage, prefix=config.mqtt.prefix)
        """The event store, `GET /events`, `<prefix>/events/query`, questions about the past, scene memory."""
        self.mcp: Any = None
        """`mcp_server.McpService` with `mcp.enabled`: the MCP endpoint on the page's port."""
        self._stack = contextlib.AsyncExitStack()
        """Everything started, closed in reverse by `close`."""
        self._closed: asyncio.Future[None] | None = None

    async def start(self) -> None:
        cfg = self.config
        stack = self._stack
        try:
            if cfg.mqtt.enabled:
                await self._start_mqtt()
            from webrtc import WebRTCServer

            self.driver = WebRTCServer(ingest_config(cfg), cfg.source_configs())
            stack.push_async_callback(self.driver.close)
            self.console.mount(self.driver)
            stack.push_async_callback(self.console.close)
            await self.memory.open()
            stack.push_async_callback(self.memory.close)  # after the agent and its intakes: their last events kept
            self.memory.register_routes(self.driver.add_route)
            self._mount_mcp()
            telemetry = self._build_telemetry()
            await self.driver.start()
            from providers import create_provider

            self.llm = create_provider(cfg.llm)
            stack.push_async_callback(_quietly, self.llm.aclose)
            self.encoding = await build_frame_encoding(cfg, self.llm)
            stack.push_async_callback(self.encoding.aclose)
            self.agent = VisualAgent(
                llm=self.llm, messager=self.messager, webrtc_driver=self.driver, encoding=self.encoding,
                config=cfg.agent, prefix=cfg.mqtt.prefix, provider_name=cfg.provider_name(),
                max_payload_bytes=cfg.mqtt.max_payload_bytes, telemetry=telemetry,
            )
            if self.messager is not None and cfg.mqtt.homeassistant.enabled:
                self.homeassistant = HomeAssistantDiscovery(self.messager, cfg.mqtt.prefix, cfg.mqtt.homeassistant)
                self.agent.observe(self.homeassistant.observe)
            self.memory.attach(self.agent)
            self.console.watch(self.agent)
            self.intakes = await serve(stack, self.agent,  # the embedded broker knows who published each question
                                       senders=self.broker.sender_of if self.broker is not None else None)
            await self.memory.start_trigger(stack, self.agent, threshold=cfg.agent.scene_change.threshold)
            await self._start_rules()
            if self.mcp is not None:
                stack.push_async_callback(self.mcp.close)
                await self.mcp.start()
            await self._connect_mqtt()  # after the intakes subscribed: `online` means questions are taken
            await self.memory.start_mqtt(self.messager)
            if self.messager is not None and self.broker is None:  # a broker's ACL may drop what it let us subscribe
                self.subscription_check = SubscriptionCheck(self.messager).start()
                stack.push_async_callback(self.subscription_check.close)
            self.driver.healthz_extra = self.health
            probe = asyncio.get_running_loop().create_task(self._probe_llm(), name="daemon-llm-probe")
            stack.push_async_callback(cancel_and_wait, probe)
        except BaseException as exc:
            await self.close()
            if _is_startup_error(exc):  # a page port in use, a provider that cannot be built: a message, not a traceback
                raise VisualAgentError(f"cannot start: {exc}") from exc
            raise
        if self.driver.config.auth_token:  # the token goes to a terminal only, never into a log line or the journal
            logger.info("page: %s/ (token required; `visual-agent url` prints the URL with it)", self.driver.url)
            show_on_terminal(f"page: {self.driver.page_url()}")
        else:
            logger.info("page: %s/", self.driver.url)
        uses_embeddings = self.encoding is not None and self.encoding.uses_embeddings
        logger.info("LLM: %s (frames as %s)", cfg.describe_llm(), "embeddings" if uses_embeddings else "JPEG")
        if self.messager is not None:
            t = Topics(cfg.mqtt.prefix)
            logger.info("MQTT: %s%s; ask on %s, answers on %s", f"{self.messager.host}:{self.messager.port}",
                        " (embedded)" if self.broker else "", t.ask, t.answer)

    def _build_telemetry(self) -> Telemetry:
        """Metrics on the page's server (`telemetry.metrics`) and traces (`telemetry.otlp_endpoint`)."""
        cfg = self.config.telemetry
        telemetry = Telemetry()
        if cfg.metrics:
            self.metrics = AgentMetrics(self.driver, self.messager)
            if self.broker is not None:
                self.metrics.registry.register(BrokerCollector(self.broker))
            telemetry.add(self.metrics)
            if self.driver is not None:
                self.driver.metrics_exposition = self.metrics.exposition
        if cfg.otlp_endpoint:
            try:
                from .tracing import QuestionTracing
            except ImportError as exc:
                raise ConfigError(f"{self.config.path}: telemetry.otlp_endpoint needs OpenTelemetry: "
                                  f"pip install 'visual-agent[otel]' ({exc})") from None
            self.tracing = QuestionTracing(endpoint=cfg.otlp_endpoint, service_name=cfg.service_name)
            telemetry.add(self.tracing)
            tracing = self.tracing  # on close, send the traces still batched (blocking: in a thread)
            self._stack.push_async_callback(_quietly, lambda: asyncio.wait_for(asyncio.to_thread(tracing.shutdown), 5.0))
        return telemetry

    def _mount_mcp(self) -> None:
        """The MCP endpoint on the page's server (`mcp.enabled`); a missing SDK is a `ConfigError` saying what to install."""
        if not self.config.mcp.enabled:
            return
        from .mcp_server import McpUnavailableError, load_service

        try:
            service = load_service()
        except McpUnavailableError as exc:
            raise ConfigError(f"{self.config.path}: {exc}") from None
        self.mcp = service(self, self.config.mcp)
        self.mcp.mount(self.driver)

    async def _start_mqtt(self) -> None:
        mqtt = self.config.mqtt
        host, port = mqtt.broker_address()
        client_config = mqtt.for_client()
        if mqtt.embedded:
            self.broker = await EmbeddedBroker.from_config(mqtt).start()
            self._stack.push_async_callback(self.broker.close)
            port = self.broker.port or port
            client_config = self.broker.daemon_client_config(client_config)  # its own credentials: may publish status
        # A question is acknowledged once answered (the MQTT intake settles each message), so one a dead daemon held
        # stays at the broker; the embedded broker dies with us and times a missing PUBACK out after 5 s: at receipt.
        self.messager = MqttMessager(client_config, host=host, port=port, status_topic=Topics(mqtt.prefix).status,
                                     settle_by_consumer=not mqtt.embedded, name="mqtt")
        self._stack.push_async_callback(self.messager.close)

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

    async def _start_rules(self) -> None:
        """The rule engine (config rules now), and `<prefix>/rules/set` on a connection of its own."""
        cfg = self.config
        assert self.agent is not None and self.driver is not None
        discovery = None
        if self.messager is not None and cfg.mqtt.homeassistant.enabled:
            discovery = RuleDiscovery(self.messager, cfg.mqtt.prefix, cfg.mqtt.homeassistant)
            self.agent.observe(discovery.observe)  # each rule change: an event of its Home Assistant event entity
        self.rules = RuleEngine(self.agent, list(cfg.rules), calls_per_minute=cfg.agent.rule_calls_per_minute,
                                discovery=discovery)
        driver = self.driver

        async def to_page(source: str, state: dict[str, Any]) -> None:
            await driver.broadcast(source, json.dumps({"type": "rule", **state}))

        self.rules.on_state.append(to_page)
        self._stack.push_async_callback(self.rules.close)
        await self.rules.start()
        if self.messager is not None:
            host, port = self.messager.host, self.messager.port
            # The daemon's own client settings (at the embedded broker: its credentials, so `rules/error` may be published).
            self.rules_messager = MqttMessager(self.messager.config, host=host, port=port, persistent_session=False,
                                               client_id=f"{self.messager.client_id}-rules", name="mqtt-rules")
            self._stack.push_async_callback(self.rules_messager.close, publish_offline=False)
            await self.rules_messager.start(wait=False)
            self.rules_control = RuleControl(self.rules, self.rules_messager)
            self._stack.push_async_callback(self.rules_control.close)
            await self.rules_control.start()

    async def _probe_llm(self) -> None:
        """Start the LLM (an in-process engine loads here) and ask it for its models once, so the log and /healthz
        say at once whether it is reachable."""
        llm = self.llm
        assert llm is not None  # the probe starts after the provider is built
        started = time.monotonic()
        try:
            await llm.start()
            models = await asyncio.wait_for(llm.list_models(), _LLM_PROBE_TIMEOUT_S)
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
            **({"subscriptions": self.subscription_check.describe()} if self.subscription_check else {}),
            "llm": {"provider": self.config.provider_name(), **self.llm_state},
            "agent": self.agent.describe_state() if self.agent else None,
            "rules": self.rules.describe() if self.rules else None,
            "lookback": self.agent.lookbacks.describe() if self.agent else None,
            "storage": self.memory.health(),
        }

    async def close(self) -> None:
        """Undo what `start` did, in reverse (the module docstring). The first call does it; later ones wait for it."""
        if self._closed is not None:
            return await asyncio.shield(self._closed)
        self._closed = asyncio.get_running_loop().create_future()
        try:
            await self._stack.aclose()
            logger.info("stopped")
        finally:
            self._closed.set_result(None)


async def _quietly(close: Any) -> None:
    """A close whose failure is not worth failing the others for (the LLM client, the trace exporter)."""
    with contextlib.suppress(Exception):
        await close()




def _is_startup_error(exc: BaseException) -> bool:
    """The webrtc and providers packages' own errors (imported here: the light import of this package stays light)."""
    from providers.errors import ProviderError
    from webrtc.errors import WebRTCError

    return isinstance(exc, (WebRTCError, ProviderError))


def _on_stop_signal(stop: asyncio.Event, watchdog_s: float) -> None:
    """First signal: stop cleanly, with a watchdog. A second one: the user insists, so stop now (exit 1)."""
    if stop.is_set():
        logger.warning("second signal: stopping now, without finishing")
        faulthandler.dump_traceback(all_threads=True)
        os._exit(1)
    stop.set()
    # A C thread, so it fires even if the loop or the interpreter's exit is stuck (a thread nobody joins, a hung
    # worker): every thread's stack goes to stderr, where the log is, and the process exits 1 instead of hanging.
    faulthandler.dump_traceback_later(watchdog_s, exit=True)


async def run_daemon(config: Config) -> int:
    """Run until SIGINT/SIGTERM; returns the exit code (0 on a signal).

    A stop that takes longer than `agent.shutdown_grace_s` + `STOP_WATCHDOG_S` writes every thread's stack to stderr and
    exits 1; a second signal stops at once."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    watchdog_s = config.agent.shutdown_grace_s + STOP_WATCHDOG_S
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, _on_stop_signal, stop, watchdog_s)
    daemon = Daemon(config)
    try:
        await daemon.start()
        await stop.wait()
        logger.info("signal received: finishing in-flight questions, then stopping (at most %g s)", watchdog_s)
    finally:
        await daemon.close()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    return 0
