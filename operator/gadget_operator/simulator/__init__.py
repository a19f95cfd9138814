"""A simulated Inspektor Gadget daemon: the real wire protocol and the real daemon's instance semantics.

``state`` holds the semantics as plain code (no sockets), ``server`` serves them over gRPC on unix or TCP
sockets, one server per simulated node, with fault injection.
"""
