"""`VisualAgent`: questions in (MQTT `<prefix>/ask`, the page's data channel), frames from the sources, answers out.

Every question gets exactly one answer with its `id`, also when something failed (then `error` says what:
bad payload, unknown source, no frame yet, busy, timeout, LLM unreachable, LLM error, shutdown). Questions run as
named tasks, at most `agent.max_in_flight` at once; more get a `busy` answer at once instead of a queue that
grows. Each has a deadline (`agent.question_timeout_s`). Only the sampled frames are converted, in a worker
thread (JPEG data URLs for HTTP providers, or `embedding_function` for providers that take embeddings).
A short text-only history per source (`agent.history_turns` question/answer pairs) makes follow-ups work.
Periodic and scene-change descriptions go to `<prefix>/<source>/description`.

`timings` keeps, per answered MQTT question, when it arrived, when the LLM request left, when the LLM's
answer came back and when the answer was handed to MQTT (monotonic seconds): `scripts/bench_agent.py` reads it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

from .config import DEFAULT_MAX_PAYLOAD_BYTES, DEFAULT_PREFIX, AgentConfig
from .errors import ErrorType, QuestionError
from .messages import Answer, FrameRef, Question, parse_question, partial_payload
from .sampling import SceneChangeDetector, TakenFrame, Trigger, select_frames

__all__ = ["EmbeddingFunction", "QuestionTiming", "VisualAgent", "topics"]

logger = logging.getLogger(__name__)

EmbeddingFunction = Callable[[list[Any]], Awaitable[Any]]
"""``async (frames) -> embeddings`` of shape (n_frames, image_tokens, lm_hidden)."""
PartialCallback = Callable[[int, str], Awaitable[None]]
"""``async (seq, delta)`` for each streamed piece."""

_MAX_HISTORY_SOURCES = 64
_JPEG_CACHE_ENTRIES = 16
_TIMINGS_KEPT = 4096
_MQTT_CONSUMER = "agent-mqtt-questions"


def topics(prefix: str) -> dict[str, str]:
    """The fixed topics under `prefix` (ARCHITECTURE.md)."""
    return {
        "ask": f"{prefix}/ask",
        "answer": f"{prefix}/answer",
        "partial": f"{prefix}/answer/partial",
        "status": f"{prefix}/status",
    }


@dataclass(slots=True)
class QuestionTiming:
    """Monotonic timestamps of one question's path through the agent."""

    id: Any
    received_at: float
    started_at: float | None = None
    """The question's task began (after parsing and admission)."""
    encoded_at: float | None = None
    """Frames taken and converted (JPEG or embeddings)."""
    llm_request_at: float | None = None
    llm_response_at: float | None = None
    published_at: float | None = None

    @property
    def to_llm_s(self) -> float | None:
        """Arrival to LLM request: the agent's overhead before the model."""
        return None if self.llm_request_at is None else self.llm_request_at - self.received_at

    @property
    def to_publish_s(self) -> float | None:
        """LLM answer to the MQTT publish: the agent's overhead after the model."""
        if self.published_at is None or self.llm_response_at is None:
            return None
        return self.published_at - self.llm_response_at


class VisualAgent:
    """Answers questions about live video; see the module docstring."""

    def __init__(
        self,
        llm: Any,
        messager: Any = None,
        webrtc_driver: Any = None,
        embedding_function: EmbeddingFunction | None = None,
        config: AgentConfig | None = None,
        *,
        prefix: str = DEFAULT_PREFIX,
        jpeg_encoder: Any = None,
        frames_as: str = "auto",
        provider_name: str | None = None,
        max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
        on_answer: Callable[[Answer, Trigger], Awaitable[None] | None] | None = None,
    ) -> None:
        self.llm = llm
        self.messager = messager
        self.driver = webrtc_driver
        self.config = config or AgentConfig()
        self.prefix = prefix
        self.topics = topics(prefix)
        self.provider_name = provider_name or type(llm).__name__
        self.max_payload_bytes = max_payload_bytes
        self.on_answer = on_answer
        """Called with every final answer and description (Home Assistant state uses it)."""
        caps = getattr(llm, "capabilities", None)
        if embedding_function is not None and caps is not None and not caps.image_embeddings:
            raise ValueError(
                f"{self.provider_name} cannot take image embeddings; use provider vllm_native with "
                "enable_mm_embeds: true, or drop the embedding function (frames then go as JPEG)"
            )
        if frames_as not in ("auto", "jpeg", "embeddings"):
            raise ValueError(f"frames_as must be auto, jpeg or embeddings, got {frames_as!r}")
        if frames_as == "jpeg" and embedding_function is not None:
            raise ValueError("frames_as='jpeg' forces JPEG frames: drop the embedding_function, or drop frames_as")
        takes = bool(caps is not None and caps.image_embeddings)
        if frames_as == "embeddings" and not takes:
            raise ValueError(f"{self.provider_name} cannot take image embeddings; use provider vllm_native with enable_mm_embeds")
        self._clip: Any = None
        self._clip_lock = asyncio.Lock()
        if embedding_function is None and takes and frames_as != "jpeg":
            # ARCHITECTURE.md: with none given and a provider that takes embeddings, the CLIP encoder serves.
            embedding_function = self._default_clip_embeddings
        self.embedding_function = embedding_function
        if jpeg_encoder is None and embedding_function is None:
            from encoders import JpegEncoder

            jpeg_encoder = JpegEncoder()
        self.jpeg_encoder = jpeg_encoder
        self.timings: collections.deque[QuestionTiming] = collections.deque(maxlen=_TIMINGS_KEPT)
        self.counters: collections.Counter[str] = collections.Counter()
        self._jpeg_cache: collections.OrderedDict[tuple[str, int, int], tuple[Any, asyncio.Future[list[str]], int]] = (
            collections.OrderedDict())
        """(source, seq, id(frame)) -> (frame, the encoding of its batch, its index in the batch)."""
        self._history: collections.OrderedDict[str, collections.deque[tuple[str, str]]] = collections.OrderedDict()
        self._in_flight = 0
        self._question_tasks: set[asyncio.Task[Any]] = set()
        self._refusals: set[asyncio.Task[Any]] = set()
        self._tasks: list[asyncio.Task[Any]] = []
        self._closing = False
        self._closed = False

    def __repr__(self) -> str:
        mode = "embeddings" if self.embedding_function else "jpeg"
        return f"VisualAgent(provider={self.provider_name}, prefix={self.prefix!r}, frames={mode}, in_flight={self._in_flight})"

    # --- lifecycle -------------------------------------------------------------------------------

    @property
    def in_flight(self) -> int:
        return self._in_flight

    async def start(self) -> None:
        """Listen on MQTT and the data channel; start periodic and scene-change descriptions if configured."""
        loop = asyncio.get_running_loop()
        if self.messager is not None:
            await self.messager.subscribe(self._ask_subscription())
            self._tasks.append(loop.create_task(self._consume_mqtt(), name=_MQTT_CONSUMER))
            if hasattr(self.messager, "on_inbox_full"):
                self.messager.on_inbox_full = self._refuse_overflow
        if self.driver is not None:
            self.driver.on_data_message = self.handle_data_message
        if self.config.periodic_interval_s:
            self._tasks.append(loop.create_task(self._periodic(), name="agent-periodic"))
        if self.config.scene_change.enabled:
            self._tasks.append(loop.create_task(self._scene_watch(), name="agent-scene-change"))

    def _ask_subscription(self) -> str:
        group = getattr(getattr(self.messager, "config", None), "shared_group", None)
        return f"$share/{group}/{self.topics['ask']}" if group else self.topics["ask"]

    async def __aenter__(self) -> "VisualAgent":
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
        consumers = [t for t in self._tasks if t.get_name() == _MQTT_CONSUMER]
        await _cancel_all([t for t in self._tasks if t not in consumers])  # descriptions stop at once
        grace = self.config.shutdown_grace_s if grace_s is None else grace_s
        pending = set(self._question_tasks)
        if pending:  # meanwhile new questions (MQTT, the page) get `shutdown` answers (`_admit`)
            logger.info("agent: waiting up to %.1f s for %d question(s) in flight", grace, len(pending))
            _, still = await asyncio.wait(pending, timeout=grace)
            await _cancel_all(list(still))
        if self.driver is not None and getattr(self.driver, "on_data_message", None) == self.handle_data_message:
            self.driver.on_data_message = None
        await _cancel_all(consumers)
        self._tasks = []
        if getattr(self.messager, "on_inbox_full", None) == self._refuse_overflow:
            self.messager.on_inbox_full = None
        if self._refusals:
            await asyncio.gather(*self._refusals, return_exceptions=True)
        encodings = {b for _, b, _ in self._jpeg_cache.values() if not b.done()}  # of questions failed above
        if encodings:
            await asyncio.gather(*encodings, return_exceptions=True)
        take_pending = getattr(self.messager, "take_pending", None)
        for msg in take_pending() if take_pending is not None else ():
            try:
                await self.handle_mqtt(msg)  # `_admit` refuses: a `shutdown` answer (or the payload's error)
            except Exception:
                logger.exception("agent: could not answer a message on %s at shutdown", msg.topic)
        if self._clip is not None:
            with contextlib.suppress(Exception):
                await self._clip.aclose()
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
        try:
            async with asyncio.timeout(self.config.question_timeout_s):
                answer = await self._answer(question, on_partial, trigger, timing)
        except QuestionError as exc:
            answer = Answer.failed(question, exc, provider=self.provider_name)
        except TimeoutError:
            answer = Answer.failed(question, QuestionError(
                ErrorType.TIMEOUT, f"no answer within agent.question_timeout_s = {self.config.question_timeout_s:g} s"
            ), provider=self.provider_name)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a provider or encoder failure becomes an error answer
            answer = Answer.failed(question, _llm_error(exc, self.provider_name), provider=self.provider_name)
        if answer.source is None:
            answer.source = source
        answer.latency_s = time.monotonic() - start
        self.counters["answers" if answer.error is None else f"errors.{answer.error['type']}"] += 1
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
        frames = await self._take_frames(source, question.frames or self.config.frames)
        content = await self._content(question.question, frames, source)
        if timing is not None:
            timing.encoded_at = time.monotonic()
        history = self._history.get(source) if trigger is Trigger.QUESTION else None
        messages: list[dict[str, Any]] = [{"role": "system", "content": self.config.system_prompt}]
        for asked, said in history or ():
            messages += [{"role": "user", "content": asked}, {"role": "assistant", "content": said}]
        messages.append({"role": "user", "content": content})
        if timing is not None:
            timing.llm_request_at = time.monotonic()
        model = getattr(self.llm, "model", None)
        if on_partial is not None and getattr(getattr(self.llm, "capabilities", None), "streaming", True):
            parts: list[str] = []
            seq = 0
            async for delta in self.llm.astream(messages):
                if not delta:
                    continue
                parts.append(delta)
                seq += 1
                await on_partial(seq, delta)
            text = "".join(parts)
            model = getattr(self.llm, "model", None) or model
        else:
            response = await self.llm.achat(messages)
            text, model = response.text, response.model or model
        if timing is not None:
            timing.llm_response_at = time.monotonic()
        if trigger is Trigger.QUESTION:
            self._remember(source, question.question, text)
        return Answer(
            id=question.id, question=question.question, text=text, source=source,
            frames=[FrameRef(f.pts, f.age_s) for f in frames], model=model or _model_name(self.llm),
            provider=self.provider_name,
        )

    def _resolve_source(self, name: str | None) -> str:
        known = list(self.driver.source_names()) if self.driver is not None else []
        if name is None:
            name = self.config.default_source or (known[0] if known else None)
            if name is None:
                raise QuestionError(ErrorType.NO_FRAME, "no source yet: open the page and connect a camera, or configure a source")
            if name not in known:
                raise QuestionError(ErrorType.NO_FRAME, f"the default source {name!r} is not connected yet; known sources: {known or 'none yet'}")
        if name not in known:
            raise QuestionError(ErrorType.UNKNOWN_SOURCE, f"no source {name!r}; known sources: {known or 'none yet'}")
        return name

    async def _take_frames(self, source: str, k: int) -> list[TakenFrame]:
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

    async def _content(self, text: str, frames: list[TakenFrame], source: str) -> Any:
        if self.embedding_function is not None:
            return {"text": text, "image_embeddings": await self.embedding_function([f.frame for f in frames])}
        # Several questions on the same frames encode them once, also while the encoding runs: the cache holds the
        # encoding task (shielded, so a question that times out does not cancel it for the others). An entry holds the
        # frame itself, so its id() cannot be reused while cached.
        keys = [(source, f.seq, id(f.frame)) for f in frames]
        missing = [(k, f.frame) for k, f in zip(keys, frames) if k not in self._jpeg_cache]
        if missing:
            encoder = self.jpeg_encoder

            def encode() -> list[str]:
                return [encoder.data_url(frame) for _, frame in missing]

            batch = asyncio.ensure_future(asyncio.to_thread(encode))
            batch.add_done_callback(self._forget_failed_encoding)
            for i, (key, frame) in enumerate(missing):
                self._jpeg_cache[key] = (frame, batch, i)
        entries = [self._jpeg_cache[k] for k in keys]
        for key in keys:
            self._jpeg_cache.move_to_end(key)
        while len(self._jpeg_cache) > _JPEG_CACHE_ENTRIES:
            self._jpeg_cache.popitem(last=False)
        urls = [(await asyncio.shield(batch))[i] for _, batch, i in entries]
        return [{"type": "text", "text": text}] + [{"type": "image_url", "image_url": {"url": url}} for url in urls]

    def _forget_failed_encoding(self, batch: asyncio.Future[list[str]]) -> None:
        if batch.cancelled() or batch.exception() is not None:
            for key in [k for k, (_, b, _) in self._jpeg_cache.items() if b is batch]:
                del self._jpeg_cache[key]

    async def _default_clip_embeddings(self, frames: list[Any]) -> Any:
        """CLIP embeddings from the provider's own LLaVA folder (`ClipEncoder.from_llava`), loaded on first use."""
        if self._clip is None:
            async with self._clip_lock:
                if self._clip is None:
                    path = _model_name(self.llm)
                    if not path:
                        raise QuestionError(ErrorType.INTERNAL, "no LLaVA folder to load the CLIP encoder from (llm.model_name)")
                    from encoders import ClipEncoder

                    self._clip = await asyncio.to_thread(ClipEncoder.from_llava, path)
                    logger.info("agent: CLIP embeddings from %s", path)
        return await self._clip.aembed_for_llm(frames)

    def _remember(self, source: str, asked: str, said: str) -> None:
        if self.config.history_turns <= 0:
            return
        turns = self._history.get(source)
        if turns is None:
            turns = self._history[source] = collections.deque(maxlen=self.config.history_turns)
            while len(self._history) > _MAX_HISTORY_SOURCES:
                self._history.popitem(last=False)
        self._history.move_to_end(source)
        turns.append((asked, said))

    def history(self, source: str) -> list[tuple[str, str]]:
        """The (question, answer) pairs kept for `source`."""
        return list(self._history.get(source, ()))

    # --- admission: one place decides between answering and a busy/shutdown error ----------------

    def _admit(self, question: Question) -> QuestionError | None:
        if self._closing:
            return QuestionError(ErrorType.SHUTDOWN, "the agent is shutting down", id=question.id)
        if self._in_flight >= self.config.max_in_flight:
            self.counters["busy"] += 1
            return QuestionError(ErrorType.BUSY, f"{self._in_flight} questions in flight (agent.max_in_flight); ask again shortly", id=question.id)
        return None

    def _spawn(self, coro: Awaitable[Any], name: str) -> None:
        self._in_flight += 1
        task = asyncio.get_running_loop().create_task(coro, name=name)  # type: ignore[arg-type]
        self._question_tasks.add(task)

        def done(t: asyncio.Task[Any]) -> None:
            self._in_flight -= 1
            self._question_tasks.discard(t)

        task.add_done_callback(done)

    # --- MQTT ------------------------------------------------------------------------------------

    async def _consume_mqtt(self) -> None:
        async for msg in self.messager.messages():
            try:
                await self.handle_mqtt(msg)
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("agent: could not handle a message on %s", msg.topic)

    def _refuse_overflow(self, msg: Any) -> None:
        """A question the messager's full inbox dropped: a `busy` answer, so it is not lost without one."""
        self.counters["busy"] += 1
        busy = QuestionError(ErrorType.BUSY, "too many questions waiting (mqtt.inbox_max); ask again shortly")
        task = asyncio.get_running_loop().create_task(self.handle_mqtt(msg, refuse=busy), name="agent-refuse-overflow")
        self._refusals.add(task)
        task.add_done_callback(self._refusals.discard)

    async def handle_mqtt(self, msg: Any, *, refuse: QuestionError | None = None) -> None:
        """Take one `<prefix>/ask` message: answer it in a task, or answer with an error at once (`refuse`: this one)."""
        if msg.retain:
            logger.warning("agent: ignoring a retained question on %s (it would be re-answered at every start)", msg.topic)
            return
        timing = QuestionTiming(id=None, received_at=msg.received_at)
        reply_to, forbidden = self._reply_topic(msg.response_topic)
        try:
            question = parse_question(msg.payload, max_bytes=self.max_payload_bytes,
                                      max_chars=self.config.max_question_chars, max_frames=self.config.max_frames)
        except QuestionError as exc:
            self.counters[f"errors.{exc.type.value}"] += 1
            logger.warning("agent: bad question on %s: %s", msg.topic, exc.message)
            await self.messager.publish(reply_to, Answer.failed(None, exc, provider=self.provider_name).payload(),
                                        correlation_data=msg.correlation_data)
            return
        timing.id = question.id
        queued_s = _queued_s(question, msg)
        refused = refuse or forbidden or self._admit(question)
        if refused is not None:
            failed = Answer.failed(question, refused, provider=self.provider_name)
            failed.queued_s = queued_s
            await self.messager.publish(reply_to, failed.payload(), correlation_data=msg.correlation_data)
            return
        self._spawn(self._answer_mqtt(question, reply_to, msg.correlation_data, timing, queued_s),
                    f"agent-question-{question.id}")

    def _reply_topic(self, response_topic: str | None) -> tuple[str, QuestionError | None]:
        """Where the answer goes: the MQTT 5 response topic when the messager allows it (`mqtt.response_topic_prefixes`),
        else `<prefix>/answer`, with a `forbidden_response_topic` error for a topic outside the allowed prefixes."""
        if not response_topic:
            return self.topics["answer"], None
        allowed = getattr(self.messager, "response_topic_allowed", None)
        if allowed(response_topic) if allowed is not None else _valid_topic(response_topic):
            return response_topic, None
        self.counters[f"errors.{ErrorType.FORBIDDEN_RESPONSE_TOPIC.value}"] += 1
        logger.warning("agent: refused response topic %r (not under mqtt.response_topic_prefixes)", response_topic[:200])
        prefixes = getattr(getattr(self.messager, "config", None), "allowed_response_prefixes", lambda: [])()
        return self.topics["answer"], QuestionError(
            ErrorType.FORBIDDEN_RESPONSE_TOPIC,
            f"the response topic must start with one of {prefixes} (mqtt.response_topic_prefixes); "
            f"this answer went to {self.topics['answer']}")

    async def _answer_mqtt(self, question: Question, reply_to: str, correlation: bytes | None, timing: QuestionTiming,
                           queued_s: float | None = None) -> None:
        async def send_partial(payload: bytes) -> None:
            await self.messager.publish(self.topics["partial"], payload)

        async def send_answer(answer: Answer) -> None:
            answer.queued_s = queued_s
            await self.messager.publish(reply_to, answer.payload(), correlation_data=correlation)
            timing.published_at = time.monotonic()
            self.timings.append(timing)

        await self._answer_and_send(question, send_partial, send_answer, timing)

    async def _answer_and_send(self, question: Question, send_partial: Callable[[bytes], Awaitable[None]],
                               send_answer: Callable[[Answer], Awaitable[None]], timing: QuestionTiming | None = None) -> None:
        """Answer `question`, streaming partials when it (or the config) asks, and send the answer; when cancelled
        (shutdown), send a `shutdown` answer instead. MQTT and the data channel differ only in `send_*`."""
        stream = self.config.stream if question.stream is None else question.stream
        received_at = time.monotonic() if timing is None else timing.received_at

        async def on_partial(seq: int, delta: str) -> None:
            await send_partial(partial_payload(question.id, seq, delta))

        try:
            answer = await self.ask(question, on_partial=on_partial if stream else None, received_at=received_at, timing=timing)
        except asyncio.CancelledError:
            await send_answer(Answer.failed(question, QuestionError(ErrorType.SHUTDOWN, "the daemon stopped before the answer was ready"),
                                            provider=self.provider_name, latency_s=time.monotonic() - received_at))
            raise
        await send_answer(answer)
        await self._notify(answer, Trigger.QUESTION)

    async def _notify(self, answer: Answer, trigger: Trigger) -> None:
        if self.on_answer is None or answer.error is not None:
            return
        try:
            result = self.on_answer(answer, trigger)
            if asyncio.iscoroutine(result):
                await result
        except Exception:
            logger.exception("agent: on_answer hook failed")

    # --- the page's data channel -------------------------------------------------------------------

    async def handle_data_message(self, source: str, peer_id: str, text: str) -> None:
        """A question typed on the page: answers and partials go back on that peer's channel (and MQTT)."""
        try:
            question = parse_question(text, max_bytes=self.max_payload_bytes, max_chars=self.config.max_question_chars,
                                      max_frames=self.config.max_frames)
        except QuestionError as exc:
            await self._send_peer(peer_id, Answer.failed(None, exc, provider=self.provider_name).payload())
            return
        if question.source is None:
            question.source = source
        refused = self._admit(question)
        if refused is not None:
            await self._send_peer(peer_id, Answer.failed(question, refused, provider=self.provider_name).payload())
            return
        self._spawn(self._answer_peer(question, peer_id), f"agent-question-{question.id}")

    async def _answer_peer(self, question: Question, peer_id: str) -> None:
        async def send_partial(payload: bytes) -> None:
            await self._send_peer(peer_id, payload)

        async def send_answer(answer: Answer) -> None:
            await self._send_peer(peer_id, answer.payload())
            if self.messager is not None:  # a copy for MQTT listeners (dashboards, Home Assistant)
                await self.messager.publish(self.topics["answer"], answer.payload())

        await self._answer_and_send(question, send_partial, send_answer)

    async def _send_peer(self, peer_id: str, payload: bytes) -> None:
        try:
            await self.driver.send_data(peer_id, payload.decode("utf-8"))
        except Exception as exc:  # the peer left: nothing to answer to
            logger.info("agent: cannot answer peer %s: %s", peer_id, exc)

    # --- periodic and scene-change descriptions ---------------------------------------------------

    async def describe(self, source: str, prompt: str, trigger: Trigger) -> Answer | None:
        """Describe `source` now and publish on `<prefix>/<source>/description`; None when busy."""
        question = Question(question=prompt, source=source)
        if self._admit(question) is not None:
            logger.info("agent: skipping a %s description of %s (busy)", trigger.value, source)
            return None
        self._in_flight += 1
        try:
            answer = await self.ask(question, trigger=trigger)
        finally:
            self._in_flight -= 1
        if self.messager is not None and answer.error is None:
            await self.messager.publish(f"{self.prefix}/{source}/description", answer.payload())
        await self._notify(answer, trigger)
        return answer

    async def _periodic(self) -> None:
        interval = float(self.config.periodic_interval_s or 0)
        while True:
            await asyncio.sleep(interval)
            for source in self._live_sources():
                with _logged_failure("periodic description", source):
                    await self.describe(source, self.config.periodic_prompt, Trigger.PERIODIC)

    async def _scene_watch(self) -> None:
        cfg = self.config.scene_change
        detectors: dict[str, SceneChangeDetector] = {}
        seen: dict[str, int] = {}
        while True:
            await asyncio.sleep(cfg.check_interval_s)
            live = self._live_sources()
            for gone in detectors.keys() - set(live):  # a page's source is not reused once its peer left
                del detectors[gone]
                seen.pop(gone, None)
            for source in live:
                with _logged_failure("scene-change check", source):
                    newest = self.driver.get_buffer(source).latest()  # KeyError: the source left meanwhile
                    if newest is None or seen.get(source) == newest.seq:
                        continue
                    seen[source] = newest.seq
                    detector = detectors.setdefault(source, SceneChangeDetector(cfg.threshold, cfg.min_gap_s))
                    if await detector.check(newest.frame):
                        logger.info("agent: scene change on %s (distance %.3f)", source, detector.last_distance or 0.0)
                        await self.describe(source, cfg.prompt, Trigger.SCENE_CHANGE)

    def _live_sources(self) -> list[str]:
        if self.driver is None:
            return []
        return [s for s in self.driver.source_names() if self.driver.get_buffer(s).latest() is not None]

    def describe_state(self) -> dict[str, Any]:
        """State for /healthz."""
        return {"in_flight": self._in_flight, "counters": dict(self.counters)}


@contextlib.contextmanager
def _logged_failure(what: str, source: str) -> Any:
    """Keep a watcher loop alive through one source's failure (a source that left is not worth a traceback)."""
    try:
        yield
    except KeyError:
        logger.info("agent: %s of %s skipped: the source left", what, source)
    except Exception:
        logger.exception("agent: %s of %s failed", what, source)


async def _cancel_all(tasks: list[asyncio.Task[Any]]) -> None:
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task


def _queued_s(question: Question, msg: Any) -> float | None:
    """How long the question waited before the daemon got it (its `asked_at` to receipt), or None."""
    received_wall = getattr(msg, "received_wall", 0.0)
    if question.asked_at is None or not received_wall:
        return None
    return max(0.0, received_wall - question.asked_at)


def _valid_topic(topic: str | None) -> str | None:
    if not topic or any(c in topic for c in "+#\0"):
        return None
    return topic


def _model_name(llm: Any) -> str | None:
    return getattr(llm, "model", None) or getattr(getattr(llm, "config", None), "model_name", None)


def _llm_error(exc: Exception, provider: str) -> QuestionError:
    """Map a provider failure to an answer error (providers' tree, by class name so any provider works).

    The message goes out to every MQTT listener: a password in the endpoint URL (user:token@) is masked.
    """
    from webrtc.config import mask_url_secrets

    names = {cls.__name__ for cls in type(exc).__mro__}
    where = getattr(exc, "endpoint", None)
    suffix = f" ({where})" if where else ""
    if "ProviderConnectionError" in names or isinstance(exc, ConnectionError):
        kind, text = ErrorType.LLM_UNREACHABLE, f"the LLM{suffix} cannot be reached: {exc}; is it running? `visual-agent check` says what is wrong"
    elif "ProviderTimeoutError" in names:
        kind, text = ErrorType.TIMEOUT, f"the LLM{suffix} did not answer in time: {exc}"
    elif "ProviderError" in names:
        kind, text = ErrorType.LLM_ERROR, f"{type(exc).__name__}: {exc}"
    else:
        logger.error("agent: unexpected %s: %s", type(exc).__name__, mask_url_secrets(str(exc)), exc_info=exc)
        kind, text = ErrorType.INTERNAL, f"{type(exc).__name__}: {exc}"
    return QuestionError(kind, mask_url_secrets(text))
