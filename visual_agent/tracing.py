"""`QuestionTracing`: one OpenTelemetry trace per question, its stages as child spans (with `telemetry.otlp_endpoint`).

Imported only when tracing is configured: `import visual_agent` and a default daemon never import opentelemetry
(the `otel` extra: ``pip install 'visual-agent[otel]'``). The spans are built when the answer is out, from the
question's `QuestionTiming` (monotonic stamps mapped onto wall-clock nanoseconds), so the answer path carries no
tracing code: the root span `visual_agent.question` runs from arrival to publish and has the children
`wait_frame`, `encode`, `llm_first_token`, `llm`, `publish` (those that ran). Attributes: the question id,
source, model, provider, via and outcome. Spans go out through a `BatchSpanProcessor` (its own thread) to the OTLP
HTTP exporter; each daemon has its own `TracerProvider`, not the process-global one.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExporter
from opentelemetry.trace import Status, StatusCode, set_span_in_context

from .telemetry import Via, outcome_of

if TYPE_CHECKING:
    from .messages import Answer
    from .timings import QuestionTiming

__all__ = ["QuestionTracing", "ROOT_SPAN"]

ROOT_SPAN = "visual_agent.question"
DEFAULT_SERVICE_NAME = "visual-agent"


class QuestionTracing:
    """Turns answered questions into traces. `exporter`: any `SpanExporter` (tests pass the in-memory one)."""

    def __init__(self, exporter: SpanExporter | None = None, *, endpoint: str | None = None,
                 service_name: str = DEFAULT_SERVICE_NAME, batch: bool | None = None) -> None:
        if exporter is None:
            if not endpoint:
                raise ValueError("QuestionTracing needs an exporter or an OTLP endpoint")
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            exporter = OTLPSpanExporter(endpoint=endpoint)
            batch = True if batch is None else batch
        processor = BatchSpanProcessor(exporter) if batch else SimpleSpanProcessor(exporter)
        self.provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
        self.provider.add_span_processor(processor)
        self.tracer = self.provider.get_tracer("visual_agent")

    def question(self, via: Via) -> None:
        """Traces are made when the answer is out."""

    def answered(self, via: Via, answer: Answer, timing: QuestionTiming | None) -> None:
        now_mono, now_ns = time.monotonic(), time.time_ns()

        def wall(mono: float | None) -> int:
            return now_ns if mono is None else now_ns - int((now_mono - mono) * 1e9)

        start = wall(timing.received_at if timing is not None else None)
        end = wall(timing.published_at if timing is not None else None)
        attributes: dict[str, Any] = {"visual_agent.via": Via(via).value, "visual_agent.outcome": outcome_of(answer),
                                      "visual_agent.provider": answer.provider or ""}
        for key, value in (("visual_agent.question.id", answer.id), ("visual_agent.source", answer.source),
                           ("visual_agent.model", answer.model)):
            if value is not None:
                attributes[key] = str(value)
        root = self.tracer.start_span(ROOT_SPAN, start_time=start, attributes=attributes)
        if answer.error is not None:
            root.set_status(Status(StatusCode.ERROR, str(answer.error.get("type"))))
        if timing is not None:
            context = set_span_in_context(root)
            for stage, (begin, finish) in timing.stages().items():
                span = self.tracer.start_span(stage, context=context, start_time=wall(begin))
                if stage == "llm" and timing.prompt_tokens is not None:
                    span.set_attribute("gen_ai.usage.input_tokens", timing.prompt_tokens)
                    span.set_attribute("gen_ai.usage.output_tokens", timing.completion_tokens or 0)
                span.end(end_time=wall(finish))
        root.end(end_time=max(end, start))

    def shutdown(self) -> None:
        """Send what is batched and stop (blocking: call it in a thread)."""
        self.provider.shutdown()
