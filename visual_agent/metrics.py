"""`AgentMetrics`: the daemon's Prometheus metrics, served as `GET /metrics` on the page's server.

The names are an interface (dashboards and alerts depend on them; README lists them):

- `visual_agent_frames_received_total{source}`, `visual_agent_frames_dropped_total{source}`,
  `visual_agent_frame_age_seconds{source}` (the newest frame's age at scrape time), `visual_agent_peers`;
- `visual_agent_questions_total{via}` (mqtt, page, periodic, scene, rule, memory),
  `visual_agent_answers_total{outcome}` (`ok` or the error type);
- `visual_agent_stage_seconds{stage}` (wait_frame, encode, llm_first_token, llm, publish) and
  `visual_agent_answer_seconds` (arrival to publish) histograms;
- `visual_agent_llm_tokens_total{kind}` (prompt, completion; where the provider reports usage);
- `visual_agent_mqtt_connected`, `visual_agent_mqtt_outbox`.

Each daemon has its own `CollectorRegistry` (not prometheus_client's global one), so tests and several agents in
one process do not collide. Frame and MQTT figures are read from the buffers and the messager at scrape time (a
collector), on the event loop that owns them; nothing runs between scrapes. Labels are bounded: sources by the
sources held (a gone peer's source leaves the output with its buffer), `via`, `outcome` and `stage` by enums;
never a question id.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from .errors import ErrorType
from .telemetry import Via, outcome_of

if TYPE_CHECKING:
    from .interfaces import FrameSource
    from .messages import Answer
    from .timings import QuestionTiming

__all__ = ["AgentMetrics", "CONTENT_TYPE", "STAGES"]

CONTENT_TYPE = CONTENT_TYPE_LATEST
"""The Prometheus text format's content type."""
STAGES = ("wait_frame", "encode", "llm_first_token", "llm", "publish")
"""The `stage` label's values (`QuestionTiming.stages`)."""
STAGE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
ANSWER_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


class AgentMetrics:
    """Counters and histograms fed by `Telemetry`, plus live readings of the frame source and the messager."""

    def __init__(self, frames: FrameSource | None = None, messager: Any = None,
                 registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry
        self.questions = Counter("visual_agent_questions", "Questions received, by how they came.", ["via"], registry=r)
        self.answers = Counter("visual_agent_answers", "Answers given, by outcome (ok or the error type).", ["outcome"],
                               registry=r)
        self.stage_seconds = Histogram("visual_agent_stage_seconds", "Time spent in each stage of answering.", ["stage"],
                                       buckets=STAGE_BUCKETS, registry=r)
        self.answer_seconds = Histogram("visual_agent_answer_seconds", "Whole question: arrival to the answer's publish.",
                                        buckets=ANSWER_BUCKETS, registry=r)
        self.tokens = Counter("visual_agent_llm_tokens", "Tokens the LLM reported using.", ["kind"], registry=r)
        for via in Via:  # every series exists from the start, so rate() and alerts see a zero, not a gap
            self.questions.labels(via.value)
        for outcome in ("ok", *(e.value for e in ErrorType)):
            self.answers.labels(outcome)
        for stage in STAGES:
            self.stage_seconds.labels(stage)
        for kind in ("prompt", "completion"):
            self.tokens.labels(kind)
        self.live = _LiveCollector(frames, messager)
        r.register(self.live)

    # --- QuestionObserver ---------------------------------------------------------------------

    def question(self, via: Via) -> None:
        self.questions.labels(Via(via).value).inc()

    def answered(self, via: Via, answer: Answer, timing: QuestionTiming | None) -> None:
        self.answers.labels(outcome_of(answer)).inc()
        if timing is None:
            return
        for stage, (start, end) in timing.stages().items():
            self.stage_seconds.labels(stage).observe(end - start)
        if timing.published_at is not None:
            self.answer_seconds.observe(max(0.0, timing.published_at - timing.received_at))
        if timing.prompt_tokens:
            self.tokens.labels("prompt").inc(timing.prompt_tokens)
        if timing.completion_tokens:
            self.tokens.labels("completion").inc(timing.completion_tokens)

    # --- exposition ---------------------------------------------------------------------------

    def exposition(self) -> tuple[bytes, str]:
        """(body, content type) of the Prometheus text format, for GET /metrics."""
        return generate_latest(self.registry), CONTENT_TYPE


class _LiveCollector(Collector):
    """Frame buffers, peers and the MQTT connection, read when scraped."""

    def __init__(self, frames: FrameSource | None, messager: Any) -> None:
        self.frames = frames
        self.messager = messager

    def describe(self) -> Iterator[Metric]:
        return iter(self._families())

    def collect(self) -> Iterator[Metric]:
        received, dropped, age, peers, connected, outbox = self._families()
        frames = self.frames
        if frames is not None:
            for name in list(frames.source_names()):
                try:
                    stats = frames.get_buffer(name).stats()
                except KeyError:  # the source went between the two calls
                    continue
                received.add_metric([name], stats.received)
                dropped.add_metric([name], stats.dropped)
                if stats.newest_age_s is not None:
                    newest = frames.get_buffer(name).latest()
                    age.add_metric([name], newest.age_s if newest is not None else stats.newest_age_s)
            peers_of = getattr(frames, "peers", None)
            peers.add_metric([], len(peers_of()) if callable(peers_of) else 0)
        else:
            peers.add_metric([], 0)
        messager = self.messager
        connected.add_metric([], 1 if messager is not None and messager.connected else 0)
        outbox.add_metric([], _outbox_size(messager))
        yield from (received, dropped, age, peers, connected, outbox)

    @staticmethod
    def _families() -> tuple[Any, ...]:
        return (
            CounterMetricFamily("visual_agent_frames_received", "Frames received, by source.", labels=["source"]),
            CounterMetricFamily("visual_agent_frames_dropped",
                                "Frames pushed out of a source's buffer by newer ones (normal for newest-wins).",
                                labels=["source"]),
            GaugeMetricFamily("visual_agent_frame_age_seconds", "Age of the newest frame of each source, now.",
                              labels=["source"]),
            GaugeMetricFamily("visual_agent_peers", "Open WebRTC peer connections."),
            GaugeMetricFamily("visual_agent_mqtt_connected", "1 while connected to the MQTT broker."),
            GaugeMetricFamily("visual_agent_mqtt_outbox", "Messages waiting for the broker to come back."),
        )


def _outbox_size(messager: Any) -> int:
    if messager is None:
        return 0
    try:
        return int(messager.describe().get("outbox", 0))
    except Exception:
        return 0
