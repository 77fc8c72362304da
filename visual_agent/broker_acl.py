"""`TopicRights`: who may publish, subscribe to and receive which topics on the embedded broker.

Three kinds of client: the daemon's own (a random per-start credential, `DAEMON_USERNAME`), the operator (a client
logged in as the configured `mqtt.username`; there is none without a broker password), and anyone else the broker
lets in (on loopback without a password: every local user).

| topic | publish | subscribe / receive |
| --- | --- | --- |
| `<prefix>/ask`, `<prefix>/<source>/ask` (questions) | anyone | the daemon only: questions are write-only |
| `<prefix>/events/query` (a question about the event store) | anyone | anyone |
| `<prefix>/rules/set` (the rule set) | the daemon and the operator | anyone |
| `<discovery_prefix>/.../config` (Home Assistant discovery) | the daemon and the operator | anyone |
| anything else under `<prefix>/` (answers, status, states) | the daemon only | anyone |
| other topics | anyone | anyone |

A wildcard subscription (`#`, `<prefix>/#`) is granted but never receives a question; a subscription that can only
match questions (`<prefix>/ask`, `<prefix>/+/ask`) is refused in its SUBACK. Questions are never retained (a later
subscriber would read them).
"""

from __future__ import annotations

from .broker_limits import RateLimitedLog

__all__ = ["DAEMON_USERNAME", "TopicRights"]

DAEMON_USERNAME = "visual-agent-daemon"
"""The user name of the daemon's own client at its embedded broker (its password is random per start)."""


class TopicRights:
    """The table above for one prefix; refusals are counted in `counters` and logged (rate-limited)."""

    def __init__(self, prefix: str | None, *, discovery_prefix: str | None, operator: str | None,
                 counters: dict[str, int], log: RateLimitedLog) -> None:
        self.prefix = prefix
        self.discovery_prefix = discovery_prefix
        self.operator = operator
        """The configured broker user (None without a password): may set rules and discovery configs."""
        self._counters = counters
        self._log = log

    def is_question(self, topic: str) -> bool:
        """`<prefix>/ask` or `<prefix>/<source>/ask`."""
        if self.prefix is None or not topic.startswith(self.prefix + "/"):
            return False
        parts = topic[len(self.prefix) + 1:].split("/")
        return parts == ["ask"] or (len(parts) == 2 and parts[1] == "ask" and parts[0] not in ("", "rules"))

    def is_request(self, topic: str) -> bool:
        """A request others send the daemon besides questions: `<prefix>/events/query`."""
        return self.prefix is not None and topic == f"{self.prefix}/events/query"

    def is_operator_topic(self, topic: str) -> bool:
        """The rule set, or a Home Assistant discovery config: what reconfigures the daemon or Home Assistant."""
        if self.prefix is not None and topic == f"{self.prefix}/rules/set":
            return True
        return bool(self.discovery_prefix) and topic.startswith(f"{self.discovery_prefix}/") and topic.endswith("/config")

    def may_publish(self, username: str | None, topic: str) -> bool:
        if username == DAEMON_USERNAME or self.is_question(topic) or self.is_request(topic):
            return True
        if self.is_operator_topic(topic):
            if self.operator is not None and username == self.operator:
                return True
            why = "only the daemon" + (" and the operator" if self.operator else " (no broker password is set)")
        elif self.prefix is not None and topic.startswith(self.prefix + "/"):
            why = "only the daemon"
        else:
            return True
        self._counters["publish_denied"] += 1
        self._log.warning("publish", "embedded broker: a client (user %r) may not publish to %s (%s may); dropped",
                          username, topic[:200], why)
        return False

    def may_subscribe(self, username: str | None, topic_filter: str) -> bool:
        """A filter that names the questions themselves (not a wider wildcard) is refused to all but the daemon."""
        if username == DAEMON_USERNAME or self.prefix is None or topic_filter.split("/")[-1] != "ask":
            return True
        if not any(_matches(topic, topic_filter) for topic in (f"{self.prefix}/ask", f"{self.prefix}/source/ask")):
            return True
        self._counters["subscribe_denied"] += 1
        self._log.warning("subscribe", "embedded broker: a client (user %r) may not subscribe to %s (questions are "
                          "write-only); refused", username, topic_filter[:200])
        return False

    def may_receive(self, username: str | None, topic: str) -> bool:
        """Questions go to the daemon only, whatever wildcard another client subscribed with."""
        return username == DAEMON_USERNAME or not self.is_question(topic)


def _matches(topic: str, topic_filter: str) -> bool:
    """MQTT topic matching (`+` one level, `#` the rest)."""
    levels, parts = topic_filter.split("/"), topic.split("/")
    for i, level in enumerate(levels):
        if level == "#":
            return True
        if i >= len(parts) or level not in ("+", parts[i]):
            return False
    return len(levels) == len(parts)
