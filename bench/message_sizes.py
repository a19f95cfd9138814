"""How large a daemon's ListGadgetInstances answer can get, against the gRPC receive limits.

Every size is the exact protobuf encoding (``ByteSize``) of messages built with the operator's own
``convert.to_pb``, filled to the limits of the GadgetInstance CRD (``crds/``) and of ``resource.py``.
A List answer is ``repeated GadgetInstance gadgetInstances = 1``: each entry costs its size plus a tag
byte and a varint length.

In IG's shared store a daemon answers List from its informer cache: every instance of the cluster,
whatever node it runs on. Under the per-node store a daemon holds one instance per resource that
targets its node, each naming that node only.
"""

from __future__ import annotations

from typing import Any

from gadget_operator import identity, resource
from gadget_operator.daemon import convert, model
from gadget_operator.daemon.client import MAX_MESSAGE_BYTES

GO_CLIENT_DEFAULT = 4 * 1024 * 1024  # grpc-go's default MaxCallRecvMsgSize (IG's own clients); send: unlimited
MIB = 1024 * 1024

# The CRD's string limits (crds/gadgetinstances.gadget-operator.io.yaml) and Kubernetes' own.
IMAGE = 512
PARAM_VALUE = 4096
TAG = 256
NODE_NAME = 253
NAMESPACE, NAME = 63, 253
UID = 36  # a resource UID
PARAM_KEY = 64
"""Parameter keys have no maxLength in the CRD (only non-empty). IG's keys are short (the longest
KubeManager key, operator.KubeManager.containername, has 34 characters); 64 is assumed."""
INSTANCE_NAME = 32  # IG's name rule ^[a-z0-9-_]{1,32}$
ANNOTATIONS_LIMIT = 256 * 1024  # Kubernetes: total size of an object's annotations (IG keeps nodes and tags there)


def varint_len(value: int) -> int:
    length = 1
    while value >= 0x80:
        value >>= 7
        length += 1
    return length


def entry_bytes(instance: model.GadgetInstance) -> int:
    """One ``gadgetInstances`` entry of a List answer: tag, length, message."""
    size = convert.to_pb(instance).ByteSize()
    return 1 + varint_len(size) + size


def instance(
    *,
    nodes: int,
    node_len: int,
    params: int,
    key_len: int,
    value_len: int,
    tags: int,
    tag_len: int,
    image_len: int,
    resource_len: int,
    shared: bool,
) -> model.GadgetInstance:
    """An instance as a daemon lists it: the operator's ownership tags, then the user's tags."""
    node_names = tuple(f"{index:0{node_len}d}"[-node_len:] for index in range(nodes))
    owner = identity.Ownership(
        resource_uid="u" * UID,
        resource="r" * resource_len,
        node=identity.node_set_key(node_names if nodes else None) if shared else "n" * node_len,
        spec_hash="h" * 16,
    )
    return model.GadgetInstance(
        id="a" * 32,
        name="n" * INSTANCE_NAME,
        image="i" * image_len,
        params={f"{index:0{key_len}d}": "v" * value_len for index in range(params)},
        tags=(*identity.ownership_tags(owner), *(f"{index:0{tag_len}d}" for index in range(tags))),
        nodes=node_names,
        log_level=resource.MAX_LOG_LEVEL,
        time_created=2**31,
        status=model.InstanceStatus.RUNNING,
    )


def case(name: str, count: int, one: model.GadgetInstance, note: str = "") -> dict[str, Any]:
    entry = entry_bytes(one)
    total = count * entry
    annotations = len(",".join(one.nodes)) + len(",".join(one.tags)) + len(one.image) + 24  # + timeout, log level
    return {
        "case": name,
        "instances_in_list": count,
        "bytes_per_instance": entry,
        "list_bytes": total,
        "list_mib": round(total / MIB, 2),
        "x_client_limit_64mib": round(total / MAX_MESSAGE_BYTES, 3),
        "x_go_client_default_4mib": round(total / GO_CLIENT_DEFAULT, 3),
        "instances_that_fit_64mib": MAX_MESSAGE_BYTES // entry,
        "instances_that_fit_4mib": GO_CLIENT_DEFAULT // entry,
        "configmap_annotation_bytes": annotations,
        "fits_annotation_limit_256kib": annotations <= ANNOTATIONS_LIMIT,
        **({"note": note} if note else {}),
    }


def computed() -> dict[str, Any]:
    resources = 1000
    crd_max = {
        "params": resource.MAX_PARAMS,
        "key_len": PARAM_KEY,
        "value_len": PARAM_VALUE,
        "tags": resource.MAX_TAGS,
        "tag_len": TAG,
        "image_len": IMAGE,
        "resource_len": NAMESPACE + 1 + NAME,
    }
    small = {"params": 1, "key_len": 30, "value_len": 12, "tags": 0, "tag_len": 0, "image_len": 10, "resource_len": 24}
    cases = [
        case(
            "shared store, CRD limits: 1,000 resources, each restricted to 1,000 nodes (nodes: [...])",
            resources,
            instance(nodes=resource.MAX_NODES, node_len=NODE_NAME, shared=True, **crd_max),
            "every field at its CRD limit; a real API server would refuse such a ConfigMap (its nodes and tags "
            "annotations exceed Kubernetes' 256 KiB), so the reachable bound is a little lower",
        ),
        case(
            "shared store, CRD limits, every resource on every node (nodes empty)",
            resources,
            instance(nodes=0, node_len=0, shared=True, **crd_max),
        ),
        case(
            "shared store, realistic: 1,000 resources with a nodeSelector matching 1,000 nodes "
            "(41-character names such as ip-10-0-123-45.eu-west-1.compute.internal), one short param",
            resources,
            instance(nodes=1000, node_len=41, shared=True, **small),
            "the operator lists the selected nodes in nodes whenever a resource does not target every node",
        ),
        case(
            "shared store, realistic: 1,000 resources on every node, one short param",
            resources,
            instance(nodes=0, node_len=0, shared=True, **small),
        ),
        case(
            "per-node store, CRD limits: 1,000 resources on this node (nodes: [this node])",
            resources,
            instance(nodes=1, node_len=NODE_NAME, shared=False, **crd_max),
        ),
    ]
    return {
        "client_max_receive_bytes": MAX_MESSAGE_BYTES,
        "ig_go_client_default_receive_bytes": GO_CLIENT_DEFAULT,
        "ig_server_max_send": "unlimited (grpc-go default math.MaxInt32)",
        "assumptions": {
            "param_key_len": f"{PARAM_KEY} (the CRD does not bound parameter keys)",
            "image_len": IMAGE,
            "param_value_len": PARAM_VALUE,
            "tag_len": TAG,
            "node_name_len": NODE_NAME,
            "resource": "namespace 63 + '/' + name 253 (ownership tag)",
        },
        "cases": cases,
    }


if __name__ == "__main__":
    import json

    print(json.dumps(computed(), indent=2))
