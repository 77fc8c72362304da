"""`VisualAgent`: the core that answers a question about live video, and decides whether to take one at all.

Every question gets exactly one answer with its `id`, also when something failed (then `error` says what:
bad payload, unknown source, no frame yet, busy, timeout, context exceeded, LLM unreachable, LLM error, shutdown).
Questions run as named tasks, at most `agent.max_in_flight` at once; more get a `busy` answer at once instead of a
queue that grows (`admit`). Each has a deadline (`agent.question_timeout_s`). A short text-only history per
conversation (`conversations.ConversationStore`, `agent.history`) makes follow-ups work; each request is fitted
into the model's context (`context_budget.ContextBudget`), and a request the endpoint refuses for context length is
retried once, trimmed further. An answer's `trimmed` says what was left out.

The seams around this core, one module each (docs/ARCHITECTURE.md):
- questions in: `mqtt_intake.MqttQuestions` (`<prefix>/ask`) and `page_intake.PageQuestions` (the data channel);
- when to look unasked: `triggers.DescriptionTriggers` (periodic and scene-change descriptions);
- frames to model input: `encoding.FrameEncoding` (JPEG data URLs or embeddings);
- the collaborators' shapes: `interfaces.FrameSource`, `interfaces.MessageTransport`; topics: `topics.Topics`.

`telemetry` hears of every question and answer (`Telemetry`: Prometheus metrics, OpenTelemetry traces), with its
`QuestionTiming` stamps. `timings` keeps, per answered MQTT question, when it arrived, when the LLM request left, when the LLM's
answer came back and when the answer was handed to MQTT (monotonic seconds): `scripts/bench_agent.py` reads it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from providers.deadline import answer_by
from providers.errors import ContextLengthError
from providers.streaming import ToolCallsEvent, UsageEvent

from .config import DEFAULT_MAX_PAYLOAD_BYTES, DEFAULT_PREFIX, AgentConfig, EmbeddingsMode
from .context_budget import ContextBudget, Fitted
from .conversations import ConversationStore, Turn
from .encoding import EmbeddingFunction, FrameEncoding, frames_as_mode
from .errors import ErrorType, QuestionError
from .interfaces import FrameSource, MessageTransport, PageChannel
from .llm_errors import llm_error
from .messages import Answer, FrameRef, Question, partial_payload
from .mqtt_intake import MQTT_CONSUMER_TASK, MqttQuestions
from .page_intake import PageQuestions
from .rules.lookback import LookbackStore, lookback_frames
from .sampling import TakenFrame, Trigger, select_frames
from .telemetry import Telemetry, Via, via_of
from .timings import QuestionTiming
from .topics import Topics, topics
from .triggers import DescriptionTriggers

if TYPE_CHECKING:
    from providers import LLMProvider, ToolCall

__all__ = ["EmbeddingFunction", "QuestionTiming", "VisualAgent", "topics"]

logger = logging.getLogger(__name__)

PartialCallback = Callable[[int, str], Awaitable[None]]
"""``async (seq, delta)`` for each streamed piece."""
AnswerHook = Callable[[Answer, Trigger], Awaitable[None] | None]
"""Called with every final answer and description (Home Assistant state uses it)."""

_TIMINGS_KEPT = 4096


class VisualAgent:
    """Answers questions about live video; see the module docstring."""

    def __init__(
        self,
        llm: LLMProvider,
        messager: MessageTransport | None = None,
        webrtc_driver: FrameSource | None = None,
        embedding_function: EmbeddingFunction | None = None,
        config: AgentConfig | None = None,
        *,
        prefix: str = DEFAULT_PREFIX,
        jpeg_encoder: Any = None,
        frames_as: EmbeddingsMode | str = EmbeddingsMode.AUTO,
        provider_name: str | None = None,
        max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
        on_answer: AnswerHook | None = None,
        encoding: FrameEncoding | None = None,
        llm_options: Mapping[str, Any] | None = None,
        telemetry: Telemetry | None = None,
    ) -> None:
        """`llm`: an `LLMProvider`. `encoding` (the daemon builds it from `encoder`) replaces `embedding_function`,
        `jpeg_encoder` and `frames_as`, which build one here (`frames_as`: auto, clip or off). `llm_options`: keyword
        options for every `achat`/`astream` call, e.g. `tools` (the calls the model makes land in `Answer.tool_calls`,
        streamed or not)."""
        self.llm = llm
        self.llm_options: dict[str, Any] = dict(llm_options or {})
        self.messager = messager
        self.driver = webrtc_driver
        self.config = config or AgentConfig()
        self.prefix = prefix
        self.topics = Topics(prefix)
        self.provider_name = provider_name or type(llm).__name__
        self.max_payload_bytes = max_payload_bytes
        self.on_answer = on_answer
        """Called with every final answer and description (Home Assistant state uses it)."""
        if encoding is None:
            encoding = FrameEncoding(llm, mode=frames_as_mode(frames_as), embedding_function=embedding_function,
                                     jpeg_encoder=jpeg_encoder, provider_name=self.provider_name)
        elif embedding_function is not None or jpeg_encoder is not None:
            raise ValueError("give either encoding= or embedding_function/jpeg_encoder, not both")
        self.encoding = encoding
        self.telemetry = telemetry or Telemetry()
        """Told of every question and answer (metrics, traces)."""
        self.timings: collections.deque[QuestionTiming] = collections.deque(maxlen=_TIMINGS_KEPT)
        self.counters: collections.Counter[str] = collections.Counter()
        cfg = self.config
        self.conversations = ConversationStore(mode=cfg.history, max_turns=cfg.history_turns,
                                               max_conversations=cfg.max_conversations, ttl_s=cfg.conversation_ttl_s)
        """Histories per conversation (`agent.history`)."""
        self.budget = ContextBudget(llm, min_answer_tokens=cfg.min_answer_tokens)
        """What of a question fits the model's context."""
        self.last_error: dict[str, Any] | None = None
        """The newest error answer (type, message, when): /healthz shows what is failing now, the counters how often."""
        self.last_answer_at: float | None = None
        self.lookbacks = LookbackStore(webrtc_driver, cfg.lookback_s)
        """Per-source look-back thumbnails (`agent.lookback_s`, and the rules'), shared with the rule engine."""
        self._in_flight = 0
        self._question_tasks: set[asyncio.Task[Any]] = set()
        self._tasks: list[asyncio.Task[Any]] = []
        self._mqtt = MqttQuestions(self, messager) if messager is not None else None
        self._page = PageQuestions(self, webrtc_driver) if isinstance(webrtc_driver, PageChannel) else None
        self._triggers = DescriptionTriggers(self, webrtc_driver)
        self._closing = False
        self._closed = False

    def __repr__(self) -> str:
        mode = "embeddings" if self.encoding.uses_embeddings else "jpeg"
        return f"VisualAgent(provider={self.provider_name}, prefix={self.prefix!r}, frames={mode}, in_flight={self._in_flight})"

    @property
    def embedding_function(self) -> EmbeddingFunction | None:
        """What makes embeddings of the frames; None: frames go as JPEG."""
        return self.encoding.embedding_function

    @property
    def jpeg_encoder(self) -> Any:
        """The JPEG encoder of the frames; None: frames go as embeddings."""
        return self.encoding.jpeg_encoder

    @property
    def in_flight(self) -> int:
        return self._in_flight

    # --- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        """Listen on MQTT and the data channel; start periodic and scene-change descriptions if configured."""
        if self._mqtt is not None:
            self._tasks += await self._mqtt.start()
        if self._page is not None:
            self._page.attach()
        self._tasks += self._triggers.start()
        self.lookbacks.start()

    async def __aenter__(self) -> VisualAgent:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self, grace_s: float | None = None) -> None:
        """Stop taking questions, give in-flight ones `grace_s` to finish, fail the rest (`shutdown`). Safe twice.

        Questions that arrive meanwhile, or were received but not yet taken, get a `shutdown` answer.
        """
        if self._closed:
            return
        self._closing = True
        consumers = [t for t in self._tasks if t.get_name() == MQTT_CONSUMER_TASK]
        await _cancel_all([t for t in self._tasks if t not in consumers])  # descriptions stop at once
        grace = self.config.shutdown_grace_s if grace_s is None else grace_s
        pending = set(self._question_tasks)
        if pending:  # meanwhile new questions (MQTT, the page) get `shutdown` answers (`admit`)
            logger.info("agent: waiting up to %.1f s for %d question(s) in flight", grace, len(pending))
            _, still = await asyncio.wait(pending, timeout=grace)
            await _cancel_all(list(still))
        if self._page is not None:
            self._page.detach()
        await _cancel_all(consumers)
        self._tasks = []
        if self._mqtt is not None:
            await self._mqtt.close()  # refused overflow answered, what was received but not taken answered `shutdown`
        await self.lookbacks.close()
        await self.encoding.aclose()
        self._closed = True

    # --- questions ----------------------------------------------------------------------------

    async def ask(
        self,
        question: Question,
        *,
        on_partial: PartialCallback | None = None,
        received_at: float | None = None,
        trigger: Trigger = Trigger.QUESTION,
        timing: QuestionTiming | None = None,
    ) -> Answer:
        """The answer to `question`; never raises (failures come back as an answer with `error`)."""
        start = time.monotonic() if received_at is None else received_at
        source: str | None = question.source
        deadline = asyncio.timeout(self.config.question_timeout_s)
        try:
            with answer_by(time.monotonic() + self.config.question_timeout_s):  # retries never sleep past it
                async with deadline:
                    answer = await self._answer(question, on_partial, trigger, timing)
        except QuestionError as exc:
            answer = Answer.failed(question, exc, provider=self.provider_name)
        except TimeoutError as exc:
            if not deadline.expired():  # another timeout (the provider's own `llm.timeout`): say which one fired
                answer = Answer.failed(question, llm_error(exc, self.provider_name), provider=self.provider_name)
            else:
                answer = Answer.failed(question, QuestionError(
                    ErrorType.TIMEOUT, f"no answer within agent.question_timeout_s = {self.config.question_timeout_s:g} s"
                ), provider=self.provider_name)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a provider or encoder failure becomes an error answer
            answer = Answer.failed(question, llm_error(exc, self.provider_name), provider=self.provider_name)
        if answer.source is None:
            answer.source = source
        answer.latency_s = time.monotonic() - start
        if timing is not None:
            timing.answered_at = time.monotonic()
        self.counters["answers" if answer.error is None else f"errors.{answer.error['type']}"] += 1
        if answer.error is None:
            self.last_answer_at = time.time()
        else:
            self.last_error = {**answer.error, "at": time.time()}
        if answer.error is None:
            logger.info("%s %s on %s answered in %.3f s", trigger.value, question.id, answer.source, answer.latency_s)
        else:
            logger.warning("%s %s failed after %.3f s: %s: %s", trigger.value, question.id, answer.latency_s,
                           answer.error["type"], answer.error["message"])
        return answer

    async def _answer(self, question: Question, on_partial: PartialCallback | None, trigger: Trigger,
                      timing: QuestionTiming | None) -> Answer:
        if timing is not None:
            timing.started_at = time.monotonic()
        source = self._resolve_source(question.source)
        question.source = source
        taken = await self._take_frames(source, question.frames or self.config.frames)
        if question.lookback_s:  # "what just happened?": a few look-back images first (the budget drops them first)
            taken = await lookback_frames(self.lookbacks.get(source), question.lookback_s, taken) + taken
        if timing is not None:
            timing.frames_at = time.monotonic()
        key = self.conversations.key(source, question.conversation) if trigger is Trigger.QUESTION else None
        turns = self.conversations.turns(key)
        text, model, fitted, calls = await self._ask_model(question.question, taken, source, turns, on_partial, timing)
        if timing is not None:
            timing.llm_response_at = time.monotonic()
        self.conversations.remember(key, question.question, text)
        return Answer(
            id=question.id, question=question.question, text=text, source=source,
            frames=[FrameRef(taken[i].pts, taken[i].age_s) for i in fitted.frames], model=model,
            provider=self.provider_name, trimmed=fitted.trimmed or None,
            tool_calls=[{"id": c.id, "name": c.name, "arguments": c.arguments} for c in calls],
        )

    async def _ask_model(self, question: str, taken: list[TakenFrame], source: str, turns: list[Turn],
                         on_partial: PartialCallback | None, timing: QuestionTiming | None,
                         ) -> tuple[str, str | None, Fitted, list[ToolCall]]:
        """Fit the request into the model's context and ask; a refusal for context length is retried once, with
        what the refusal taught the budget (the true prompt size, the context length)."""
        minimal = False
        for attempt in (1, 2):
            fitted, shape = await self.budget.plan(self.config.system_prompt, question, len(taken), turns,
                                                   minimal=minimal)
            content = await self.encoding.content(question, [taken[i] for i in fitted.frames], source)
            if timing is not None:
                timing.encoded_at = time.monotonic()
            messages = self.build_messages(content, turns[len(turns) - fitted.history_turns:])
            opts = dict(self.llm_options)
            if self.budget.context_tokens is not None:
                opts["max_tokens"] = min(fitted.max_tokens, opts.get("max_tokens") or fitted.max_tokens)
            if timing is not None:
                timing.llm_request_at = time.monotonic()
            streamed = [0]
            try:
                text, model, prompt_tokens, calls = await self._complete(messages, opts, on_partial, streamed, timing)
            except ContextLengthError as exc:
                learned = self.budget.refused(shape, exc.limit, exc.input_tokens, exc.input_at_least)
                if attempt == 2 or streamed[0] or not learned:
                    raise
                # The refusal did not say the prompt's true size: retry with the question and its newest frame only.
                minimal = exc.input_at_least or (exc.input_tokens is None and exc.limit is None)
                logger.info("agent: the model refused %d prompt tokens (estimated %d) for context length; retrying "
                            "trimmed: %s", exc.input_tokens or 0, shape.estimate, exc.message)
                continue
            self.budget.observe(shape, prompt_tokens)
            return text, model, fitted, calls
        raise AssertionError("unreachable")

    async def _complete(self, messages: list[dict[str, Any]], opts: dict[str, Any], on_partial: PartialCallback | None,
                        streamed: list[int], timing: QuestionTiming | None = None,
                        ) -> tuple[str, str | None, int | None, list[ToolCall]]:
        """(text, model, prompt tokens when reported, tool calls); `streamed[0]` counts the partials already sent;
        `timing` gets the first streamed piece's time and the reported usage.

        Tool calls come the same way from `achat` and `astream` (there as one `ToolCallsEvent` after the text); a
        streamed answer's usage is asked for (`stream_options`) and comes as a `UsageEvent` last."""
        model = self.llm.model
        usage = None
        if on_partial is not None and self.llm.capabilities.streaming:
            parts: list[str] = []
            calls: list[ToolCall] = []
            stream_opts = {"stream_options": {"include_usage": True}, **opts}
            async for item in self.llm.astream(messages, **stream_opts):
                if isinstance(item, ToolCallsEvent):  # after the text, when tools were passed: never streamed as text
                    calls = list(item.tool_calls)
                    continue
                if isinstance(item, UsageEvent):
                    usage = item.usage
                    continue
                if not isinstance(item, str) or not item:
                    continue
                parts.append(item)
                if timing is not None and timing.first_token_at is None:
                    timing.first_token_at = time.monotonic()
                streamed[0] += 1
                await on_partial(streamed[0], item)
            text, model, tool_calls = "".join(parts), self.llm.model or model, calls
        else:
            response = await self.llm.achat(messages, **opts)
            usage = response.usage
            text, model, tool_calls = response.text, response.model or model, list(response.tool_calls)
        if timing is not None and usage is not None:
            timing.prompt_tokens, timing.completion_tokens = usage.prompt_tokens, usage.completion_tokens
        return text, model, usage.prompt_tokens if usage is not None else None, tool_calls

    def build_messages(self, content: Any, history: Sequence[tuple[str, str]]) -> list[dict[str, Any]]:
        """The chat request: the system prompt, the earlier (question, answer) turns, then this question's content.

        The one place a request is put together, so a context budget can trim it here.
        """
        messages: list[dict[str, Any]] = [{"role": "system", "content": self.config.system_prompt}]
        for asked, said in history:
            messages += [{"role": "user", "content": asked}, {"role": "assistant", "content": said}]
        messages.append({"role": "user", "content": content})
        return messages

    def _resolve_source(self, name: str | None) -> str:
        known = list(self.driver.source_names()) if self.driver is not None else []
        if name is None:
            name = self.config.default_source or (known[0] if known else None)
            if name is None:
                raise QuestionError(ErrorType.NO_FRAME, "no source yet: open the page and connect a camera, or configure a source")
            if name not in known:
                raise QuestionError(ErrorType.NO_FRAME, f"the default source {name!r} is not connected yet; known sources: {_few(known)}")
        if name not in known:
            raise QuestionError(ErrorType.UNKNOWN_SOURCE, f"no source {name!r}; known sources: {_few(known)}")
        return name

    async def _take_frames(self, source: str, k: int) -> list[TakenFrame]:
        assert self.driver is not None  # `_resolve_source` found the source there
        buffer = self.driver.get_buffer(source)
        frames = select_frames(buffer, k, self.config.window_s)
        if not frames:
            try:
                await buffer.wait_for_frame(self.config.frame_wait_s)
            except TimeoutError:
                raise QuestionError(
                    ErrorType.NO_FRAME, f"source {source!r} has no frame yet (waited {self.config.frame_wait_s:g} s); "
                    "is its camera connected and sending video?"
                ) from None
            frames = select_frames(buffer, k, self.config.window_s)
        return frames

    def history(self, source: str, conversation: str | None = None) -> list[Turn]:
        """The (question, answer) pairs kept for a question on `source` in `conversation` (see `agent.history`)."""
        return self.conversations.turns(self.conversations.key(source, conversation))

    # --- admission: one place decides between answering and a busy/shutdown error ----------------

    def admit(self, question: Question) -> QuestionError | None:
        """None when `question` may be answered now; else the `shutdown` or `busy` error to answer it with."""
        if self._closing:
            return QuestionError(ErrorType.SHUTDOWN, "the agent is shutting down", id=question.id)
        if self._in_flight >= self.config.max_in_flight:
            self.counters["busy"] += 1
            return QuestionError(ErrorType.BUSY, f"{self._in_flight} questions in flight (agent.max_in_flight); ask again shortly",
                                 id=question.id)
        return None

    def spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        """Run an admitted question's task, counted in flight until it ends (and awaited by `close`)."""
        self._in_flight += 1
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._question_tasks.add(task)

        def done(t: asyncio.Task[Any]) -> None:
            self._in_flight -= 1
            self._question_tasks.discard(t)

        task.add_done_callback(done)

    async def answer_and_send(self, question: Question, send_partial: Callable[[bytes], Awaitable[None]],
                              send_answer: Callable[[Answer], Awaitable[None]], timing: QuestionTiming | None = None,
                              *, via: Via = Via.MQTT) -> None:
        """Answer `question`, streaming partials when it (or the config) asks, and send the answer; when cancelled
        (shutdown), send a `shutdown` answer instead. MQTT and the data channel differ only in `send_*`."""
        stream = self.config.stream if question.stream is None else question.stream
        if timing is None:
            timing = QuestionTiming(id=question.id, received_at=time.monotonic())
        received_at = timing.received_at

        async def on_partial(seq: int, delta: str) -> None:
            await send_partial(partial_payload(question.id, seq, delta))

        try:
            answer = await self.ask(question, on_partial=on_partial if stream else None, received_at=received_at, timing=timing)
        except asyncio.CancelledError:
            failed = Answer.failed(question, QuestionError(ErrorType.SHUTDOWN, "the daemon stopped before the answer was ready"),
                                   provider=self.provider_name, latency_s=time.monotonic() - received_at)
            timing.answered_at = time.monotonic()
            await send_answer(failed)
            self._sent(via, failed, timing)
            raise
        await send_answer(answer)
        self._sent(via, answer, timing)
        await self.notify(answer, Trigger.QUESTION)

    def _sent(self, via: Via, answer: Answer, timing: QuestionTiming) -> None:
        timing.published_at = time.monotonic()
        self.telemetry.answered(via, answer, timing)

    async def notify(self, answer: Answer, trigger: Trigger) -> None:
        """Hand a successful answer or description to `on_answer`; its failure is logged, not raised."""
        if self.on_answer is None or answer.error is not None:
            return
        try:
            result = self.on_answer(answer, trigger)
            if asyncio.iscoroutine(result):
                await result
        except Exception:
            logger.exception("agent: on_answer hook failed")

    # --- the intakes' entry points (kept here: tests and embedders call them on the agent) ---------

    async def handle_mqtt(self, msg: Any, *, refuse: QuestionError | None = None) -> None:
        """Take one `<prefix>/ask` message (see `MqttQuestions.handle`)."""
        if self._mqtt is None:
            raise RuntimeError("this agent has no messager")
        await self._mqtt.handle(msg, refuse=refuse)

    async def handle_data_message(self, source: str, peer_id: str, text: str) -> None:
        """A question typed on the page (see `PageQuestions.handle`)."""
        if self._page is None:
            raise RuntimeError("this agent's frame source has no page data channel")
        await self._page.handle(source, peer_id, text)

    # --- descriptions: asked by the agent itself --------------------------------------------------

    async def describe(self, source: str, prompt: str, trigger: Trigger) -> Answer | None:
        """Describe `source` now and publish on `<prefix>/<source>/description`; None when busy."""
        question = Question(question=prompt, source=source)
        if self.admit(question) is not None:
            logger.info("agent: skipping a %s description of %s (busy)", trigger.value, source)
            return None
        via = via_of(trigger)
        self.telemetry.question(via)
        timing = QuestionTiming(id=question.id, received_at=time.monotonic())
        self._in_flight += 1
        try:
            answer = await self.ask(question, trigger=trigger, timing=timing)
        finally:
            self._in_flight -= 1
        if self.messager is not None and answer.error is None:
            await self.messager.publish(self.topics.description(source), answer.payload())
        self._sent(via, answer, timing)
        await self.notify(answer, trigger)
        return answer

    def describe_state(self) -> dict[str, Any]:
        """State for /healthz."""
        return {"in_flight": self._in_flight, "counters": dict(self.counters),
                "conversations": len(self.conversations), "context_tokens": self.budget.context_tokens,
                "last_answer_at": self.last_answer_at, "last_error": self.last_error}


async def _cancel_all(tasks: list[asyncio.Task[Any]]) -> None:
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task


def _few(names: list[str], shown: int = 5) -> str:
    """At most `shown` source names for an error answer (a daemon may hold many), then how many more."""
    if not names:
        return "none yet"
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more
