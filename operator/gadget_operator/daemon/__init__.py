"""Talking to one node's gadget daemon: the instance model, the gRPC client and its addresses."""
