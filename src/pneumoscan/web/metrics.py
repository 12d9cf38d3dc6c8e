"""GET /metrics: Prometheus text, read from the database (and the broker) at each scrape."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

from pneumoscan.broker import BrokerUnavailable, queue_depth
from pneumoscan.config import Settings
from pneumoscan.db import Database, outbox, studies
from pneumoscan.db.reviews import agreement
from pneumoscan.db.schema import utcnow
from pneumoscan.db.stats import activity, prediction_counts, review_counts, status_counts
from pneumoscan.domain import LABELS, STATUSES, SendState

log = logging.getLogger(__name__)

LATENCY_BUCKETS = (0.5, 1, 2, 3, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
LATENCY_WINDOW = timedelta(hours=24)


class PneumoscanCollector(Collector):
    def __init__(self, settings: Settings, db: Database, model_version: str) -> None:
        self.settings, self.db, self.model_version = settings, db, model_version

    def collect(self) -> Iterator[Any]:
        with self.db() as session:
            statuses = status_counts(session)
            predictions = prediction_counts(session)
            waiting, oldest = outbox.pending_count(session)
            reviews = review_counts(session)
            agree = agreement(session, self.model_version)
            recent = activity(session, self.model_version, utcnow() - LATENCY_WINDOW)
            sending = studies.send_states(session)

        images = GaugeMetricFamily("pneumoscan_images", "Stored images by status.", labels=["status"])
        for status in STATUSES:
            images.add_metric([status], statuses.get(status, 0))
        yield images

        by_label = GaugeMetricFamily("pneumoscan_predictions", "Stored predictions by model version and label.",
                                     labels=["model_version", "label"])
        for (version, label), n in sorted(predictions.items()):
            by_label.add_metric([version, label], n)
        yield by_label

        results = GaugeMetricFamily("pneumoscan_study_results", "Study results by send state (failed: gave up, see "
                                    "`pneumoscan results --by study`).", labels=["send_state"])
        for state in SendState:
            results.add_metric([state.value], sending.get(state.value, 0))
        yield results

        yield GaugeMetricFamily("pneumoscan_queued_files", "Files handed to the broker and not yet settled "
                                "(the outbox).", value=waiting)
        now = utcnow()
        age = 0.0 if oldest is None else (now - (oldest if oldest.tzinfo else oldest.replace(tzinfo=now.tzinfo))
                                           ).total_seconds()
        yield GaugeMetricFamily("pneumoscan_oldest_queued_file_age_seconds",
                                "How long the oldest unsettled file has waited (0 when none).", value=max(0.0, age))
        depth = self._broker_depth()
        if depth is not None:
            yield GaugeMetricFamily("pneumoscan_broker_queue_messages", "Messages waiting in the broker's queue.",
                                    value=depth)

        latencies = sorted(a.classified_at - a.written_at for a in recent if a.written_at is not None)
        buckets, i = [], 0
        for bound in LATENCY_BUCKETS:
            while i < len(latencies) and latencies[i] <= bound:
                i += 1
            buckets.append((str(bound), i))
        buckets.append(("+Inf", len(latencies)))
        yield HistogramMetricFamily(
            "pneumoscan_drop_to_result_seconds", "Seconds from a file being written to its first result, "
            "over the last 24 hours, for the current model.", buckets=buckets, sum_value=sum(latencies))

        counted = CounterMetricFamily("pneumoscan_reviews", "Reviews stored, by the reviewer's label.",
                                      labels=["label"])
        for label in LABELS:
            counted.add_metric([label], reviews.get(label, 0))
        yield counted
        reviewed = sum(sum(row.values()) for row in agree.values())
        agreed = sum(agree[label][label] for label in LABELS)
        yield _gauge("pneumoscan_reviewed_images", "Images of the current model with a review.",
                     self.model_version, reviewed)
        yield _gauge("pneumoscan_reviewer_agreement_ratio", "Share of reviewed images where the latest review "
                     "agrees with the current model's label (NaN before any review).", self.model_version,
                     agreed / reviewed if reviewed else float("nan"))

    def _broker_depth(self) -> int | None:
        if self.settings.broker_url is None:
            return None
        started = time.monotonic()
        try:
            return queue_depth(self.settings.broker_url)
        except BrokerUnavailable as exc:
            log.warning("cannot read the broker's queue depth (%.1f s): %s", time.monotonic() - started, exc)
            return None


def _gauge(name: str, documentation: str, model_version: str, value: float) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, documentation, labels=["model_version"])
    family.add_metric([model_version], value)
    return family


def registry(settings: Settings, db: Database, model_version: str) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(PneumoscanCollector(settings, db, model_version))
    registry.register(UrgentCollector(settings, db, model_version))
    return registry


class UrgentCollector(Collector):
    """The urgent bucket: studies and unreviewed images at or above PNEUMOSCAN_URGENT_PROBABILITY."""

    def __init__(self, settings: Settings, db: Database, model_version: str) -> None:
        self.settings, self.db, self.model_version = settings, db, model_version

    def collect(self) -> Iterator[Any]:
        from pneumoscan.db.images import urgent_counts

        with self.db() as session:
            counts = urgent_counts(session, self.model_version, self.settings.urgent_probability)
        yield GaugeMetricFamily("pneumoscan_urgent_studies", "Studies whose probability is at or above the urgent "
                                "threshold.", value=counts["studies"])
        yield GaugeMetricFamily("pneumoscan_urgent_unreviewed_images", "Unreviewed images of the current model at "
                                "or above the urgent threshold.", value=counts["images"])
