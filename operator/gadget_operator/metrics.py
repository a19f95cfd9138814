"""Prometheus metrics of the operator, served on ``--metrics-port`` at ``/metrics``.

Module-level metric objects are the Prometheus client's convention (one process, one registry); they
only count, they hold no state the operator depends on.
"""

from __future__ import annotations

import prometheus_client

NODE_PASSES = prometheus_client.Counter(
    "gadget_operator_node_passes_total", "Passes over a node (plan and execute).", ["result"]
)
NODE_PASS_SECONDS = prometheus_client.Histogram(
    "gadget_operator_node_pass_seconds",
    "Duration of one pass over one node.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
INSTANCES_CREATED = prometheus_client.Counter(
    "gadget_operator_instances_created_total", "Gadget instances created on daemons."
)
INSTANCES_REMOVED = prometheus_client.Counter(
    "gadget_operator_instances_removed_total", "Gadget instances removed from daemons."
)
STATUS_WRITES = prometheus_client.Counter(
    "gadget_operator_status_writes_total", "Writes of GadgetInstance status.", ["result"]
)
READY_NODES = prometheus_client.Gauge(
    "gadget_operator_ready_nodes", "Nodes with both a Node object and a reachable daemon endpoint."
)
UNREACHABLE_NODES = prometheus_client.Gauge(
    "gadget_operator_unreachable_nodes", "Nodes whose daemon did not answer the last pass (retried with backoff)."
)
RESOURCES = prometheus_client.Gauge(
    "gadget_operator_resources", "GadgetInstances by the phase their status shows.", ["phase"]
)
DAEMON_CALL_SECONDS = prometheus_client.Histogram(
    "gadget_operator_daemon_call_seconds",
    "Duration of calls to gadget daemons, by method and result (ok, or the error's kind).",
    ["method", "result"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)

# Work queues (workqueue.WorkQueue), by queue name, after client-go's workqueue metrics.
WORKQUEUE_DEPTH = prometheus_client.Gauge(
    "gadget_operator_workqueue_depth", "Keys waiting in a work queue for a worker.", ["name"]
)
WORKQUEUE_ADDS = prometheus_client.Counter(
    "gadget_operator_workqueue_adds_total", "Keys added to a work queue (not counting duplicates).", ["name"]
)
WORKQUEUE_RETRIES = prometheus_client.Counter(
    "gadget_operator_workqueue_retries_total", "Failed keys scheduled again after their backoff.", ["name"]
)
WORKQUEUE_WORK_SECONDS = prometheus_client.Histogram(
    "gadget_operator_workqueue_work_duration_seconds",
    "Time a work queue's handler took for one key.",
    ["name"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)


def serve(port: int) -> None:
    prometheus_client.start_http_server(port)
