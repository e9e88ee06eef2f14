"""Prometheus metrics of the service, in a registry of its own (several apps can live in one process)."""

from __future__ import annotations

import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Metrics:
    """Counters and histograms; ``render()`` gives the text exposition format."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("cxr_http_requests_total", "HTTP requests answered",
                                ["method", "route", "status"], registry=r)
        self.latency = Histogram("cxr_http_request_duration_seconds", "Time to answer an HTTP request",
                                 ["method", "route"], buckets=LATENCY_BUCKETS, registry=r)
        self.uploads = Counter("cxr_uploads_total", "Files received, by outcome (created, duplicate, rejected)",
                               ["outcome"], registry=r)
        self.rejections = Counter("cxr_upload_rejections_total", "Uploads refused as unusable input, by status",
                                  ["status", "reason"], registry=r)
        self.inferences = Counter("cxr_inferences_total", "Studies scored by the model, by priority",
                                  ["priority"], registry=r)
        self.refusals = Counter("cxr_refusals_total", "Studies the quality gate refused to score", registry=r)
        self.inference_errors = Counter("cxr_inference_errors_total", "Jobs that failed unexpectedly", registry=r)
        self.batch_size = Histogram("cxr_inference_batch_size", "Studies scored together in one batch",
                                    buckets=(1, 2, 4, 8, 16, 32, 64), registry=r)
        self.inference_seconds = Histogram("cxr_inference_seconds", "Decode and model time of one batch",
                                           buckets=LATENCY_BUCKETS, registry=r)
        self.turnaround = Histogram("cxr_queue_to_result_seconds", "From queuing a study to its stored result",
                                    buckets=LATENCY_BUCKETS, registry=r)
        self.model_loaded = Gauge("cxr_model_loaded", "1 once the model is loaded", registry=r)
        self.queue_depth = Gauge("cxr_queue_depth", "Jobs waiting or running", registry=r)
        self.model_info = Gauge("cxr_model_info", "1 for each model version loaded now", ["name", "version"],
                                registry=r)
        self.model_swaps = Gauge("cxr_model_swaps", "Models loaded without a restart since the start", registry=r)
        self.reads = Counter("cxr_reads_total", "Readers' labels stored, by how they came", ["source"], registry=r)
        self.drift_alarm = Gauge("cxr_drift_alarm", "1 while the drift watch alarms for a model version",
                                 ["model", "version"], registry=r)
        self.drift_statistic = Gauge("cxr_drift_ks_statistic", "KS statistic of the recent window against the "
                                     "model's reference", ["model", "version", "distribution"], registry=r)
        self.drift_pvalue = Gauge("cxr_drift_p_value", "p-value of the drift tests of the recent window",
                                  ["model", "version", "test"], registry=r)
        self.performance = Gauge("cxr_reads_performance", "Sensitivity, specificity and PPV of the calls against "
                                 "readers' labels (value and 95% CI bounds)", ["model", "version", "metric", "bound"],
                                 registry=r)
        self.performance_alarm = Gauge("cxr_performance_alarm", "1 when the sensitivity CI's upper bound is below "
                                       "the model's promise", ["model", "version"], registry=r)
        self.started = Gauge("cxr_start_time_seconds", "Unix time the service started", registry=r)
        self.started.set(time.time())

    def bind_queue(self, depth: Callable[[], int]) -> None:
        self.queue_depth.set_function(lambda: float(depth()))

    def render(self) -> bytes:
        return generate_latest(self.registry)
