"""Prometheus metrics, read from the engine at scrape time (no global registry)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from corral.models import JobState

if TYPE_CHECKING:
    from corral.server.engine import Engine


class EngineCollector:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def collect(self) -> Iterator[Metric]:
        engine = self.engine
        jobs = GaugeMetricFamily("corral_jobs", "Jobs by state", labels=["state"])
        counts = engine.store.count_by_state()
        for state in JobState:
            jobs.add_metric([state.value], counts.get(state, 0))
        yield jobs
        depth = GaugeMetricFamily("corral_queue_depth", "Queued jobs per queue", labels=["queue"])
        for queue, count in sorted(engine.scheduler.depth().items()):
            depth.add_metric([queue], count)
        yield depth
        workers = engine.scheduler.workers()
        yield GaugeMetricFamily(
            "corral_workers", "Connected workers", value=sum(w.connected for w in workers)
        )
        yield CounterMetricFamily(
            "corral_jobs_submitted", "Jobs submitted since start", value=engine.stats.submitted
        )
        yield CounterMetricFamily(
            "corral_jobs_dispatched",
            "Jobs sent to workers since start",
            value=engine.stats.dispatched,
        )
        completed = CounterMetricFamily(
            "corral_jobs_completed", "Jobs finished since start", labels=["state"]
        )
        for state, count in sorted(engine.stats.completed.items()):
            completed.add_metric([state.value], count)
        yield completed


def metrics_text(engine: Engine) -> tuple[bytes, str]:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(EngineCollector(engine))
    return generate_latest(registry), CONTENT_TYPE_LATEST
