"""A stop that cannot hang: SIGTERM finishes in-flight work within the grace, a second signal stops at once, and a
stop stuck anyway (a close that never returns, a thread nobody joins) is ended by a watchdog that first writes every
thread's stack to the log, so the next hang says where it was.

The broker is real mosquitto; the LLM that holds a question is a STAND-IN (a local server speaking the OpenAI API).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import pytest

from tests.children import ROOT
from tests.fixtures.daemon import daemon_process, free_tcp_port
from tests.mqtt_daemon import looping_clip, mqtt_daemon_config, wait_status
from tests.waiting import wait_until

pytestmark = [pytest.mark.timeout(120)]


@pytest.mark.mqtt
async def test_a_second_sigterm_stops_at_once_without_waiting_for_the_grace(tmp_path, running_mosquitto, paho_peer,
                                                                             topic_prefix, held_llm):
    """The LLM holds a question and the grace is 60 s: the first SIGTERM waits for it, the second ends the process
    (exit 1) long before the grace is out, with the threads' stacks in the log."""
    peer = paho_peer("5")
    peer.subscribe(f"{topic_prefix}/status")
    page_port = free_tcp_port()
    cfg = mqtt_daemon_config(tmp_path, running_mosquitto, topic_prefix, page_port, held_llm.base_url,
                             sources=looping_clip(tmp_path), agent={"shutdown_grace_s": 60})
    async with daemon_process(cfg, page_port=page_port, log_path=tmp_path / "d.log") as daemon:
        await wait_status(peer, b"online")
        peer.publish(f"{topic_prefix}/ask", json.dumps({"id": "held", "question": "slow?", "source": "cam"}))
        await held_llm.wait_requests(1)
        daemon.proc.send_signal(signal.SIGTERM)
        await wait_until(lambda: "signal received" in daemon.log(), 15, what="the daemon took the first signal")
        assert daemon.proc.returncode is None  # it waits for the held question
        code = await daemon.terminate(timeout=30)  # the second SIGTERM
        log = daemon.log()
    assert code == 1, log
    assert "second signal: stopping now" in log and "(most recent call first)" in log, log


def test_a_stuck_stop_is_ended_by_the_watchdog_with_every_stack_written(tmp_path):
    """`run_daemon` on a daemon whose close blocks the loop: the watchdog (1 s here) exits 1 and the stack it wrote
    names the stuck call."""
    child = subprocess.Popen([sys.executable, "-m", "tests.children.stuck_stop", str(tmp_path / "store")], cwd=ROOT,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "ready", child.stderr
        child.send_signal(signal.SIGTERM)
        _, err = child.communicate(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == 1, err
    assert "Timeout (0:00:01)!" in err and "stuck_stop.py" in err and "in close" in err, err
