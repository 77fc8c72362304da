"""`BrokerCollector`: the embedded broker's refusals and load as Prometheus metrics, read when scraped.

- `visual_agent_embedded_broker_refusals_total{kind}`: each kind of refusal `EmbeddedBroker.describe()` counts
  (`publish_denied`, `pending_evicted`, `message_too_large`, `queue_dropped`, ...), every kind present from the start;
- `visual_agent_embedded_broker_connections{state}`: sockets `connected` and `pending` (no CONNECT yet);
- `visual_agent_embedded_broker_queued_bytes`: payload bytes waiting for sessions (offline or unsent).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

__all__ = ["BrokerCollector"]


class BrokerCollector(Collector):
    """Register it on a daemon's registry beside `AgentMetrics` when the daemon runs the embedded broker."""

    def __init__(self, broker: Any) -> None:
        self.broker = broker
        """An `EmbeddedBroker` (its `counters` and `describe()` are read on the event loop that scrapes)."""

    def describe(self) -> Iterator[Metric]:
        return iter(self._families())

    def collect(self) -> Iterator[Metric]:
        refusals, connections, queued = self._families()
        for kind, value in self.broker.counters.items():
            refusals.add_metric([kind], value)
        state = self.broker.describe()
        for name in ("connected", "pending"):
            connections.add_metric([name], state.get(name, 0))
        queued.add_metric([], state.get("queued_bytes", 0))
        yield from (refusals, connections, queued)

    @staticmethod
    def _families() -> tuple[Any, ...]:
        return (
            CounterMetricFamily("visual_agent_embedded_broker_refusals",
                                "What the embedded broker refused or dropped, by kind.", labels=["kind"]),
            GaugeMetricFamily("visual_agent_embedded_broker_connections",
                              "Sockets the embedded broker holds: connected clients and those with no CONNECT yet.",
                              labels=["state"]),
            GaugeMetricFamily("visual_agent_embedded_broker_queued_bytes",
                              "Payload bytes the embedded broker holds for sessions (offline queues, unsent messages)."),
        )
