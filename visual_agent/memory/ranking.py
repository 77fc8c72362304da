"""`rank_matches`: order the events a question's words found, without FTS5's bm25, whose document frequencies
make it read each word's whole doclist (its cost grows with the history, not the window).

Each word brings its newest matches in the window (at most `cap`, from the text index, in rowid order: cheap).
A word's weight is its inverse document frequency in the window, estimated from those matches alone: a word with
fewer than `cap` matches has exactly that many; one that filled `cap` is as dense in the rest of the window as in
the span its matches cover. An event scores the sum of the weights of the words it holds; ties go to the newer.
"""

from __future__ import annotations

import math

__all__ = ["RRF_K", "fuse_rankings", "rank_matches"]

RRF_K = 60
"""Reciprocal rank fusion's constant (the usual 60): a rank-1 hit of one ranking outweighs a rank-5 hit of both."""


def rank_matches(hits: dict[str, list[int]], *, low: int, high: int, cap: int) -> list[int]:
    """Event ids, best first. `hits`: per word, the ids of its newest matches (newest first, at most `cap`);
    `low`/`high`: the id range of the window (ids grow in write order)."""
    window = max(1, high - low + 1)
    weights: dict[str, float] = {}
    for word, ids in hits.items():
        if not ids:
            continue
        if len(ids) < cap:
            count = float(len(ids))
        else:  # as dense over the whole window as over the span these matches cover
            span = max(1, high - min(ids) + 1)
            count = min(float(window), len(ids) * window / span)
        weights[word] = math.log(1.0 + window / count)
    scores: dict[int, float] = {}
    for word, ids in hits.items():
        for event_id in ids:
            scores[event_id] = scores.get(event_id, 0.0) + weights.get(word, 0.0)
    return sorted(scores, key=lambda i: (-scores[i], -i))


def fuse_rankings(*rankings: list[int], k: int = RRF_K) -> list[int]:
    """Ids of several best-first rankings in one order (reciprocal rank fusion: each ranking adds 1 / (k + rank));
    ties keep the order of first appearance, the earlier ranking first."""
    scores: dict[int, float] = {}
    for ranking in rankings:
        for rank, event_id in enumerate(ranking, start=1):
            scores[event_id] = scores.get(event_id, 0.0) + 1.0 / (k + rank)
    return sorted(scores, key=lambda i: -scores[i])
