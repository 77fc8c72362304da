"""`AskApi`: `POST /api/ask`, the console's questions without a camera of its own.

The page asks over its data channel when the question is about its own connected camera (answers stream there);
every other question, and every question from a page that never pressed Connect, comes here. The body is the JSON
of `<prefix>/ask` (`question`, `source`, `frames`, `conversation`, `since`/`until`, `lookback_s`, `id`); the
answer is the JSON of `<prefix>/answer`, one per question, copied there for MQTT listeners. It goes through the
core like the MCP tool `ask` (`request_intake.RequestQuestions`: `parse`, `take`, `refuse`). With
`Accept: application/x-ndjson` the answer streams: `200` and one line per piece (`{"id", "seq", "delta"}`, as on
`<prefix>/answer/partial`), then the answer's line; a question answered before any piece (a refusal, a model error)
gets the plain JSON below with its own status.

Admission: each page tab names itself in `X-Console-Tab` (1-64 of `A-Za-z0-9_-`), its asker key `page-tab:<id>`,
so the fair share per asker holds between tabs (one that floods gets `busy` while another is answered); a request
without the header shares the key `page-tab`. Its conversations are the page's (owner `page`), as on the data
channel, so a tab's conversation is one history whichever way the tab asks. The body is bounded by the agent's question size
(`mqtt.max_payload_bytes`) and must arrive within `webrtc.body_timeout_s`. Status: 200 with the answer (also an
answer whose model call failed: its `error` says why), 400 body not a JSON object or a bad question, 404 unknown
source, 408 body too slow, 413 body too large, 429 busy (`Retry-After`), 503 starting or shutting down; every error
body is the answer JSON with `error` `{"type", "message"}`.
"""

from __future__ import annotations

import contextlib
import json
import re
from typing import TYPE_CHECKING, Any

from aiohttp import web

from ..errors import ErrorType, QuestionError
from ..http_body import BodyError, read_body
from ..messages import Answer
from ..page_intake import PAGE_OWNER
from ..request_intake import RequestQuestions
from ..telemetry import Via

if TYPE_CHECKING:
    from ..host import DaemonHost

__all__ = ["ASKER_PREFIX", "NDJSON", "TAB_HEADER", "AskApi"]

TAB_HEADER = "X-Console-Tab"
ASKER_PREFIX = "page-tab"
NDJSON = "application/x-ndjson"
"""Asked for in `Accept`, the answer streams: one partial JSON per line, then the answer's line."""
_TAB_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_STATUS = {ErrorType.BAD_PAYLOAD.value: 400, ErrorType.EMPTY_QUESTION.value: 400,
           ErrorType.UNKNOWN_SOURCE.value: 404, ErrorType.BUSY.value: 429, ErrorType.SHUTDOWN.value: 503}
"""The HTTP status of an answer by its error type; any other answer is a 200 (its `error` says what failed)."""


class AskApi:
    """The route `POST /api/ask` over a running daemon's agent."""

    def __init__(self, daemon: DaemonHost) -> None:
        self.daemon = daemon
        self._questions: RequestQuestions | None = None

    def routes(self) -> list[tuple[str, str, Any]]:
        return [("POST", "/api/ask", self.ask)]

    async def ask(self, request: web.Request) -> web.StreamResponse:
        agent = self.daemon.agent
        if agent is None:
            return _error(503, ErrorType.SHUTDOWN, "the daemon is starting; ask again in a moment")
        tab = request.headers.get(TAB_HEADER)
        if tab is not None and not _TAB_ID.fullmatch(tab):
            return _error(400, ErrorType.BAD_PAYLOAD, f"{TAB_HEADER} must be 1-64 letters, digits, '_' or '-'")
        try:
            body = await read_body(request, max_bytes=agent.max_payload_bytes,
                                   timeout_s=self.daemon.config.webrtc.body_timeout_s)
        except BodyError as exc:
            return _error(exc.status, ErrorType.BAD_PAYLOAD, f"{exc} (mqtt.max_payload_bytes)" if exc.status == 413
                          else str(exc))
        try:
            data = json.loads(body)
        except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
            return _error(400, ErrorType.BAD_PAYLOAD, f"the body is not JSON ({exc}): send the JSON of <prefix>/ask, "
                          'e.g. {"question": "What do you see?", "source": "door"}')
        if not isinstance(data, dict):
            return _error(400, ErrorType.BAD_PAYLOAD, 'the body must be a JSON object, e.g. {"question": "..."}')
        if self._questions is None or self._questions.agent is not agent:
            self._questions = RequestQuestions(agent, Via.PAGE)
        asker = f"{ASKER_PREFIX}:{tab}" if tab else ASKER_PREFIX
        stream = _NdjsonStream(request) if NDJSON in request.headers.get("Accept", "") else None
        # the tab's conversation id is the page's, as over its data channel: one history whichever way it asks
        answer, _ = await self._questions.ask(body, asker=asker, owner=PAGE_OWNER,
                                              on_partial=stream.partial if stream else None)
        if stream is None or stream.response is None:  # nothing streamed (a refusal, a past question): one JSON
            return _answer_response(answer)
        with contextlib.suppress(ConnectionError):  # the caller went away: the answer still went to MQTT
            await stream.response.write(answer.payload() + b"\n")
            await stream.response.write_eof()
        return stream.response


class _NdjsonStream:
    """An answer streamed as NDJSON: the response starts (200) with the first piece, so a question refused before
    any piece still gets its own status and one JSON body."""

    def __init__(self, request: web.Request) -> None:
        self.request = request
        self.response: web.StreamResponse | None = None

    async def partial(self, payload: bytes) -> None:
        if self.response is None:
            self.response = web.StreamResponse(headers={"Content-Type": NDJSON, "Cache-Control": "no-store"})
            await self.response.prepare(self.request)
        await self.response.write(payload + b"\n")


def _answer_response(answer: Answer) -> web.Response:
    status = 200 if answer.error is None else _STATUS.get(str(answer.error.get("type")), 200)
    headers = {"Cache-Control": "no-store", **({"Retry-After": "1"} if status == 429 else {})}
    return web.Response(body=answer.payload(), status=status, content_type="application/json", headers=headers)


def _error(status: int, kind: ErrorType, message: str) -> web.Response:
    """A refusal before the question reached the agent, in the answer's shape."""
    answer = Answer.failed(None, QuestionError(kind, message))
    return web.Response(body=answer.payload(), status=status, content_type="application/json",
                        headers={"Cache-Control": "no-store"})
