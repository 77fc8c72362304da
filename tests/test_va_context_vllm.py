"""The context budget and conversations against the real vLLM server with a small context (256 and 512 tokens).

A recording proxy (a small aiohttp server in front of vLLM) keeps every request body, so the tests check what the
model really received: how many images, which history turns, which `max_tokens`.
"""

from __future__ import annotations

import asyncio
import json

import pytest
from aiohttp import ClientSession, web

from tests.fixtures.frames import Buffers
from visual_agent.agent import VisualAgent
from visual_agent.config import AgentConfig
from visual_agent.messages import Question
from visual_agent.page_intake import PageQuestions

pytestmark = pytest.mark.vllm

HISTORY_TURNS = 4
# Questions in the one-conversation test: two rounds of the 6-question pattern (4 frames every third, streamed
# every other), 8 of them with a full history of HISTORY_TURNS long random answers (it was 20: more of the same).
QUESTIONS = 12


class RecordingProxy:
    """Forwards `/v1/*` to a vLLM server and keeps each chat request's JSON body (in order)."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.removesuffix("/v1")
        self.requests: list[dict] = []
        self.statuses: list[int] = []
        self.base_url = ""
        self._runner: web.AppRunner | None = None
        self._session: ClientSession | None = None

    async def _forward(self, request: web.Request) -> web.Response:
        body = await request.read()
        if request.path.endswith("/chat/completions"):
            self.requests.append(json.loads(body))
        async with self._session.request(request.method, self.upstream + request.path_qs, data=body or None,
                                         headers={"Content-Type": "application/json"}) as upstream:
            data = await upstream.read()
            if request.path.endswith("/chat/completions"):
                self.statuses.append(upstream.status)
            return web.Response(body=data, status=upstream.status, content_type=upstream.content_type)

    async def __aenter__(self) -> RecordingProxy:
        self._session = ClientSession()
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._forward)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        self.base_url = f"http://127.0.0.1:{port}/v1"
        return self

    async def __aexit__(self, *exc) -> None:
        await self._runner.cleanup()
        await self._session.close()


class Camera(Buffers):
    """Buffers that also carry a page channel: `send_data` keeps what the page would receive."""

    def __init__(self, *names: str) -> None:
        super().__init__(*names, max_frames=16, max_seconds=60)
        self.on_data_message = None
        self.sent: dict[str, list[dict]] = {}

    async def send_data(self, peer_id: str, text: str) -> None:
        self.sent.setdefault(peer_id, []).append(json.loads(text))

    def feed(self, name: str, n: int = 8) -> None:
        import av
        import numpy as np

        for i in range(n):
            self.buffers[name].put(av.VideoFrame.from_ndarray(np.full((48, 64, 3), 30 * i, np.uint8), format="rgb24"))


def images_in(request: dict) -> int:
    return sum(1 for m in request["messages"] if isinstance(m["content"], list)
               for part in m["content"] if part.get("type") == "image_url")


def history_in(request: dict) -> list[tuple[str, str]]:
    """(question, answer) turns sent before the question itself."""
    body = request["messages"][1:-1]
    return [(body[i]["content"], body[i + 1]["content"]) for i in range(0, len(body), 2)]


def text_of(request: dict) -> str:
    return json.dumps([m["content"] for m in request["messages"]])


def make_agent(base_url: str, camera: Camera, *, max_tokens: int | None = None, **agent) -> VisualAgent:
    """An agent on the vLLM server behind `base_url`; `max_tokens` None: the provider's default (512)."""
    from providers import VLLMProvider

    config = AgentConfig(history_turns=HISTORY_TURNS, window_s=60.0, question_timeout_s=120.0, **agent)
    llm = {"base_url": base_url, "temperature": 0.0, "max_retries": 0}
    if max_tokens is not None:
        llm["max_tokens"] = max_tokens  # short answers: the whole history fits, so what is sent is all there is
    return VisualAgent(VLLMProvider(llm),
                       webrtc_driver=camera, config=config, provider_name="vllm")


@pytest.fixture(params=["256", "512"])
def small_server(request):
    return request.getfixturevalue("vllm_server_256" if request.param == "256" else "vllm_server")


async def test_context_budget_a_dozen_questions_in_one_conversation_all_answered(small_server):
    """12 questions with history on, every third with 4 frames, every other streamed, the provider's default
    max_tokens (512): each is answered, and `trimmed` says exactly what the model did not receive."""
    camera = Camera("cam")
    async with RecordingProxy(small_server.base_url) as proxy:
        agent = make_agent(proxy.base_url, camera)
        try:
            trimmed_any = False
            for i in range(QUESTIONS):
                camera.feed("cam")
                frames = 4 if i % 3 == 0 else None
                before = len(proxy.requests)
                pieces: list[str] = []

                async def on_partial(seq: int, delta: str, pieces: list[str] = pieces) -> None:
                    pieces.append(delta)

                answer = await agent.ask(Question(question=f"question {i}: what is on the table?", source="cam",
                                                  frames=frames, conversation="one"),
                                         on_partial=on_partial if i % 2 else None)  # the page streams: no usage
                assert answer.error is None, (i, answer.error)
                assert "".join(pieces) == (answer.text if i % 2 else "")
                sent = proxy.requests[-1]
                assert len(proxy.requests) - before in (1, 2)  # a refusal is retried once, trimmed
                trimmed = answer.trimmed or {}
                trimmed_any = trimmed_any or bool(trimmed)
                assert images_in(sent) == (frames or 1) - trimmed.get("frames", 0) >= 1
                assert len(history_in(sent)) == min(i, HISTORY_TURNS) - trimmed.get("history_turns", 0)
                assert 16 <= sent["max_tokens"] <= 512
                assert answer.as_dict().get("trimmed") == (trimmed or None)
            assert proxy.statuses[-1] == 200
            print(f"\n{small_server.max_model_len} tokens: {len(proxy.requests)} requests for {QUESTIONS} questions, "
                  f"{proxy.statuses.count(400)} refused; {agent.budget!r}")
        finally:
            await agent.close()
            await agent.llm.aclose()
    assert trimmed_any  # the long random answers cannot all fit a small context


async def test_context_budget_sent_history_is_the_newest_turns(vllm_server_256):
    camera = Camera("cam")
    async with RecordingProxy(vllm_server_256.base_url) as proxy:
        agent = make_agent(proxy.base_url, camera)
        try:
            asked: list[str] = []
            for i in range(6):
                camera.feed("cam", 2)
                asked.append(f"q{i}?")
                answer = await agent.ask(Question(question=asked[-1], source="cam", conversation="c"))
                assert answer.error is None
                sent_questions = [q for q, _ in history_in(proxy.requests[-1])]
                assert sent_questions == asked[:-1][-len(sent_questions):] if sent_questions else True
        finally:
            await agent.close()
            await agent.llm.aclose()


async def test_conversations_on_one_source_never_see_each_others_turns(vllm_server):
    camera = Camera("cam")
    secret = "my door code is 4711"
    async with RecordingProxy(vllm_server.base_url) as proxy:
        agent = make_agent(proxy.base_url, camera, max_tokens=24)
        try:
            camera.feed("cam", 2)
            seen_by: dict[str, list[dict]] = {"alice": [], "bob": [], None: []}
            for who, text in [("alice", secret), ("bob", "is anyone at the door?"), ("alice", "what did I say?"),
                              ("bob", "and now?"), (None, "who is there?"), ("bob", "anything else?")]:
                before = len(proxy.requests)
                answer = await agent.ask(Question(question=text, source="cam", conversation=who))
                assert answer.error is None
                seen_by[who] += proxy.requests[before:]
            assert all("4711" not in text_of(r) for r in seen_by["bob"] + seen_by[None])
            assert any("4711" in text_of(r) for r in seen_by["alice"][1:])  # alice's own history has it
            assert all(history_in(r) == [] for r in seen_by[None])  # no conversation: no history
            assert len(history_in(seen_by["bob"][-1])) == 2
        finally:
            await agent.close()
            await agent.llm.aclose()


async def test_history_source_mode_shares_turns_across_askers(vllm_server):
    camera = Camera("cam")
    async with RecordingProxy(vllm_server.base_url) as proxy:
        agent = make_agent(proxy.base_url, camera, history="source", max_tokens=24)
        try:
            camera.feed("cam", 2)
            assert (await agent.ask(Question(question="first, from alice", source="cam", conversation="alice"))).error is None
            assert (await agent.ask(Question(question="then bob", source="cam"))).error is None
            assert [q for q, _ in history_in(proxy.requests[-1])] == ["first, from alice"]
        finally:
            await agent.close()
            await agent.llm.aclose()


async def wait_for(predicate, timeout_s: float = 60.0):
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def test_page_conversation_is_per_peer_and_survives_a_reconnect_only_with_its_id(vllm_server):
    camera = Camera("cam")
    async with RecordingProxy(vllm_server.base_url) as proxy:
        agent = make_agent(proxy.base_url, camera, max_tokens=24)
        page = PageQuestions(agent, camera)
        try:
            camera.feed("cam", 2)

            async def ask(peer: str, text: str, conversation: str | None = None) -> dict:
                n = len(camera.sent.get(peer, []))
                payload = {"question": text, **({"conversation": conversation} if conversation else {})}
                await page.handle("cam", peer, json.dumps(payload))
                await wait_for(lambda: len(camera.sent.get(peer, [])) > n)
                answer = camera.sent[peer][-1]
                assert answer["error"] is None
                return proxy.requests[-1]

            await ask("peer-1", "first on peer 1")
            assert [q for q, _ in history_in(await ask("peer-1", "second on peer 1"))] == ["first on peer 1"]
            assert history_in(await ask("peer-2", "a reconnect without an id")) == []  # a new connection, a new one
            await ask("peer-3", "tab question", conversation="tab-7f3a")
            sent = await ask("peer-4", "the same tab after a reconnect", conversation="tab-7f3a")
            assert [q for q, _ in history_in(sent)] == ["tab question"]
            assert history_in(await ask("peer-5", "another tab", conversation="tab-0000")) == []
        finally:
            await agent.close()
            await agent.llm.aclose()


async def test_context_refusal_is_retried_once_trimmed(vllm_server_256):
    """A wrong `llm.context_tokens` (4096 on a 256-token server): the first request asks for 512 answer tokens and
    is refused for context length; the agent learns the limit from the refusal and the retry fits."""
    from providers import VLLMProvider

    camera = Camera("cam")
    async with RecordingProxy(vllm_server_256.base_url) as proxy:
        llm = VLLMProvider({"base_url": proxy.base_url, "temperature": 0.0, "max_retries": 0, "context_tokens": 4096})
        agent = VisualAgent(llm, webrtc_driver=camera, config=AgentConfig(history_turns=4, window_s=60.0),
                            provider_name="vllm")
        try:
            camera.feed("cam")
            answer = await agent.ask(Question(question="what is here?", source="cam", frames=4, conversation="c"))
            assert answer.error is None, answer.error
            assert proxy.statuses[:2] == [400, 200] and len(proxy.requests) == 2
            assert proxy.requests[0]["max_tokens"] == 512 and proxy.requests[1]["max_tokens"] < 256
            assert images_in(proxy.requests[1]) == 4 - (answer.trimmed or {}).get("frames", 0)
            assert agent.budget.context_tokens == 256
        finally:
            await agent.close()
            await llm.aclose()


async def test_no_question_wedges_a_conversation(vllm_server_256):
    """A question that cannot fit gets `context_exceeded` saying what to change; the next one is answered."""
    camera = Camera("cam")
    async with RecordingProxy(vllm_server_256.base_url) as proxy:
        agent = make_agent(proxy.base_url, camera)
        try:
            camera.feed("cam")
            assert (await agent.ask(Question(question="hello?", source="cam", conversation="c"))).error is None
            huge = await agent.ask(Question(question="why " * 400, source="cam", conversation="c"))
            assert huge.error and huge.error["type"] == "context_exceeded" and "--max-model-len" in huge.error["message"]
            for _ in range(3):
                camera.feed("cam")
                answer = await agent.ask(Question(question="and now?", source="cam", frames=4, conversation="c"))
                assert answer.error is None, answer.error
        finally:
            await agent.close()
            await agent.llm.aclose()


async def test_vllm_provider_context_length_from_the_server(vllm_server_256, vllm_server):
    from providers import VLLMProvider

    for server, expected in ((vllm_server_256, 256), (vllm_server, 512)):
        llm = VLLMProvider({"base_url": server.base_url})
        try:
            assert await llm.context_length() == expected
        finally:
            await llm.aclose()
