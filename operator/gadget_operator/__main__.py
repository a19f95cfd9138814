"""``python -m gadget_operator`` is the ``gadget-operator`` command."""

from gadget_operator.cli import main

main()
