"""The server's loop-kept counters and histograms expose exactly what prometheus_client's own would."""

import re

import prometheus_client
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from effx_serve.serve import metrics

BUCKETS = (0.001, 0.01, 0.1)


def _updated(counter_kind, histogram_kind) -> str:
    registry = CollectorRegistry()
    counter = counter_kind("effx_test_events", "Events by kind and outcome", ["kind", "outcome"], registry=registry)
    histogram = histogram_kind("effx_test_seconds", "Seconds by kind", ["kind"], buckets=BUCKETS, registry=registry)
    counter.labels("a", "ok").inc()
    counter.labels("a", "ok").inc(2.5)
    counter.labels("b", "failed").inc()
    for value in (0.0005, 0.001, 0.05, 3.0, 0.1):  # 0.001 and 0.1 on a bound: counted in that bucket (`le`)
        histogram.labels("a").observe(value)
    return re.sub(r"_created(\{[^}]*\})? \S+", r"_created\1 T", generate_latest(registry).decode())


def test_the_exposition_is_prometheus_clients_own_for_the_same_updates():
    assert _updated(metrics.Counter, metrics.Histogram) == _updated(prometheus_client.Counter, prometheus_client.Histogram)


def test_labels_are_checked_and_values_that_are_not_strings_share_their_string_form():
    family = metrics.Counter("effx_test_statuses", "Statuses", ["status"], registry=CollectorRegistry())
    family.labels(200).inc()
    family.labels("200").inc()
    family.labels(200).inc()
    assert family.labels("200").value == 3
    with pytest.raises(ValueError, match="takes the labels"):
        family.labels("200", "extra")
    with pytest.raises(ValueError, match="Duplicated timeseries"):  # the registry refuses a second family of one name
        registry = CollectorRegistry()
        metrics.Counter("effx_test_twice", "Twice", registry=registry)
        metrics.Counter("effx_test_twice", "Twice", registry=registry)


def test_garbage_collections_are_timed_by_generation():
    import gc

    server_metrics = metrics.ServerMetrics()
    timer = server_metrics.time_garbage_collections()
    gc.callbacks.append(timer)
    try:
        gc.collect(1)
        gc.collect()
    finally:
        gc.callbacks.remove(timer)
    text = generate_latest(server_metrics.registry).decode()
    assert 'effx_gc_pause_seconds_count{generation="1"} 1.0' in text and 'effx_gc_pause_seconds_count{generation="2"} 1.0' in text
    full = server_metrics.gc_pauses.labels("2")
    assert 0.0 < full.sum < 10.0
