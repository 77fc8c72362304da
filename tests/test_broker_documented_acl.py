"""The mosquitto ACL that docs/SECURITY.md recommends, run as written against mosquitto and the real daemon: an asker
asks on both ask topics and gets its answers, the operator sets the rules and reads their states and errors. And a
broker that grants a subscription its ACL forbids (mosquitto 2 does, then drops the messages silently) is reported
by the daemon's subscription check in /healthz and the log."""

from __future__ import annotations

import asyncio
import json
import subprocess
import urllib.request
import uuid

import pytest

from tests.clips import write_video
from tests.fixtures.daemon import daemon_process, free_tcp_port, write_config
from tests.fixtures.mqtt import PahoPeer
from tests.test_va_mqtt_security import _documented_acl
from tests.waiting import wait_until

pytestmark = [pytest.mark.mqtt, pytest.mark.e2e, pytest.mark.timeout(180)]

USERS = {"visual-agent": "daemon-pw-1", "admin": "admin-pw-1", "alice": "alice-pw-1"}
RULE = {"name": "person", "source": "cam", "question": "Is a person there?", "check_every_s": 1}

WRONG_ACL = """# /etc/mosquitto/acl (the block docs/SECURITY.md showed before: no +/ask, no rules/set for the daemon)
user visual-agent
topic read visual_agent/ask
topic write visual_agent/#
topic write homeassistant/#

pattern read visual_agent/reply/%c
pattern write visual_agent/ask
"""


def _broker_with_acl(mosquitto_factory, files, acl: str):
    (files / "acl").write_text(acl)
    for i, (user, password) in enumerate(USERS.items()):
        subprocess.run(["mosquitto_passwd", "-b", *(["-c"] if i == 0 else []), str(files / "passwd"), user, password],
                       check=True, capture_output=True)
    for f in files.iterdir():
        f.chmod(0o644)
    return mosquitto_factory(listener_extra=f"password_file {files}/passwd\nacl_file {files}/acl\n", anonymous=False)


def _daemon_config(tmp_path, broker, prefix: str, llm_url: str):
    page_port = free_tcp_port()
    clip = write_video(tmp_path / "cam.mp4", 2.0)
    cfg = write_config(tmp_path / "d.yaml", {
        "llm": {"provider": "openai", "base_url": llm_url, "model_name": "stub-model", "max_retries": 0},
        "webrtc": {"port": page_port}, "agent": {"frame_wait_s": 5},
        "sources": [{"name": "cam", "kind": "file", "url": str(clip), "loop": True}],
        "mqtt": {"host": broker.host, "port": broker.port, "prefix": prefix, "username": "visual-agent",
                 "reconnect_min_s": 0.1, "reconnect_max_s": 0.5}})
    return cfg, page_port


def _health(page_url: str) -> dict:
    with urllib.request.urlopen(page_url + "/healthz", timeout=5) as r:
        return json.loads(r.read())


async def _subscriptions(daemon) -> dict:
    """The daemon's subscription check, once it has run (absent while the daemon is still starting)."""
    state: dict = {}

    def done() -> bool:
        state.update(_health(daemon.page_url).get("subscriptions") or {"state": "not started"})
        return state["state"] not in ("pending", "not started")

    await wait_until(lambda: done(), 30, "the subscription check ran")
    return state


async def test_documented_acl_serves_both_ask_topics_and_the_rules(tmp_path, mosquitto_factory, broker_files, stub_llm,
                                                                    topic_prefix):
    broker = _broker_with_acl(mosquitto_factory, broker_files, _documented_acl(topic_prefix))
    cfg, page_port = _daemon_config(tmp_path, broker, topic_prefix, stub_llm.base_url)
    env = {"VISUAL_AGENT__MQTT__PASSWORD": USERS["visual-agent"]}
    admin = PahoPeer(broker.host, broker.port, username="admin", password=USERS["admin"])
    alice = PahoPeer(broker.host, broker.port, username="alice", password=USERS["alice"],
                     client_id=f"alice-{uuid.uuid4().hex[:6]}")
    reply = f"{topic_prefix}/reply/{alice.client._client_id.decode()}"
    try:
        for topic in (f"{topic_prefix}/status", f"{topic_prefix}/rules/error", f"{topic_prefix}/+/rules/#"):
            admin.subscribe(topic)
        alice.subscribe(reply)
        async with daemon_process(cfg, page_port=page_port, log_path=tmp_path / "d.log", env=env) as daemon:
            await wait_until(lambda: (_health(daemon.page_url).get("broker") or {}).get("state") == "connected", 30,
                             "the daemon connected and subscribed")
            alice.publish(f"{topic_prefix}/ask", json.dumps({"id": "q-all", "question": "what?", "source": "cam"}),
                          response_topic=reply, correlation_data=b"1")
            alice.publish(f"{topic_prefix}/cam/ask", json.dumps({"id": "q-cam", "question": "what?"}),
                          response_topic=reply, correlation_data=b"2")
            answers = {}
            while len(answers) < 2:
                msg = await asyncio.to_thread(alice.get, 60, reply)
                answer = json.loads(msg.payload)
                answers[answer["id"]] = answer
            print(f"asker: answers {sorted(answers)} with errors {[a['error'] for a in answers.values()]}")
            assert all(a["error"] is None and a["source"] == "cam" for a in answers.values()), answers
            admin.publish(f"{topic_prefix}/rules/set", json.dumps([RULE]), retain=True).wait_for_publish(10)
            state = await asyncio.to_thread(admin.get, 60, f"{topic_prefix}/cam/rules/person")
            assert json.loads(state.payload)["state"] in ("on", "off")
            admin.publish(f"{topic_prefix}/rules/set", b"not json").wait_for_publish(10)
            error = await asyncio.to_thread(admin.get, 30, f"{topic_prefix}/rules/error")
            print(f"operator: rule state {json.loads(state.payload)['state']!r}, error answer {error.payload[:80]!r}")
            checked = await _subscriptions(daemon)
            assert checked["state"] == "ok" and checked["refused"] == [], checked
            admin.publish(f"{topic_prefix}/rules/set", b"", retain=True).wait_for_publish(10)
    finally:
        admin.close()
        alice.close()


async def test_subscription_check_reports_what_the_broker_silently_drops(tmp_path, mosquitto_factory, broker_files,
                                                                         stub_llm, topic_prefix):
    """With an ACL that lets the daemon read `<prefix>/ask` only, mosquitto grants its `<prefix>/<source>/ask`
    subscription and drops every question there: /healthz says `refused` with that topic, and the log says so."""
    broker = _broker_with_acl(mosquitto_factory, broker_files, WRONG_ACL.replace("visual_agent/", f"{topic_prefix}/"))
    cfg, page_port = _daemon_config(tmp_path, broker, topic_prefix, stub_llm.base_url)
    env = {"VISUAL_AGENT__MQTT__PASSWORD": USERS["visual-agent"]}
    async with daemon_process(cfg, page_port=page_port, log_path=tmp_path / "d.log", env=env) as daemon:
        checked = await _subscriptions(daemon)
        assert checked["state"] == "refused" and checked["refused"] == [f"{topic_prefix}/+/ask"], checked
        assert "delivers nothing there" in daemon.log()
