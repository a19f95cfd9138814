"""gadget-operator: keeps Inspektor Gadget gadget instances running on the right nodes.

Import layers, top to bottom (a module imports only from layers below it; `.importlinter`
enforces this):

1. ``cli``
2. ``handlers`` (kopf wiring), ``demo``, ``control.server``, ``control.state``, ``control.intents``
3. ``reconciler``
4. ``executor``, ``discovery``, ``status``, ``kube``, ``control.recorder``, ``control.events``,
   ``control.journal``
5. ``planner``, ``daemon``
6. ``resource``, ``identity``, ``conditions``
7. ``settings``, ``errors``

``simulator`` and ``testing`` sit to the side: they may import the package, but no
production module imports them (``demo`` is the one exception, and only at call time).
"""

__version__ = "0.1.0"
