"""The console's HTTP API: what the page (`webrtc/static/`) reads and changes besides the camera and the data
channel. Every route is served by the page's server behind its token guard (`WebRTCServer.add_route`).

| route | module | what |
| --- | --- | --- |
| `GET /api/state` | `state.py`, `llm_watch.py` | daemon, LLM (probed while a page watches), broker, events, token, sources, rules |
| `GET /sources/<name>.jpg` | `snapshots.py` | the source's newest frame as a small JPEG (`ETag`: its frame seq) |
| `GET/PUT/DELETE /api/rules[/<name>]` | `rules_api.py` | the rule set of `<prefix>/rules/set`, edited |
| `GET /api/rules/<name>/evidence.jpg`, `lookback.jpg` | `rules_api.py` | the rule's newest `on` evidence |
| `POST /api/ask` | `ask_api.py` | a question about any source (or the past), answered without a camera of the page's own |
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from ..host import DaemonHost
from .ask_api import AskApi
from .llm_watch import LlmWatch
from .rules_api import EvidenceStore, RulesApi
from .snapshots import Snapshots
from .state import console_state

__all__ = ["AskApi", "Console", "EvidenceStore", "LlmWatch", "RulesApi", "Snapshots", "console_state"]


class Console:
    """The console's routes for one daemon; `mount(driver)` before the driver starts, `watch(agent)` once the agent
    exists (rule evidence is kept from then on)."""

    def __init__(self, daemon: DaemonHost) -> None:
        self.daemon = daemon
        self.evidence = EvidenceStore(daemon)
        self.rules = RulesApi(daemon, self.evidence)
        self.questions = AskApi(daemon)
        self.snapshots: Snapshots | None = None
        self.llm = LlmWatch()
        """Probes the LLM again while a page watches (`llm_watch.py`)."""

    def mount(self, driver: Any) -> None:
        """Add the console's routes to `driver` (a `WebRTCServer` not yet started)."""
        self.snapshots = Snapshots(driver)
        driver.add_route("GET", "/api/state", self.state)
        driver.add_route("GET", "/sources/{name}.jpg", self.snapshot)
        for method, path, handler in [*self.rules.routes(), *self.questions.routes()]:
            driver.add_route(method, path, handler)

    def watch(self, agent: Any) -> None:
        """Keep each rule's newest evidence for the page (`VisualAgent.observe`)."""
        agent.observe(self.evidence.observe)

    async def close(self) -> None:
        """Stop what the console started (an LLM probe in flight). Safe twice."""
        await self.llm.close()

    async def state(self, request: web.Request) -> web.StreamResponse:
        if self.daemon.llm_state.get("state") != "unknown":  # after the daemon's own start probe
            self.llm.poke(self.daemon.llm)
        return web.json_response(console_state(self.daemon, evidence=self.evidence, llm_watch=self.llm),
                                 headers={"Cache-Control": "no-store"})

    async def snapshot(self, request: web.Request) -> web.StreamResponse:
        assert self.snapshots is not None
        name = request.match_info["name"]
        try:
            shot = await self.snapshots.get(name)
        except KeyError as exc:
            return web.json_response({"error": str(exc.args[0])}, status=404)
        if shot is None:
            return web.json_response({"error": f"source {name!r} has no frame yet"}, status=404)
        etag = f'"{shot.seq}"'
        headers = {"ETag": etag, "Cache-Control": "no-cache", "X-Frame-Age": f"{shot.age_s:.3f}"}
        if request.headers.get("If-None-Match") == etag:
            return web.Response(status=304, headers=headers)
        return web.Response(body=shot.jpeg, content_type="image/jpeg", headers=headers)
