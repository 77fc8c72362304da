"""`cancel_and_wait` ends a task even when a cancel is lost on the way, as Python 3.11's `asyncio.wait_for` loses one
that lands as the future it waits on completes: the race that once held a daemon's stop forever (an MQTT connection
task whose CONNACK wait finished as the stop cancelled it, then waited for the connection to drop)."""

from __future__ import annotations

import asyncio
import sys
from typing import Any

from visual_agent.tasks import cancel_and_wait


async def _connect_then_serve(connack: asyncio.Future[int], serving: asyncio.Event) -> None:
    """The shape of `MqttMessager._run`: wait (with a timeout) for the connection, then until it is lost."""
    await asyncio.wait_for(connack, 10)
    serving.set()
    await asyncio.Event().wait()  # the connection's loss, which never comes


async def _racing_stop(stop) -> tuple[asyncio.Task[None], asyncio.Event, asyncio.Task[Any]]:
    """The connection task waiting in wait_for; its CONNACK arrives in the same turn of the loop as `stop(task)`."""
    loop = asyncio.get_running_loop()
    connack: asyncio.Future[int] = loop.create_future()
    serving = asyncio.Event()
    task = loop.create_task(_connect_then_serve(connack, serving))
    await asyncio.sleep(0)  # the task now waits in wait_for
    connack.set_result(0)
    return task, serving, loop.create_task(stop(task))


async def test_a_task_that_lived_through_its_cancel_is_cancelled_again():
    task, serving, closing = await _racing_stop(cancel_and_wait)
    done, _ = await asyncio.wait([closing], timeout=10)
    if not done:
        task.cancel()  # the one-cancel version would wait forever: end it so the test can report
        closing.cancel()
    assert closing in done and task.cancelled()
    if sys.version_info < (3, 12):
        assert serving.is_set()  # the first cancel was lost: the race this guards against did happen


async def test_the_race_is_real_a_single_cancel_is_lost():
    if sys.version_info >= (3, 12):
        return  # wait_for keeps every cancel since 3.12

    async def cancel_once(task: asyncio.Task[None]) -> None:
        task.cancel()

    task, serving, _ = await _racing_stop(cancel_once)
    await asyncio.wait_for(serving.wait(), 10)  # it went on past its cancel
    assert not task.done()
    await cancel_and_wait(task)


async def test_what_a_task_raises_while_it_ends_does_not_stop_the_others():
    async def fails_on_cancel() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            raise RuntimeError("closing went wrong")  # noqa: B012  (the point of the test)

    async def plain() -> None:
        await asyncio.Event().wait()

    loop = asyncio.get_running_loop()
    first, second = loop.create_task(fails_on_cancel()), loop.create_task(plain())
    await asyncio.sleep(0)
    await cancel_and_wait(first, None, second)
    assert first.done() and isinstance(first.exception(), RuntimeError) and second.cancelled()
