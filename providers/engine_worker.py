"""One thread that owns a vLLM `LLMEngine` and steps it, so the event loop never waits on the engine.

Requests from any coroutine go in through a queue; the thread adds them to the running batch between steps
(continuous batching: a request that arrives mid-generation joins the next step), and each step's outputs go back
to the request's own asyncio queue with `call_soon_threadsafe`. A `None` command stops the thread.
Only this thread touches the engine.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .errors import EngineError

__all__ = ["EngineWorker", "Finished"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Finished:
    """Sentinel put on a request's queue when the request ends without a final output (error or shutdown)."""

    error: BaseException


@dataclass
class _Add:
    request_id: str
    prompt: Any
    params: Any
    loop: asyncio.AbstractEventLoop
    sink: asyncio.Queue


@dataclass
class _Abort:
    request_id: str


class EngineWorker:
    """Owns the engine thread; `submit` returns a queue of the request's outputs (RequestOutput, or Finished)."""

    def __init__(self, build: Callable[[], Any], *, name: str, endpoint: str) -> None:
        self._build = build
        self._endpoint = endpoint
        self._commands: queue.SimpleQueue[_Add | _Abort | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._ready = threading.Event()
        self._start_error: BaseException | None = None
        self._stopped = False
        self._failure: BaseException | None = None
        self.engine: Any = None

    # -- called from the event loop -------------------------------------------------------------------

    async def start(self) -> Any:
        """Build the engine in the worker thread; returns it once it can take requests. Safe to await again
        (after a cancelled call, say): the thread is started once and later calls wait for the same build."""
        if self._thread.ident is None:  # never started
            self._thread.start()
        await asyncio.to_thread(self._ready.wait)
        if self._start_error is not None:
            raise EngineError(f"the vLLM engine failed to start: {self._start_error}", endpoint=self._endpoint) from (
                self._start_error
            )
        return self.engine

    def submit(self, request_id: str, prompt: Any, params: Any) -> asyncio.Queue:
        if self._stopped:
            reason = f" after a failure: {self._failure}" if self._failure is not None else ""
            raise EngineError(f"the engine is closed{reason}", endpoint=self._endpoint)
        sink: asyncio.Queue = asyncio.Queue()
        self._commands.put(_Add(request_id, prompt, params, asyncio.get_running_loop(), sink))
        if self._stopped:
            # The thread failed between the check above and the put, and may have drained the queue already:
            # answer what is left here (each command is taken once, by the thread or by us).
            self._answer_queued(self._failure or EngineError("the engine was closed", endpoint=self._endpoint))
        return sink

    def abort(self, request_id: str) -> None:
        if not self._stopped:
            self._commands.put(_Abort(request_id))

    async def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        self._commands.put(None)
        if self._thread.is_alive():
            await asyncio.to_thread(self._thread.join)

    # -- the worker thread ----------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self.engine = self._build()
        except BaseException as exc:  # reported to start(); the thread ends
            self._start_error = exc
            self._ready.set()
            return
        self._ready.set()
        sinks: dict[str, _Add] = {}
        try:
            while True:
                idle = not self.engine.has_unfinished_requests()
                commands = [self._commands.get()] if idle else []
                while True:
                    try:
                        commands.append(self._commands.get_nowait())
                    except queue.Empty:
                        break
                if None in commands:
                    break
                for command in commands:
                    assert command is not None  # the stop sentinel was handled above
                    if isinstance(command, _Abort):
                        if sinks.pop(command.request_id, None) is not None:
                            self.engine.abort_request([command.request_id])
                        continue
                    try:
                        self.engine.add_request(command.request_id, command.prompt, command.params)
                    except Exception as exc:  # bad input the engine refused: that caller only
                        self._deliver(command, Finished(exc))
                        continue
                    sinks[command.request_id] = command
                if not self.engine.has_unfinished_requests():
                    continue
                for output in self.engine.step():
                    target = sinks.get(output.request_id)
                    if target is None:
                        continue
                    self._deliver(target, output)
                    if output.finished:
                        del sinks[output.request_id]
        except BaseException as exc:
            log.exception("vLLM engine thread failed")
            failure: BaseException = exc
            self._failure = exc
        else:
            failure = EngineError("the engine was closed", endpoint=self._endpoint)
        self._stopped = True  # before the drain below: a submit() that put after it sees this and drains itself
        for target in sinks.values():
            self._deliver(target, Finished(failure))
        # Anything submitted after the last drain is answered too, so no caller waits forever.
        self._answer_queued(failure)
        self._shutdown_engine()

    def _answer_queued(self, failure: BaseException) -> None:
        """Take every queued command; each request among them gets `Finished(failure)`."""
        while True:
            try:
                command = self._commands.get_nowait()
            except queue.Empty:
                return
            if isinstance(command, _Add):
                self._deliver(command, Finished(failure))

    def _shutdown_engine(self) -> None:
        core = getattr(self.engine, "engine_core", None)
        try:
            if core is not None and hasattr(core, "shutdown"):
                core.shutdown()
        except Exception:  # best effort: the process may be exiting
            log.debug("engine shutdown raised", exc_info=True)

    @staticmethod
    def _deliver(target: _Add, item: Any) -> None:
        try:
            target.loop.call_soon_threadsafe(target.sink.put_nowait, item)
        except RuntimeError:  # the caller's loop is closed: nobody is waiting
            pass
