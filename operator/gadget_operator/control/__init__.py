"""The operator's own control API (``proto/control/v1/control.proto``), modelled on Skaffold's: the
state of everything it handles (GetState), what happened since it started (Events: replayed, then
live) and user intents (Execute), over gRPC and HTTP/JSON.

Two layers. Below the reconciler (it records into them): ``journal`` (the bounded event log),
``events`` (its typed entries) and ``recorder`` (the hooks, and what is known of each daemon's
reachability). Beside ``handlers``, above the reconciler: ``state`` (GetState), ``intents``
(Execute), ``server`` (the listeners), and the client side (``client``, ``locate``) that
``gadget-operator ctl`` uses. ``pb`` holds the generated stubs (``make proto``).
"""
