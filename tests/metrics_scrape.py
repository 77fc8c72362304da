"""Read a Prometheus text page into {(name, labels): value} and compare two scrapes (for tests and benchmarks)."""

from __future__ import annotations

import urllib.request
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


def scrape(url: str, headers: dict[str, str] | None = None) -> Samples:
    request = urllib.request.Request(url, headers=headers or {})
    with urllib.request.urlopen(request, timeout=5) as r:
        assert r.headers["Content-Type"].startswith("text/plain"), r.headers["Content-Type"]
        return parse(r.read().decode())


def value(samples: Samples, name: str, **labels: Any) -> float:
    """The sample's value; 0 when absent (a counter not yet seen)."""
    return samples.get((name, frozenset((k, str(v)) for k, v in labels.items())), 0.0)


def moved(before: Samples, after: Samples, name: str, **labels: Any) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


def total(samples: Samples, name: str) -> float:
    """The sum of every sample named `name`, whatever its labels."""
    return sum(v for (n, _), v in samples.items() if n == name)
