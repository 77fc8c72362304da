"""The browser page in headless Chromium (Debian package, fake camera): connect, stream, ask, see answers."""

from __future__ import annotations

import asyncio
import json

import pytest

from tests.waiting import wait_until

pytestmark = [pytest.mark.webrtc, pytest.mark.browser, pytest.mark.timeout(120)]


async def test_webrtc_browser_page_streams_and_answers_over_data_channel(webrtc_server, chromium, artifacts_dir):
    questions: list[tuple[str, str, dict]] = []

    async def on_message(source: str, peer_id: str, text: str) -> None:
        """A stand-in for the agent: answers from the newest frame's size, streamed in three parts."""
        msg = json.loads(text)
        questions.append((source, peer_id, msg))
        newest = webrtc_server.get_buffer(source).latest()
        words = ["I see ", f"a {newest.width}x{newest.height} ", "test pattern."]
        for seq, delta in enumerate(words):
            await webrtc_server.send_data(peer_id, json.dumps({"id": msg["id"], "seq": seq, "delta": delta}))
            await asyncio.sleep(0.05)
        await webrtc_server.send_data(peer_id, json.dumps({
            "id": msg["id"], "question": msg["question"], "text": "".join(words), "source": source,
            "frames": [{"pts": newest.pts, "age_s": round(newest.age_s, 3)}], "model": "stand-in",
            "provider": "test", "latency_s": 0.2, "error": None,
        }))

    webrtc_server.on_data_message = on_message
    context = await chromium.new_context(viewport={"width": 1280, "height": 800})
    page = await context.new_page()
    console: list[str] = []
    page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
    try:
        await page.goto(f"{webrtc_server.url}/?source=chrome&res=1280x720&fps=30&autostart=1")
        buf = webrtc_server.get_buffer  # the buffer appears when the page's video track arrives
        await wait_until(lambda: "chrome" in webrtc_server.source_names(), 20, interval=0.1,
                         what=lambda: f"a track from the page (console: {console})")
        first = await buf("chrome").wait_for_frame(20)
        await page.wait_for_function("window.agentPage.state === 'connected'", timeout=20000)
        await page.wait_for_function("window.agentPage.dc && window.agentPage.dc.readyState === 'open'", timeout=20000)
        # let it run: frames keep coming, resolution climbs to 720p with the bitrate hint
        await buf("chrome").wait_for_frame(20, newer_than=first.seq + 30)
        newest = buf("chrome").latest()
        stats = buf("chrome").stats()
        print(f"\nbrowser stream: first {first.width}x{first.height}, now {stats.width}x{stats.height} @ {stats.fps} fps")
        assert newest.seq > first.seq + 30 and stats.fps > 0
        assert (await buf("chrome").wait_for_frame(5, newer_than=newest.seq)).seq > newest.seq  # still live

        await page.fill("#question", "What do you see?")
        await page.click("#ask-button")
        await page.wait_for_selector(".answer.done", timeout=15000)
        answers = await page.evaluate(
            "Object.values(window.agentPage.answers).map(a => ({q: a.question, text: a.text, done: a.done}))")
        assert len(questions) == 1
        source, peer_id, msg = questions[0]
        assert source == "chrome" and peer_id == webrtc_server.peers()[0].id and msg["question"] == "What do you see?"
        assert answers == [{"q": "What do you see?", "text": f"I see a {newest.width}x{newest.height} test pattern.",
                            "done": True}] or answers[0]["text"].startswith("I see a ")
        shown = await page.inner_text(".answer.done .text")
        assert shown.startswith("I see a ") and shown.endswith("test pattern.")
        # the page's own video is playing
        playing = await page.evaluate("(() => { const v = document.getElementById('self'); return v.videoWidth > 0 && !v.paused; })()")
        assert playing
        shot = artifacts_dir / "webrtc_browser_page.png"
        await page.screenshot(path=str(shot))
        assert shot.stat().st_size > 10_000

        await page.click("#stop")  # the page goes away politely: the server drops the peer
        await wait_until(lambda: not webrtc_server.peers(), 15, interval=0.1, what="the peer gone after the page stopped")
        assert buf("chrome").state.value == "ended"
    finally:
        await context.close()


async def test_webrtc_browser_page_reconnect_keeps_source_and_closing_tab_cleans_up(webrtc_server_factory, chromium):
    from webrtc import WebRTCConfig

    webrtc_server = await webrtc_server_factory(
        WebRTCConfig(port=0, host_candidate_addresses=["127.0.0.1"], peer_idle_timeout_s=3.0))
    context = await chromium.new_context()
    page = await context.new_page()
    try:
        await page.goto(f"{webrtc_server.url}/?source=tab&res=640x480&fps=30&autostart=1")
        await page.wait_for_function("window.agentPage.state === 'connected'", timeout=20000)
        first_peer = await page.evaluate("window.agentPage.peerId")
        await webrtc_server.get_buffer("tab").wait_for_frame(15)
        await page.click("#connect")  # Reconnect
        await page.wait_for_function(f"window.agentPage.peerId && window.agentPage.peerId !== '{first_peer}' "
                                     "&& window.agentPage.state === 'connected'", timeout=20000)
        seq = webrtc_server.get_buffer("tab").latest()
        await webrtc_server.get_buffer("tab").wait_for_frame(15, newer_than=seq.seq if seq else 0)
        async def only_the_new_peer() -> bool:
            return [p.id for p in webrtc_server.peers()] == [await page.evaluate("window.agentPage.peerId")]

        await wait_until(only_the_new_peer, 15, interval=0.1,
                         what=lambda: f"only the page's new peer listed (peers: {webrtc_server.peers()})")
    finally:
        await context.close()  # the tab goes away without pressing Stop
    # pagehide closes the peer, or 3 s without video do
    await wait_until(lambda: not webrtc_server.peers(), 8, interval=0.2,
                     what=lambda: f"no peers after the tab closed (peers: {webrtc_server.peers()})")


async def test_webrtc_browser_page_refuses_a_question_over_the_message_limit(webrtc_server, chromium):
    """The server drops data-channel messages over max_message_bytes; the page says so instead of waiting forever."""
    got: list[str] = []
    webrtc_server.on_data_message = lambda source, peer_id, text: got.append(text)
    context = await chromium.new_context()
    page = await context.new_page()
    try:
        await page.goto(f"{webrtc_server.url}/?source=long&res=640x480&fps=30&autostart=1")
        await page.wait_for_function("window.agentPage.dc && window.agentPage.dc.readyState === 'open'", timeout=20000)
        too_long = "why " * (webrtc_server.config.max_message_bytes // 4)
        await page.fill("#question", too_long)
        await page.click("#ask-button")
        await page.wait_for_function("document.getElementById('log').innerText.includes('too long')", timeout=5000)
        assert await page.evaluate("Object.keys(window.agentPage.answers).length") == 0
        assert await page.input_value("#question") == too_long  # kept, to be shortened
        await page.fill("#question", "short?")
        await page.click("#ask-button")
        await wait_until(lambda: got, 10, what="the short question arrived")
        assert [json.loads(t)["question"] for t in got] == ["short?"]
    finally:
        await context.close()


async def test_webrtc_browser_page_takes_a_resolution_and_rate_missing_from_its_lists(webrtc_server, chromium):
    """?res=800x600&fps=25 are not among the page's choices: they are added, not turned into a 0x0, 0-fps camera."""
    context = await chromium.new_context()
    page = await context.new_page()
    try:
        await page.goto(f"{webrtc_server.url}/?source=odd&res=800x600&fps=25&autostart=1")
        await page.wait_for_function("window.agentPage.state === 'connected'", timeout=20000)
        settings = await page.evaluate("(() => { const s = window.agentPage.stream.getVideoTracks()[0].getSettings();"
                                       " return [s.width, s.height, s.frameRate]; })()")
        assert settings == [800, 600, 25]
        assert await page.input_value("#resolution") == "800x600" and await page.input_value("#fps") == "25"
        first = await webrtc_server.get_buffer("odd").wait_for_frame(15)
        await webrtc_server.get_buffer("odd").wait_for_frame(10, newer_than=first.seq + 10)
    finally:
        await context.close()


RECORD_MEDIA = """
window.__streams = []; window.__pcs = [];
const gum = navigator.mediaDevices.getUserMedia.bind(navigator.mediaDevices);
navigator.mediaDevices.getUserMedia = async (c) => { const s = await gum(c); window.__streams.push(s); return s; };
const PC = window.RTCPeerConnection;
window.RTCPeerConnection = function (...a) { const pc = new PC(...a); window.__pcs.push(pc); return pc; };
window.RTCPeerConnection.prototype = PC.prototype;
"""


async def test_webrtc_browser_page_connect_twice_at_once_keeps_one_camera_and_connection(webrtc_server, chromium):
    """Connect pressed again while the first connect is still opening the camera: the older attempt gives up
    and releases what it opened (no camera left on, no peer connection left half-open), without an error."""
    context = await chromium.new_context()
    await context.add_init_script(RECORD_MEDIA)
    page = await context.new_page()
    try:
        await page.goto(f"{webrtc_server.url}/?source=twice&res=640x480&fps=30")
        await page.evaluate("Promise.all([connect(), connect()])")
        await page.wait_for_function("window.agentPage.state === 'connected'", timeout=20000)
        await webrtc_server.get_buffer("twice").wait_for_frame(15)
        live = await page.evaluate(
            "window.__streams.flatMap(s => s.getTracks()).filter(t => t.readyState === 'live').length")
        open_pcs = await page.evaluate("window.__pcs.filter(pc => pc.signalingState !== 'closed').length")
        errors = await page.evaluate("window.agentPage.errors")
        assert (live, open_pcs, errors) == (1, 1, [])
    finally:
        await context.close()


async def test_webrtc_browser_page_refused_offer_releases_the_camera(webrtc_server_factory, chromium):
    """A refused offer (here: the peer limit) shows the error and turns the camera off; Connect tries again."""
    from tests.fixtures.webrtc import CounterVideoTrack, publish
    from webrtc import WebRTCConfig

    server = await webrtc_server_factory(WebRTCConfig(port=0, max_peers=1, host_candidate_addresses=["127.0.0.1"]))
    context = await chromium.new_context()
    await context.add_init_script(RECORD_MEDIA)
    page = await context.new_page()
    try:
        async with publish(server.url, CounterVideoTrack(160, 120), source="first"):
            await page.goto(f"{server.url}/?source=second&res=640x480&fps=30&autostart=1")
            await page.wait_for_function("window.agentPage.state === 'error'", timeout=20000)
            errors = await page.evaluate("window.agentPage.errors")
            assert len(errors) == 1 and "503" in errors[0] and "peer limit" in errors[0]
            live = await page.evaluate(
                "window.__streams.flatMap(s => s.getTracks()).filter(t => t.readyState === 'live').length")
            open_pcs = await page.evaluate("window.__pcs.filter(pc => pc.signalingState !== 'closed').length")
            assert (live, open_pcs) == (0, 0)
            assert await page.inner_text("#pc-state") == "error"
    finally:
        await context.close()


async def test_webrtc_browser_firefox_page_streams_and_answers(webrtc_server, firefox, artifacts_dir):
    """The same page in headless Firefox ESR (driven over WebDriver BiDi): camera, connect, ask, answer."""
    async def on_message(source: str, peer_id: str, text: str) -> None:
        msg = json.loads(text)
        newest = webrtc_server.get_buffer(source).latest()
        await webrtc_server.send_data(peer_id, json.dumps({"id": msg["id"], "seq": 0, "delta": "Firefox sends "}))
        await webrtc_server.send_data(peer_id, json.dumps({
            "id": msg["id"], "question": msg["question"], "text": f"Firefox sends {newest.width}x{newest.height}.",
            "frames": [{"pts": newest.pts, "age_s": round(newest.age_s, 3)}], "error": None}))

    webrtc_server.on_data_message = on_message
    browser = await firefox()
    await browser.goto(f"{webrtc_server.url}/?source=fox&res=640x480&fps=30&autostart=1")
    try:
        await browser.wait_for("window.agentPage.state === 'connected'", 20)
    except TimeoutError:
        raise AssertionError(await browser.evaluate(
            "({state: window.agentPage.state, errors: window.agentPage.errors, log: document.getElementById('log').innerText})"))
    buf = webrtc_server.get_buffer("fox")
    first = await buf.wait_for_frame(15)
    await buf.wait_for_frame(20, newer_than=first.seq + 20)
    stats = buf.stats()
    print(f"\nfirefox {browser.version}: {stats.width}x{stats.height} @ {stats.fps} fps, {stats.received} frames")
    assert buf.latest().seq > first.seq + 20 and stats.fps > 0
    await browser.wait_for("window.agentPage.dc && window.agentPage.dc.readyState === 'open'", 10)
    await browser.evaluate("(() => { document.getElementById('question').value = 'Which browser?';"
                           " document.getElementById('ask-button').click(); return true; })()")
    text = await browser.wait_for(
        "(document.querySelector('.answer.done .text') || {}).textContent", 10)
    assert text == f"Firefox sends {stats.width}x{stats.height}."
    assert await browser.evaluate("document.querySelector('.answer.done .q').textContent") == "Which browser?"
    await browser.screenshot(artifacts_dir / "webrtc_browser_page_firefox.png")
    await browser.evaluate("(() => { document.getElementById('stop').click(); return true; })()")
    await wait_until(lambda: not webrtc_server.peers(), 10, interval=0.1, what="the peer gone after Firefox stopped")


async def test_webrtc_browser_page_sends_one_conversation_id_per_tab_across_a_reconnect(webrtc_server, chromium):
    """The page keeps its conversation id in sessionStorage: the same after a reconnect, another in another tab."""
    got: list[tuple[str, dict]] = []
    webrtc_server.on_data_message = lambda source, peer_id, text: got.append((peer_id, json.loads(text)))

    async def ask(page, text: str) -> dict:
        n = len(got)
        await page.wait_for_function("window.agentPage.dc && window.agentPage.dc.readyState === 'open'", timeout=20000)
        await page.fill("#question", text)
        await page.click("#ask-button")
        await wait_until(lambda: len(got) > n, 10, what=f"{text!r} arrived")
        return got[-1][1]

    context = await chromium.new_context()
    try:
        page = await context.new_page()
        await page.goto(f"{webrtc_server.url}/?source=conv&res=640x480&fps=30&autostart=1")
        await page.wait_for_function("window.agentPage.state === 'connected'", timeout=20000)
        first_peer = await page.evaluate("window.agentPage.peerId")
        before = await ask(page, "first?")
        await page.click("#connect")  # Reconnect: a new peer connection
        await page.wait_for_function(f"window.agentPage.peerId && window.agentPage.peerId !== '{first_peer}' "
                                     "&& window.agentPage.state === 'connected'", timeout=20000)
        after = await ask(page, "second?")
        other = await context.new_page()  # another tab: its own sessionStorage
        await other.goto(f"{webrtc_server.url}/?source=conv2&res=640x480&fps=30&autostart=1")
        elsewhere = await ask(other, "third?")
    finally:
        await context.close()
    assert before["conversation"].startswith("tab-") and len(before["conversation"]) <= 128
    assert after["conversation"] == before["conversation"] and got[0][0] != got[1][0]
    assert elsewhere["conversation"] != before["conversation"]


async def test_webrtc_browser_page_lists_its_sources_rules_with_live_state(webrtc_server, chromium):
    """Rule states sent on the data channel (`{"type": "rule", ...}`, as the daemon's rule engine does) show as one
    line per rule, updated in place, and are not taken for answers."""
    context = await chromium.new_context()
    page = await context.new_page()
    try:
        await page.goto(f"{webrtc_server.url}/?source=door&res=640x480&fps=30&autostart=1")
        await page.wait_for_function("window.agentPage.dc && window.agentPage.dc.readyState === 'open'", timeout=20000)
        state = {"type": "rule", "rule": "person_at_door", "source": "door", "state": "off", "reason": "", "degraded": False}
        assert await webrtc_server.broadcast("door", json.dumps(state)) == 1
        await page.wait_for_function("document.getElementById('rule-person_at_door')?.innerText.includes('off')", timeout=5000)
        state.update(state="on", reason="someone is there")
        await webrtc_server.broadcast("door", json.dumps(state))
        await page.wait_for_function("document.getElementById('rule-person_at_door')?.innerText.includes('on — someone')",
                                     timeout=5000)
        assert await page.evaluate("document.querySelectorAll('#rules li').length") == 1
        assert await page.evaluate("Object.keys(window.agentPage.answers).length") == 0
    finally:
        await context.close()
