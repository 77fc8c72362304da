"""`QuestionSenders`: which client published each question the embedded broker routes to the daemon.

MQTT 3.1.1 (all amqtt speaks) carries no response topic, so without this every question on the embedded broker
is the one asker `mqtt`, and one local client flooding it starves the others. The broker runs in the daemon's
process and knows who published each message: it notes the publishing client id of a question under a digest of
(topic, payload) as it routes it, once for each copy the daemon's own subscriptions will receive; the MQTT intake
takes the note for the message it receives (`sender`), so its asker key becomes `client:<id>`.

Reordering and duplicates: the notes of one (topic, payload) are taken oldest first. Two clients sending the very
same bytes on the same topic may therefore swap notes when amqtt delivers their copies out of order; each is still
charged one question, and such copies are indistinguishable anyway. A copy the daemon drops before its intake (a
redelivery it already took) leaves its note behind: the notes are bounded (`max_kept`, the oldest go first) and
hold digests, never payloads, so no client can grow them.
"""

from __future__ import annotations

import collections
import hashlib

__all__ = ["DEFAULT_MAX_SENDERS_KEPT", "QuestionSenders", "asker_key"]

DEFAULT_MAX_SENDERS_KEPT = 4096
"""Notes kept at most: several times the daemon's inbox (`mqtt.inbox_max`), whose questions are each taken at once."""
_MAX_ID_CHARS = 64
"""A longer client id is keyed by its digest (an MQTT 3.1.1 client id may be 65535 bytes long)."""


def asker_key(client_id: str) -> str:
    """The admission and history key of a client: `client:<id>` (a long id by its digest, so keys stay small)."""
    if len(client_id) <= _MAX_ID_CHARS:
        return f"client:{client_id}"
    return "client:#" + hashlib.blake2b(client_id.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()


def _digest(topic: str, payload: bytes) -> bytes:
    h = hashlib.blake2b(topic.encode("utf-8", "surrogatepass"), digest_size=16)
    h.update(b"\x00")
    h.update(payload)
    return h.digest()


class QuestionSenders:
    """Asker keys of the questions routed to the daemon, by (topic, payload), until its intake takes them."""

    def __init__(self, max_kept: int = DEFAULT_MAX_SENDERS_KEPT) -> None:
        self.max_kept = max_kept
        self._notes: collections.OrderedDict[bytes, collections.deque[str]] = collections.OrderedDict()
        """digest -> asker keys, oldest first; digests in the order they were first noted."""
        self._count = 0
        self.dropped = 0
        """Notes forgotten for room (copies the daemon never took)."""

    def __len__(self) -> int:
        return self._count

    def routed(self, topic: str, payload: bytes, client_id: str, copies: int = 1) -> None:
        """`client_id` published `payload` on `topic`, which reaches the daemon `copies` times."""
        if copies <= 0:
            return
        digest = _digest(topic, payload)
        notes = self._notes.get(digest)
        if notes is None:
            notes = self._notes[digest] = collections.deque()
        key = asker_key(client_id)
        for _ in range(copies):
            notes.append(key)
            self._count += 1
        while self._count > self.max_kept:
            self._drop_oldest()

    def sender(self, topic: str, payload: bytes) -> str | None:
        """The asker key of one copy of `payload` on `topic` (its note taken), or None when none was noted."""
        digest = _digest(topic, payload)
        notes = self._notes.get(digest)
        if not notes:
            return None
        key = notes.popleft()
        self._count -= 1
        if not notes:
            del self._notes[digest]
        return key

    def _drop_oldest(self) -> None:
        digest, notes = next(iter(self._notes.items()))
        notes.popleft()
        self._count -= 1
        self.dropped += 1
        if not notes:
            del self._notes[digest]
