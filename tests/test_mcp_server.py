"""The MCP server through the SDK's own streamable HTTP client, against a real daemon: a looping file source, real
mosquitto and the STAND-IN model (tests/fixtures/llm_stub.py). Each tool returns the MQTT interface's JSON; the
page's token guards the endpoint; bad arguments come back as tool errors that say what is wrong."""

from __future__ import annotations

import asyncio
import base64
import json

import cv2
import numpy as np
import pytest
from mcp.shared.exceptions import MCPError

from tests.mcp_client import TOKEN, endpoint, mcp_daemon, mcp_session, payload_of
from tests.waiting import wait_until

pytestmark = [pytest.mark.mqtt, pytest.mark.webrtc, pytest.mark.timeout(90)]

TOOLS = {"list_sources", "ask", "search_events", "get_rules", "set_rules"}
RULE = {"name": "bright_room", "source": "cam", "question": "Is the room bright?", "check_every_s": 60}


async def test_mcp_lists_tools_and_answers_questions_like_mqtt(tmp_path, running_mosquitto, paho_peer, topic_prefix,
                                                               stub_llm):
    stub_llm.reply = "a bright grey room"
    listener = paho_peer("5")
    listener.subscribe(f"{topic_prefix}/answer")
    async with mcp_daemon(tmp_path, running_mosquitto, stub_llm, topic_prefix) as daemon, mcp_session(daemon) as session:
        tools = await session.list_tools()
        assert {t.name for t in tools.tools} == TOOLS
        ask_schema = next(t for t in tools.tools if t.name == "ask").input_schema
        assert ask_schema["required"] == ["question"]

        sources = payload_of(await session.call_tool("list_sources", {}))
        assert [s["source"] for s in sources["sources"]] == ["cam"] and sources["sources"][0]["state"] == "live"

        result = await session.call_tool("ask", {"question": "What do you see?", "source": "cam"})
        assert not result.is_error
        answer = payload_of(result)
        assert answer["text"] == "a bright grey room" and answer["source"] == "cam" and answer["error"] is None
        assert result.structured_content == answer
        images = [c for c in result.content if c.type == "image"]
        assert len(images) == 1 and images[0].mime_type == "image/jpeg"
        frame = cv2.imdecode(np.frombuffer(base64.b64decode(images[0].data), np.uint8), cv2.IMREAD_GRAYSCALE)
        assert frame.shape == (120, 160) and frame[40:].mean() > 128  # the bright frame of the clip the model saw
        copied = json.loads((await asyncio.to_thread(listener.get, 10, f"{topic_prefix}/answer")).payload)
        assert copied == answer  # the same JSON MQTT listeners get
        assert len(stub_llm.requests) == 1
        metrics = daemon.metrics.exposition()[0].decode()
        assert 'visual_agent_questions_total{via="mcp"} 1.0' in metrics


async def test_mcp_rules_share_the_mqtt_rule_set(tmp_path, running_mosquitto, paho_peer, topic_prefix, stub_llm):
    watcher = paho_peer("5")
    watcher.subscribe(f"{topic_prefix}/rules/error")
    async with mcp_daemon(tmp_path, running_mosquitto, stub_llm, topic_prefix) as daemon, mcp_session(daemon) as session:
        assert payload_of(await session.call_tool("get_rules", {})) == {"rules": [], "set": []}
        result = await session.call_tool("set_rules", {"rules": [RULE]})
        assert not result.is_error
        taken = payload_of(result)
        assert [r["rule"] for r in taken["rules"]] == ["bright_room"] and taken["rules"][0]["origin"] == "mqtt"
        assert taken["set"][0]["question"] == RULE["question"] and taken["set"][0]["check_every_s"] == 60
        # the set is the retained `<prefix>/rules/set`: what a restart (or an MQTT client) reads back
        late = paho_peer("5")
        late.subscribe(f"{topic_prefix}/rules/set")
        retained = await asyncio.to_thread(late.get, 10, f"{topic_prefix}/rules/set")
        assert retained.retain and json.loads(retained.payload) == [RULE]
        # a refused set: the `rules/error` JSON as a tool error, published there too, and nothing changes
        refused = await session.call_tool("set_rules", {"rules": [{**RULE, "name": "Bad Name"}]})
        assert refused.is_error
        error = payload_of(refused)
        assert "rule 0 ('Bad Name'): name" in error["error"]
        published = json.loads((await asyncio.to_thread(watcher.get, 10, f"{topic_prefix}/rules/error")).payload)
        assert published == error
        assert [r["rule"] for r in payload_of(await session.call_tool("get_rules", {}))["rules"]] == ["bright_room"]
    # a restart: the retained set comes back, as any set on `<prefix>/rules/set` does
    async with mcp_daemon(tmp_path, running_mosquitto, stub_llm, topic_prefix) as daemon, mcp_session(daemon) as session:
        assert daemon.rules is not None
        await wait_until(lambda: len(daemon.rules.rules()) == 1, 10, "the retained rule set after the restart")
        again = payload_of(await session.call_tool("get_rules", {}))
        assert [r["rule"] for r in again["rules"]] == ["bright_room"] and again["set"] == taken["set"]
        # an empty set removes the MQTT rules, and the retained set with them
        assert payload_of(await session.call_tool("set_rules", {"rules": []})) == {"rules": [], "set": []}
        late = paho_peer("5")
        late.subscribe(f"{topic_prefix}/rules/set")
        with pytest.raises(TimeoutError):
            await asyncio.to_thread(late.get, 1, f"{topic_prefix}/rules/set")


async def test_mcp_search_events_returns_what_the_mqtt_query_returns(tmp_path, running_mosquitto, paho_peer,
                                                                      topic_prefix, stub_llm):
    from visual_agent.memory import Event, EventKind

    asker = paho_peer("5")
    asker.subscribe(f"{topic_prefix}/events/result")
    async with mcp_daemon(tmp_path, running_mosquitto, stub_llm, topic_prefix) as daemon, mcp_session(daemon) as session:
        store = daemon.memory.store
        red = np.zeros((120, 160, 3), np.uint8)
        red[..., 0] = 255
        first = await store.write(Event(source="cam", kind=EventKind.ANSWER, text="a red parcel at the door",
                                        question="what is there?", at=1_700_000_000.0, image=red))
        await store.write(Event(source="cam", kind=EventKind.DESCRIPTION, text="an empty porch", at=1_700_000_060.0))
        result = await session.call_tool("search_events", {"query": "parcel", "source": "cam"})
        assert not result.is_error
        found = payload_of(result)
        assert [e["id"] for e in found["events"]] == [first] and found["events"][0]["at"] == 1_700_000_000.0
        images = [c for c in result.content if c.type == "image"]
        assert len(images) == 1 and images[0].mime_type == "image/jpeg"
        thumb = cv2.imdecode(np.frombuffer(base64.b64decode(images[0].data), np.uint8), cv2.IMREAD_COLOR)
        assert thumb[..., 2].mean() > 200 and thumb[..., 0].mean() < 50  # the red frame (BGR)
        asker.publish(f"{topic_prefix}/events/query", json.dumps({"q": "parcel", "source": "cam"}), qos=1)
        over_mqtt = json.loads((await asyncio.to_thread(asker.get, 10, f"{topic_prefix}/events/result")).payload)
        assert over_mqtt == found == result.structured_content  # the same JSON
        import httpx2

        async with httpx2.AsyncClient(timeout=10, headers={"Authorization": f"Bearer {TOKEN}"}) as http:
            over_http = (await http.get(f"{daemon.driver.url}/events", params={"q": "parcel", "source": "cam"})).json()
        assert over_http["events"] == found["events"]  # and GET /events lists the same events
        window = payload_of(await session.call_tool("search_events", {"since": 1_700_000_030.0, "until": 1_700_000_100.0}))
        assert [e["text"] for e in window["events"]] == ["an empty porch"]
        bad = await session.call_tool("search_events", {"kind": "gossip"})
        assert bad.is_error and payload_of(bad)["error"]["type"] == "bad_payload" and "kind" in payload_of(bad)["error"]["message"]


async def test_mcp_bad_arguments_are_tool_errors(tmp_path, running_mosquitto, topic_prefix, stub_llm):
    async with mcp_daemon(tmp_path, running_mosquitto, stub_llm, topic_prefix) as daemon, mcp_session(daemon) as session:
        wrong_type = await session.call_tool("ask", {"question": "hi", "frames": "many"})
        assert wrong_type.is_error and "frames" in wrong_type.content[0].text
        missing = await session.call_tool("ask", {})
        assert missing.is_error and "question" in missing.content[0].text
        too_many = await session.call_tool("ask", {"question": "hi", "frames": 1000})
        assert too_many.is_error and payload_of(too_many)["error"]["type"] == "bad_payload"
        unknown = await session.call_tool("ask", {"question": "hi", "source": "garage"})
        assert unknown.is_error
        assert payload_of(unknown)["error"] == {"type": "unknown_source", "message": "no source 'garage'; known sources: cam"}
        not_a_list = await session.call_tool("set_rules", {"rules": "everything"})
        assert not_a_list.is_error and "rules" in not_a_list.content[0].text
        assert stub_llm.requests == []  # none of them reached the model


async def test_mcp_refuses_a_missing_or_wrong_token(tmp_path, running_mosquitto, topic_prefix, stub_llm):
    import httpx2

    init = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
            "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}
    headers = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
    async with mcp_daemon(tmp_path, running_mosquitto, stub_llm, topic_prefix) as daemon:
        async with httpx2.AsyncClient(timeout=10) as http:
            url = endpoint(daemon)
            for auth in ({}, {"Authorization": "Bearer wrong-token"}, {"Authorization": TOKEN}):
                response = await http.post(url, json=init, headers={**headers, **auth})
                assert response.status_code == 401, auth
                assert response.headers["WWW-Authenticate"].startswith("Bearer")
            good = await http.post(url, json=init, headers={**headers, "Authorization": f"Bearer {TOKEN}"})
            assert good.status_code == 200 and good.json()["result"]["serverInfo"]["name"] == "visual-agent"
        with pytest.raises(BaseExceptionGroup) as refused:  # the SDK client's task groups wrap its error
            async with mcp_session(daemon, token="wrong-token"):
                raise AssertionError("the SDK client got a session with a wrong token")
        assert refused.group_contains(MCPError, match="error response", depth=2)
        assert stub_llm.requests == []


async def test_mcp_bounds_calls_and_bodies(tmp_path, running_mosquitto, topic_prefix, stub_llm):
    import httpx2

    stub_llm.delay_s = 2.0
    async with mcp_daemon(tmp_path, running_mosquitto, stub_llm, topic_prefix,
                          mcp={"enabled": True, "max_in_flight": 1, "max_body_bytes": 2048}) as daemon, \
            mcp_session(daemon) as session:
        slow = asyncio.ensure_future(session.call_tool("ask", {"question": "What do you see?"}))
        await wait_until(lambda: len(stub_llm.requests) == 1, 20, "the question at the model")
        busy = await session.call_tool("list_sources", {})
        assert busy.is_error and "busy" in busy.content[0].text and "mcp.max_in_flight" in busy.content[0].text
        assert not (await slow).is_error  # the call in flight is not disturbed
        assert daemon.mcp.stats() == {"in_flight": 0, "refused_busy": 1}
        auth = {"Authorization": f"Bearer {TOKEN}", "Accept": "application/json, text/event-stream"}
        async with httpx2.AsyncClient(timeout=10) as http:
            big = await http.post(endpoint(daemon), content=b"{" + b" " * 4096 + b"}",
                                  headers={**auth, "Content-Type": "application/json"})
            assert big.status_code == 413
            stream = await http.get(endpoint(daemon), headers=auth)
            assert stream.status_code == 405  # stateless: no server-to-client stream is held open
