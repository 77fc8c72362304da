"""`VisualAgent`: the core that answers questions about live video, and decides whether to take one at all.

Every call to the model goes through `complete` (questions, descriptions, rule checks, memory queries), which
admits it (`admission.Admission`: at most `agent.max_in_flight` at once; more wait a bounded time for a slot, in
turn by asker key, or get `busy`), gives it a deadline (`agent.question_timeout_s` from its arrival, which provider
retries respect), fits it into the model's context (`model_call.ModelCall`) and reports it to telemetry. A question
(`ask`) adds the frames of its source and a short text-only history per conversation
(`conversations.ConversationStore`); every question gets exactly one answer with its `id`, also when something
failed (then `error` says what).

The core owns no intake: `mqtt_intake`, `page_intake` and `triggers` take it as an `interfaces.AgentCore`, and the
`Daemon` composes them (`intakes.open_intakes`). Every final answer, description and rule change is handed to the
observers registered with `observe` (`interfaces.AgentEvent`); Home Assistant's state sensor is one.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

from providers.deadline import answer_by

from .admission import Admission, Slot
from .config import DEFAULT_MAX_PAYLOAD_BYTES, DEFAULT_PREFIX, AgentConfig
from .context_budget import ContextBudget
from .conversations import ConversationStore, Turn
from .encoding import EmbeddingFunction, FrameEncoding
from .errors import ErrorType, QuestionError
from .interfaces import AgentEvent, EventKind, EventObserver, FrameSource, MessageTransport, Reply
from .llm_errors import llm_error
from .messages import Answer, FrameRef, Question, new_id, parse_question, partial_payload
from .model_call import ModelCall, ModelRequest, ModelResponse, PartialCallback
from .rules.lookback import LookbackStore, lookback_frames
from .sampling import TakenFrame, resolve_source, take_frames
from .telemetry import Counts, Telemetry, Via
from .timings import QuestionTiming
from .topics import Topics

if TYPE_CHECKING:
    from providers import LLMProvider

__all__ = ["EmbeddingFunction", "QuestionTiming", "VisualAgent"]

logger = logging.getLogger(__name__)

_TIMINGS_KEPT = 4096


class VisualAgent:
    """Answers questions about live video; see the module docstring."""

    def __init__(
        self,
        llm: LLMProvider,
        *,
        messager: MessageTransport | None = None,
        webrtc_driver: FrameSource | None = None,
        embedding_function: EmbeddingFunction | None = None,
        config: AgentConfig | None = None,
        prefix: str = DEFAULT_PREFIX,
        provider_name: str | None = None,
        max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
        encoding: FrameEncoding | None = None,
        llm_options: Mapping[str, Any] | None = None,
        telemetry: Telemetry | None = None,
    ) -> None:
        """`llm`: an `LLMProvider`; `messager`: where descriptions are published; `webrtc_driver`: the frames.
        `encoding` (the daemon builds it from `encoder`) or `embedding_function` (`async (frames) -> embeddings`;
        with neither, embeddings when the provider takes them, else JPEG). `llm_options`: keyword options for every
        question's model call, e.g. `tools` (the calls the model makes land in `Answer.tool_calls`)."""
        self.llm = llm
        self.llm_options: dict[str, Any] = dict(llm_options or {})
        self.messager = messager
        self.driver = webrtc_driver
        self.config = config or AgentConfig()
        self.prefix = prefix
        self._topics = Topics(prefix)
        self.provider_name = provider_name or type(llm).__name__
        self.max_payload_bytes = max_payload_bytes
        if encoding is None:
            encoding = FrameEncoding(llm, embedding_function=embedding_function, provider_name=self.provider_name)
        elif embedding_function is not None:
            raise ValueError("give either encoding= or embedding_function=, not both")
        self.encoding = encoding
        self.counts = Counts()
        """Questions by `via`, answers by outcome: what /healthz shows (fed by the same telemetry as /metrics)."""
        self.telemetry = telemetry or Telemetry()
        self.telemetry.add(self.counts)
        self.timings: collections.deque[QuestionTiming] = collections.deque(maxlen=_TIMINGS_KEPT)
        """The stamps of the last answered questions (`scripts/bench_agent.py` reads them)."""
        cfg = self.config
        self.conversations = ConversationStore(mode=cfg.history, max_turns=cfg.history_turns,
                                               max_conversations=cfg.max_conversations, ttl_s=cfg.conversation_ttl_s)
        self.budget = ContextBudget(llm, min_answer_tokens=cfg.min_answer_tokens)
        """What of a request fits the model's context."""
        self.model = ModelCall(llm, encoding, self.budget, cfg.system_prompt)
        self.admission = Admission(cfg.max_in_flight, max_queued_per_asker=cfg.max_queued_per_asker,
                                   max_queued=cfg.max_queued, queue_wait_s=cfg.queue_wait_s)
        """Who may ask now (`agent.max_in_flight` slots, a fair turn per asker for those that wait)."""
        self.lookbacks = LookbackStore(webrtc_driver, cfg.lookback_s)
        """Per-source look-back thumbnails (`agent.lookback_s`, and the rules'), shared with the rule engine."""
        self.last_error: dict[str, Any] | None = None
        """The newest error answer (type, message, when): /healthz shows what is failing now, the counts how often."""
        self.last_answer_at: float | None = None
        self._observers: list[EventObserver] = []
        self.recall: Callable[..., Awaitable[Answer]] | None = None
        """Answers questions about the past (`since`/`until`) from the event store (`memory.PastQuestions.answer`,
        set by the daemon); None: such questions are refused."""
        self._question_tasks: set[asyncio.Task[Any]] = set()
        self._closed: asyncio.Future[None] | None = None

    def __repr__(self) -> str:
        mode = "embeddings" if self.encoding.uses_embeddings else "jpeg"
        return (f"VisualAgent(provider={self.provider_name}, prefix={self.prefix!r}, frames={mode}, "
                f"in_flight={self.in_flight})")

    @property
    def topics(self) -> Topics:
        return self._topics

    @property
    def embedding_function(self) -> EmbeddingFunction | None:
        """What makes embeddings of the frames; None: frames go as JPEG."""
        return self.encoding.embedding_function

    @property
    def in_flight(self) -> int:
        return self.admission.in_flight

    @property
    def counters(self) -> collections.Counter[str]:
        """Answers (`answers`) and errors (`errors.<type>`) so far, as telemetry counted them."""
        return collections.Counter(self.counts.answers)

    def observe(self, observer: EventObserver) -> None:
        """Hand every final answer, description and rule change to `observer` (see `interfaces.AgentEvent`)."""
        self._observers.append(observer)

    # --- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        """Keep the look-back thumbnails of the sources that need them."""
        self.lookbacks.start()

    async def __aenter__(self) -> VisualAgent:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def drain(self, grace_s: float | None = None) -> None:
        """Stop admitting (new questions get `shutdown` answers), give the questions in flight `grace_s` (default
        `agent.shutdown_grace_s`) to finish, cancel the rest (they answer `shutdown`)."""
        self.admission.close()
        grace = self.config.shutdown_grace_s if grace_s is None else grace_s
        pending = set(self._question_tasks)
        if pending:
            logger.info("agent: waiting up to %.1f s for %d question(s) in flight", grace, len(pending))
            _, still = await asyncio.wait(pending, timeout=grace)
            for task in still:  # one cancel, then as long as they need: each publishes its `shutdown` answer
                task.cancel()
            if still:
                await asyncio.wait(still)

    async def close(self, grace_s: float | None = None) -> None:
        """`drain`, then release the look-back and the encoder. The first call does it; later ones wait for it."""
        if self._closed is not None:
            return await asyncio.shield(self._closed)
        self._closed = asyncio.get_running_loop().create_future()
        try:
            await self.drain(grace_s)
            await self.lookbacks.close()
            await self.encoding.aclose()
        finally:
            self._closed.set_result(None)

    # --- admission ----------------------------------------------------------------------------

    def parse(self, payload: bytes | str, via: Via) -> Question:
        """Count an arrival on `via` and parse it with this agent's limits (`QuestionError` when bad)."""
        self.telemetry.question(via)
        cfg = self.config
        return parse_question(payload, max_bytes=self.max_payload_bytes, max_chars=cfg.max_question_chars,
                              max_frames=cfg.max_frames, max_lookback_s=cfg.question_lookback_max_s(),
                              past=self.recall is not None)

    def admit(self, asker: str, question_id: Any = None) -> QuestionError | None:
        """None when `asker` may ask now or wait its turn; else the `shutdown` or `busy` error to answer with."""
        return self.admission.check(asker, question_id)

    def refuse(self, via: Via, question: Question | None, error: QuestionError) -> Answer:
        """The error answer to send at once (bad payload, busy, shutdown, forbidden response topic), counted."""
        answer = Answer.failed(question, error, provider=self.provider_name)
        self._outcome(answer)
        self.telemetry.answered(via, answer)
        return answer

    def take(self, question: Question, reply: Reply, *, via: Via, asker: str, owner: str | None = None,
             timing: QuestionTiming | None = None) -> QuestionError | None:
        """Admit `question` and answer it through `reply` in a task of its own, held in flight until its answer is
        sent; returns the refusal when not admitted (answer it with `refuse`). `owner`: whose conversations its
        conversation id names (default: the asker; see `conversations.ConversationStore`)."""
        refused = self.admit(asker, question.id)
        if refused is not None:
            return refused
        slot = self.admission.enter(asker, question.id)
        timing = timing or QuestionTiming(id=question.id, received_at=time.monotonic())
        task = asyncio.get_running_loop().create_task(self._answer_and_send(question, reply, via, timing, slot,
                                                                            owner or asker),
                                                      name=f"agent-question-{question.id}")
        self._question_tasks.add(task)

        def done(t: asyncio.Task[Any]) -> None:
            slot.release()
            self._question_tasks.discard(t)

        task.add_done_callback(done)
        return None

    async def _answer_and_send(self, question: Question, reply: Reply, via: Via, timing: QuestionTiming,
                               slot: Slot, owner: str) -> None:
        """Wait for the slot's turn, answer, streaming partials when the question (or `agent.stream`) asks; when
        cancelled (shutdown), send a `shutdown` answer instead."""
        stream = self.config.stream if question.stream is None else question.stream

        async def on_partial(seq: int, delta: str) -> None:
            await reply.partial(partial_payload(question.id, seq, delta))

        used: list[TakenFrame] = []
        try:
            try:
                await slot.wait(timing.received_at + self.config.question_timeout_s)
            except QuestionError as exc:  # no slot in time (`busy`) or shutting down
                answer = Answer.failed(question, exc, provider=self.provider_name,
                                       latency_s=time.monotonic() - timing.received_at)
                timing.answered_at = time.monotonic()
            else:
                answer = await self.ask(question, via=via, on_partial=on_partial if stream else None, timing=timing,
                                        used=used, owner=owner)
        except asyncio.CancelledError:
            failed = Answer.failed(question, QuestionError(ErrorType.SHUTDOWN, "the daemon stopped before the answer "
                                   "was ready"), provider=self.provider_name,
                                   latency_s=time.monotonic() - timing.received_at)
            timing.answered_at = time.monotonic()
            await reply.answer(failed)
            self._sent(via, failed, timing)
            raise
        await reply.answer(answer)
        self._sent(via, answer, timing)
        await self.notify(AgentEvent(EventKind.ANSWER, via, answer.source, answer=answer, frames=tuple(used)))

    def _sent(self, via: Via, answer: Answer, timing: QuestionTiming) -> None:
        timing.published_at = time.monotonic()
        self.timings.append(timing)
        self._outcome(answer)
        self.telemetry.answered(via, answer, timing)

    def _outcome(self, answer: Answer) -> None:
        if answer.error is None:
            self.last_answer_at = time.time()
        else:
            self.last_error = {**answer.error, "at": time.time()}

    # --- the model ------------------------------------------------------------------------------

    async def complete(self, request: ModelRequest, *, timing: QuestionTiming | None = None) -> ModelResponse:
        """The one call to the model, for callers that are not a question (rule checks, memory queries): counts
        the request (`via`), admits it (`asker`), runs it by the deadline, reports the outcome to telemetry.
        Raises `QuestionError` (busy, shutdown, timeout, the LLM's failure), reported like any error answer."""
        self.telemetry.question(request.via)
        timing = timing or QuestionTiming(id=request.question_id, received_at=time.monotonic())
        response: ModelResponse | None = None
        failure: QuestionError | None = self.admit(request.asker, request.question_id)
        if failure is None:
            with self.admission.enter(request.asker, request.question_id) as slot:
                deadline = timing.received_at + self.config.question_timeout_s
                try:
                    await slot.wait(deadline)
                    timing.started_at = timing.frames_at = time.monotonic()
                    response = await self.call_model(request, deadline=deadline, timing=timing)
                except QuestionError as exc:
                    failure = exc
                except asyncio.CancelledError:  # its caller stopped (shutdown): still one outcome per request
                    self._report(request, None, QuestionError(ErrorType.SHUTDOWN, "cancelled"), timing)
                    raise
        self._report(request, response, failure, timing)
        if failure is not None:
            raise failure
        assert response is not None
        return response

    def _report(self, request: ModelRequest, response: ModelResponse | None, failure: QuestionError | None,
                timing: QuestionTiming) -> None:
        timing.answered_at = timing.published_at = time.monotonic()
        answer = self._answer_of(request, response, failure, timing)
        self._outcome(answer)
        self.telemetry.answered(request.via, answer, timing)

    async def call_model(self, request: ModelRequest, *, deadline: float | None = None,
                         timing: QuestionTiming | None = None) -> ModelResponse:
        """Run an admitted request by `deadline` (monotonic; default `agent.question_timeout_s` from now); every
        failure comes back as a `QuestionError` (the one place provider errors are mapped)."""
        limit = self.config.question_timeout_s
        deadline = time.monotonic() + limit if deadline is None else deadline
        timeout = asyncio.timeout_at(deadline)
        try:
            with answer_by(deadline):  # retries never sleep past it
                async with timeout:
                    return await self.model.run(request, timing)
        except QuestionError:
            raise
        except TimeoutError as exc:
            if not timeout.expired():  # another timeout (the provider's own `llm.timeout`): say which one fired
                raise llm_error(exc, self.provider_name) from exc
            raise QuestionError(ErrorType.TIMEOUT, f"no answer within agent.question_timeout_s = {limit:g} s") from None
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a provider or encoder failure
            raise llm_error(exc, self.provider_name) from exc

    def _answer_of(self, request: ModelRequest, response: ModelResponse | None, failure: QuestionError | None,
                   timing: QuestionTiming) -> Answer:
        """What telemetry sees of a `complete` call (the same shape as a question's answer)."""
        qid = request.question_id if request.question_id is not None else new_id()
        latency = time.monotonic() - timing.received_at
        if failure is not None or response is None:
            error = failure or QuestionError(ErrorType.INTERNAL, "no response")
            return Answer.failed(Question(question=request.prompt, id=qid, source=request.source), error,
                                 provider=self.provider_name, latency_s=latency)
        return Answer(id=qid, question=request.prompt, text=response.text, source=request.source,
                      frames=[FrameRef(f.pts, f.age_s) for f in response.frames], model=response.model,
                      provider=self.provider_name, latency_s=latency, trimmed=response.trimmed or None)

    # --- questions ------------------------------------------------------------------------------

    async def ask(self, question: Question, *, via: Via = Via.MQTT, on_partial: PartialCallback | None = None,
                  timing: QuestionTiming | None = None, used: list[TakenFrame] | None = None,
                  owner: str | None = None) -> Answer:
        """The answer to `question` (already admitted, or asked directly from Python); never raises: failures come
        back as an answer with `error`. `used` gets the frames the model saw; `owner` is whose conversation
        `question.conversation` is (the asker key `take` got; None: Python's own)."""
        timing = timing or QuestionTiming(id=question.id, received_at=time.monotonic())
        deadline = timing.received_at + self.config.question_timeout_s  # the wait for a slot counts
        source: str | None = question.source
        try:
            answer = await self._answer(question, via, on_partial, timing, deadline, used, owner)
        except QuestionError as exc:
            answer = Answer.failed(question, exc, provider=self.provider_name)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a frame source that failed: still exactly one answer
            answer = Answer.failed(question, llm_error(exc, self.provider_name), provider=self.provider_name)
        if answer.source is None:
            answer.source = source
        answer.latency_s = time.monotonic() - timing.received_at
        timing.answered_at = time.monotonic()
        if answer.error is None:
            logger.info("%s %s on %s answered in %.3f s", via.value, question.id, answer.source, answer.latency_s)
        else:
            logger.warning("%s %s failed after %.3f s: %s: %s", via.value, question.id, answer.latency_s,
                           answer.error["type"], answer.error["message"])
        return answer

    async def _answer(self, question: Question, via: Via, on_partial: PartialCallback | None, timing: QuestionTiming,
                      deadline: float, used: list[TakenFrame] | None, owner: str | None) -> Answer:
        timing.started_at = time.monotonic()
        if question.about_the_past and self.recall is not None:  # from the event store, not the live frames
            return await self.recall(question, on_partial=on_partial, deadline=deadline, timing=timing)
        cfg = self.config
        source = resolve_source(self.driver, question.source, cfg.default_source)
        question.source = source
        assert self.driver is not None  # `resolve_source` found the source there
        try:
            async with asyncio.timeout_at(deadline):
                taken = await take_frames(self.driver.get_buffer(source), source, question.frames or cfg.frames,
                                          cfg.window_s, cfg.frame_wait_s)
                if question.lookback_s:  # "what just happened?": look-back images first (the budget drops them first)
                    taken = await lookback_frames(self.lookbacks.get(source), question.lookback_s, taken) + taken
        except TimeoutError:
            raise QuestionError(ErrorType.TIMEOUT, "no answer within agent.question_timeout_s = "
                                f"{self.config.question_timeout_s:g} s") from None
        timing.frames_at = time.monotonic()
        key = self.conversations.key(source, question.conversation, owner) if via.asked else None
        turns = self.conversations.turns(key)
        request = ModelRequest(prompt=question.question, via=via, asker=via.value, source=source, frames=taken,
                               history=turns, options=self.llm_options, on_partial=on_partial,
                               question_id=question.id)
        response = await self.call_model(request, deadline=deadline, timing=timing)
        self.conversations.remember(key, question.question, response.text)
        if used is not None:
            used.extend(response.frames)
        return Answer(
            id=question.id, question=question.question, text=response.text, source=source,
            frames=[FrameRef(f.pts, f.age_s) for f in response.frames], model=response.model,
            provider=self.provider_name, trimmed=response.trimmed or None,
            tool_calls=[{"id": c.id, "name": c.name, "arguments": c.arguments} for c in response.tool_calls],
        )

    def history(self, source: str, conversation: str | None = None, owner: str | None = None) -> list[Turn]:
        """The (question, answer) pairs kept for a question from `owner` on `source` in `conversation` (see
        `agent.history`)."""
        return self.conversations.turns(self.conversations.key(source, conversation, owner))

    # --- descriptions and observers --------------------------------------------------------------

    async def describe(self, source: str, prompt: str, via: Via) -> Answer | None:
        """Describe `source` once the `descriptions` asker's turn comes, and publish on `<prefix>/<source>/description`;
        None when busy."""
        question = Question(question=prompt, source=source)
        timing = QuestionTiming(id=question.id, received_at=time.monotonic())
        used: list[TakenFrame] = []
        with self.admission.enter("descriptions", question.id) as slot:
            try:
                await slot.wait(timing.received_at + self.config.question_timeout_s)
            except QuestionError as exc:
                logger.info("agent: skipping a %s description of %s (%s)", via.value, source, exc.type.value)
                return None
            self.telemetry.question(via)
            answer = await self.ask(question, via=via, timing=timing, used=used)
        if self.messager is not None and answer.error is None:
            await self.messager.publish(self.topics.description(source), answer.payload())
        self._sent(via, answer, timing)
        await self.notify(AgentEvent(EventKind.DESCRIPTION, via, source, answer=answer, frames=tuple(used)))
        return answer

    async def notify(self, event: AgentEvent) -> None:
        """Hand `event` to every observer, in order; a failing one is logged, not raised."""
        for observer in list(self._observers):
            try:
                result = observer(event)
                if asyncio.iscoroutine(result):
                    await result
            except Exception:
                logger.exception("agent: an event observer failed on a %s event", event.kind.value)

    def describe_state(self) -> dict[str, Any]:
        """State for /healthz."""
        return {"in_flight": self.in_flight, "counters": dict(self.counts.answers),
                "questions": dict(self.counts.questions), "conversations": len(self.conversations),
                "context_tokens": self.budget.context_tokens, "last_answer_at": self.last_answer_at,
                "last_error": self.last_error}

