"""The console's HTTP API against a real daemon (file source, mosquitto, the STAND-IN model): state at a glance,
snapshots shared by viewers, rules edited with `rules/set`'s parser and messages, evidence once a rule turns on."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest

from tests.console_daemon import TOKEN, console_daemon, get_json
from tests.waiting import wait_until
from visual_agent.rules import RuleSetError, parse_rule_set

pytestmark = [pytest.mark.mqtt, pytest.mark.timeout(90)]

LAMP = {"source": "door", "question": "Is the light on?", "check_every_s": 0.5, "on_after": 1, "off_after": 1,
        "cooldown_s": 0, "lookback_s": 1.0}


async def test_console_state_says_what_runs_and_needs_the_token(tmp_path, stub_llm, running_mosquitto, topic_prefix):
    async with console_daemon(tmp_path, stub_llm, mosquitto=running_mosquitto, prefix=topic_prefix) as daemon, \
            aiohttp.ClientSession() as http:
        url = daemon.driver.url
        status, _ = await get_json(http, f"{url}/api/state", token=None)
        assert status == 401
        status, _ = await get_json(http, f"{url}/api/state", token="wrong")
        assert status == 401
        await wait_until(lambda: daemon.llm_state.get("state") == "ok", 10, "the LLM probe")
        await daemon.driver.get_buffer("door").wait_for_frame(10)
        status, state = await get_json(http, f"{url}/api/state")
        assert status == 200
        assert state["token"] == {"required": True} and state["daemon"]["status"] == "ok"
        assert state["llm"]["state"] == "ok" and state["llm"]["reachable"] is True
        assert state["llm"]["model"] == stub_llm.model
        assert state["broker"]["state"] == "connected" and state["broker"]["outbox"] == 0
        assert state["storage"]["state"] == "ok" and state["storage"]["used_mb"] >= 0
        [door] = state["sources"]
        assert door["name"] == "door" and door["snapshot"] == "sources/door.jpg"
        assert door["publisher"]["kind"] == "file" and door["publisher"]["state"] == "running"
        assert door["newest_age_s"] is not None and door["width"] == 320
        assert state["rules"] == {"items": [], "editable": True, "source_of_truth": "mqtt"}


async def test_console_snapshot_is_encoded_once_per_frame_for_every_viewer(tmp_path, stub_llm):
    async with console_daemon(tmp_path, stub_llm, loop=False) as daemon, aiohttp.ClientSession() as http:
        url, headers = f"{daemon.driver.url}/sources/door.jpg", {"Authorization": f"Bearer {TOKEN}"}
        buffer = daemon.driver.get_buffer("door")
        await buffer.wait_for_frame(10)
        async with http.get(url) as r:
            assert r.status == 401
        await wait_until(lambda: buffer.stats().state == "ended", 20, "the clip's end")  # its last frame stays
        snapshots = daemon.console.snapshots
        before = snapshots.encodes

        async def fetch() -> tuple[int, bytes, str]:
            async with http.get(url, headers=headers) as r:
                return r.status, await r.read(), r.headers.get("ETag", "")

        got = await asyncio.gather(*(fetch() for _ in range(8)))  # eight viewers at once
        got.append(await fetch())  # and one later
        assert {s for s, _, _ in got} == {200} and all(b[:2] == b"\xff\xd8" for _, b, _ in got)
        assert {e for _, _, e in got} == {f'"{buffer.latest().seq}"'} and len({b for _, b, _ in got}) == 1
        assert snapshots.encodes - before == 1  # one encode of that frame for every viewer
        async with http.get(url, headers={**headers, "If-None-Match": got[0][2]}) as r:
            assert r.status == 304 and await r.read() == b""
        async with http.get(f"{daemon.driver.url}/sources/nowhere.jpg", headers=headers) as r:
            assert r.status == 404 and "nowhere" in (await r.json())["error"]


async def test_console_rules_are_edited_like_rules_set_and_show_their_evidence(
        tmp_path, stub_llm, running_mosquitto, paho_peer, topic_prefix):
    watcher = paho_peer("5")
    watcher.subscribe(f"{topic_prefix}/rules/set")
    config_rule = {"name": "from_config", "source": "door", "question": "Is it dark?"}
    async with console_daemon(tmp_path, stub_llm, mosquitto=running_mosquitto, prefix=topic_prefix,
                              config_rules=[config_rule]) as daemon, aiohttp.ClientSession() as http:
        url = f"{daemon.driver.url}/api/rules"
        bad = {**LAMP, "check_every_s": 0.1}
        status, body = await get_json(http, f"{url}/lamp", method="PUT", body=bad)
        with pytest.raises(RuleSetError) as expected:
            parse_rule_set(json.dumps([{**bad, "name": "lamp"}]))
        assert status == 400 and body["error"] == str(expected.value)  # rules/set's own message
        status, body = await get_json(http, f"{url}/from_config", method="PUT", body=LAMP)
        assert status == 400 and "already used by config" in body["error"]
        status, body = await get_json(http, f"{url}/lamp", method="PUT", body=LAMP, token=None)
        assert status == 401
        assert [r.config.name for r in daemon.rules.rules()] == ["from_config"]  # nothing refused was applied

        status, body = await get_json(http, f"{url}/lamp", method="PUT", body=LAMP)
        assert status == 200 and [r["name"] for r in body["rules"]] == ["lamp"]
        retained = json.loads((await asyncio.to_thread(watcher.get, 10, f"{topic_prefix}/rules/set")).payload)
        assert [r["name"] for r in retained] == ["lamp"] and retained[0]["check_every_s"] == 0.5

        async def lamp_state() -> dict:
            _, state = await get_json(http, f"{daemon.driver.url}/api/state")
            return next(r for r in state["rules"]["items"] if r["rule"] == "lamp")

        deadline = asyncio.get_running_loop().time() + 30
        while (lamp := await lamp_state())["evidence"] is None:
            assert asyncio.get_running_loop().time() < deadline, f"the lamp never turned on: {lamp}"
            await asyncio.sleep(0.2)
        assert lamp["editable"] is True and lamp["config"]["question"] == LAMP["question"]
        headers = {"Authorization": f"Bearer {TOKEN}"}
        for key in ("evidence", "lookback"):
            async with http.get(f"{daemon.driver.url}/{lamp[key]}", headers=headers) as r:
                assert r.status == 200 and r.content_type == "image/jpeg" and (await r.read())[:2] == b"\xff\xd8"

        status, body = await get_json(http, f"{url}/from_config", method="DELETE")
        assert status == 409 and "config file" in body["error"]
        status, body = await get_json(http, f"{url}/lamp", method="DELETE")
        assert status == 200 and body["rules"] == []
        assert [r.config.name for r in daemon.rules.rules()] == ["from_config"]
        cleared = await asyncio.to_thread(watcher.get, 10, f"{topic_prefix}/rules/set")
        assert json.loads(cleared.payload) == []
        status, body = await get_json(http, f"{url}/lamp", method="DELETE")
        assert status == 404
