"""A simulated Inspektor Gadget daemon: the real wire protocol and the real daemon's instance semantics.

``state`` holds the semantics as plain code (no sockets): IG's local instance manager (``LocalManager``,
with ``RunTiming``) and ``ig daemon``'s per-node store (``DaemonState``). ``configmap_store`` holds IG's
DaemonSet mode: one ConfigMap store on a real Kubernetes API, shared by every daemon
(``ConfigMapStore``, ``SharedStoreDaemon``). ``server`` serves either over gRPC on unix or TCP sockets,
one server per simulated node, with fault injection (``SimulatedNode``, ``Fleet``).
"""
