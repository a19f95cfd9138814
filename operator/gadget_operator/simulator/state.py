"""The instance semantics of a real gadget daemon, without the wire.

Modelled on Inspektor Gadget's ``pkg/gadget-service`` (see ``shared/docs/inspektor-gadget.md``):

- ``LocalManager`` is IG's instance manager: what one daemon actually runs. A run is held with
  StatusInvalid, becomes StatusRunning just before the image is pulled, and is initialized (image
  pulled, operators instantiated) ``init_delay`` later, or turns to StatusError with IG's message.
- ``DaemonState`` is ``ig daemon``: IG's service over a per-node file store (or memory only) and a
  local manager that runs every stored instance.
- ``simulator.configmap_store`` holds IG's DaemonSet mode: one ConfigMap store shared by all daemons.

Each rule is tested on its own in ``tests/daemon/``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import secrets
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from google.protobuf import json_format

from gadget_operator.daemon import convert, model
from gadget_operator.daemon.pb import api_pb2

_ID = re.compile(r"^[a-f0-9]{32}$")
_NAME = re.compile(r"^[a-z0-9-_]{1,32}$")
_IMAGE_PREFIX = "ghcr.io/inspektor-gadget/gadget/"
GADGET_INFO_USE_INSTANCE = 1
"""``GetGadgetInfoRequest.flags``: ``imageName`` names a running instance (``GadgetInfoRequestFlagUseInstance``)."""
IG_GADGET_DIR = "/var/lib/ig/gadgets"
"""Where ``ig daemon`` keeps its instance files; its error messages name this path."""
KUBE_MANAGER_PREFIX = "operator.KubeManager."
POLICY_SCOPE_PARAM = KUBE_MANAGER_PREFIX + "multi-tenancy-policy"
"""Set on the stored params of every instance created under IG's multi-tenancy (``simulator.multitenancy``)."""
NO_ISOLATION = "gadget does not support Kubernetes namespace isolation"


class DaemonCallError(Exception):
    """A failed call, as the real daemon reports it: gRPC code UNKNOWN with a text message.

    ``code`` (a ``grpc.StatusCode`` name) differs only where IG wraps a gRPC status error, whose code
    grpc-go keeps when it unwraps it, e.g. PERMISSION_DENIED for a gadget it cannot isolate."""

    def __init__(self, message: str, *, code: str = "UNKNOWN") -> None:
        super().__init__(message)
        self.code = code


InstanceCheck = Callable[[model.GadgetInstance], None]
"""Raises to refuse the caller a stored instance (IG's ``authorizeGadgetInstance`` under multi-tenancy)."""


@dataclass(frozen=True, slots=True)
class RunTiming:
    """How long a daemon takes. All zero: every step happens at once (benchmarks)."""

    start_delay: float = 0.0
    """From RunGadget (the instance is held with StatusInvalid) to the run starting (StatusRunning)."""
    init_delay: float = 0.05
    """From StatusRunning to initialized (image pulled, operators instantiated) or to StatusError.
    A dry-run GetGadgetInfo takes as long: it pulls and prepares too."""
    informer_lag: float = 0.0
    """Shared store: from the API server's watch event to a daemon's informer cache holding it."""
    worker_delay: float = 0.0
    """Shared store: from a daemon's cache holding a change to its worker starting or stopping the run."""

    @property
    def instant(self) -> bool:
        return self.start_delay <= 0 and self.init_delay <= 0


DEFAULT_TIMING = RunTiming()


def full_image_name(image: str) -> str:
    """IG expands a short name like ``trace_exec`` to its ghcr.io reference with ``:latest``."""
    if "/" in image or "." in image.split(":")[0]:
        return image
    return f"{_IMAGE_PREFIX}{image}" + ("" if ":" in image else ":latest")


def quote(value: str) -> str:
    """Go's ``%q``, close enough for the values a daemon quotes."""
    return json.dumps(value, ensure_ascii=False)


# -- the gadget: its params and how preparing it fails ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _ParamDesc:
    key: str
    description: str
    alternative_key: str = ""
    alias: str = ""
    default: str = ""
    type_hint: str = ""

    def validate(self, value: str) -> str | None:
        """IG's ``ParamDesc.Validate`` for the two validators these params have; None when valid."""
        if self.type_hint == "bool" and value.lower() not in ("true", "false"):
            reason = f"expected 'true' or 'false', got: {quote(value.lower())}"
            return f"invalid value {quote(value)} as {quote(self.key)}: {reason}"
        if self.key == "selector" and any(len(pair.split("=")) != 2 for pair in value.split(",")):
            reason = "should be a comma-separated list of key-value pairs (key=value[,key=value,...])"
            return f"invalid value {quote(value)} as {quote(self.key)}: {reason}"
        return None


_CONTAINER_FILTER = "to filter on. Supports comma-separated list and exclusion using '!'."
KUBE_MANAGER_PARAMS = (
    _ParamDesc("podname", f"Kubernetes pods {_CONTAINER_FILTER}", "k8s-podname", "p"),
    _ParamDesc("namespace", f"Kubernetes namespaces {_CONTAINER_FILTER}", "k8s-namespace", "n"),
    _ParamDesc(
        "selector",
        "Kubernetes Labels selector to filter on. Supports comma-separated list and exclusion using '!' "
        "(e.g. '!key=value' or 'key=!value').",
        "k8s-selector",
        "l",
    ),
    _ParamDesc("containername", f"Kubernetes container names {_CONTAINER_FILTER}", "k8s-containername", "c"),
    _ParamDesc("all-namespaces", "Show data from pods in all namespaces", alias="A", default="false", type_hint="bool"),
)
"""``operator.KubeManager.*`` in IG's order (its runtime-container params are left out)."""


WITHOUT_CONTAINER_FILTER = frozenset({"profile_blockio"})
"""Gadgets whose eBPF program uses no mount-namespace filter map: IG's KubeManager operator does not
activate for them (``InstantiateDataOperator`` returns nil), so they list none of its params and
always trace the whole node (e.g. profile_blockio, a block I/O latency histogram of the host)."""


def gadget_params(image: str) -> list[api_pb2.Param]:
    """The params a gadget lists: KubeManager's if it filters by container, and the filter operator's."""
    filter_param = api_pb2.Param(key="filter", prefix="operator.filter.", description="Filter expression", alias="F")
    if _gadget_name(image) in WITHOUT_CONTAINER_FILTER:
        return [filter_param]
    params = [
        api_pb2.Param(
            key=p.key,
            prefix=KUBE_MANAGER_PREFIX,
            description=p.description,
            defaultValue=p.default,
            typeHint=p.type_hint,
            alias=p.alias,
            alternativeKey=p.alternative_key,
        )
        for p in KUBE_MANAGER_PARAMS
    ]
    params.append(filter_param)
    return params


def _gadget_name(image: str) -> str:
    return full_image_name(image).rsplit("/", 1)[-1].split(":")[0].split("@")[0]


def isolation_error(image: str, params: Mapping[str, str]) -> str | None:
    """IG's multitenancy branch: a gadget the KubeManager does not activate for (no container filter) is
    refused, instead of running unfiltered, when its params ask for the policy, as every instance created
    under multi-tenancy has stored. Its run fails with this; so does a dry run with those params."""
    if _gadget_name(image) in WITHOUT_CONTAINER_FILTER and params.get(POLICY_SCOPE_PARAM, "").lower() == "true":
        return f'instantiating operator "KubeManager": rpc error: code = PermissionDenied desc = {NO_ISOLATION}'
    return None


def preparing_error(image: str, params: Mapping[str, str], unknown_images: frozenset[str]) -> str | None:
    """Why instantiating the gadget's operators fails (IG's ``initializing and preparing operators``), or None.

    The oci operator (priority -1000) pulls first, then KubeManager (-1) validates its params. Unknown
    param keys are ignored, as IG does."""
    full = full_image_name(image)
    if full in unknown_images:
        # oci-handler -> oci.EnsureImage (pull policy "missing") -> pullIfNotExist -> oras.Copy
        return (
            f'instantiating operator "oci": ensuring image: pulling image (if missing) {quote(image)}: '
            f"pulling image {quote(image)}: copying to local repository: {full}: not found"
        )
    values = {k.removeprefix(KUBE_MANAGER_PREFIX): v for k, v in params.items() if k.startswith(KUBE_MANAGER_PREFIX)}
    for desc in KUBE_MANAGER_PARAMS:  # apihelpers.MergeWithAlternativeKeys, then apihelpers.Validate
        if desc.key not in values and desc.alternative_key in values:
            values[desc.key] = values.pop(desc.alternative_key)
    for desc in KUBE_MANAGER_PARAMS:
        value = values.get(desc.key, "")
        if value and (problem := desc.validate(value)) is not None:
            return f'validating instance params for operator "KubeManager": {problem}'
    return None


# -- the local instance manager --------------------------------------------------------------------------------


@dataclass(eq=False)
class LocalRun:
    """One instance this daemon runs (IG's ``instancemanager.GadgetInstance``)."""

    instance: model.GadgetInstance
    status: model.InstanceStatus = model.InstanceStatus.INVALID
    message: str = ""
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    """Set once the gadget is initialized; never set for a run that failed before (IG's ``ready`` channel)."""
    info: api_pb2.GadgetInfo | None = None
    task: asyncio.Task[None] | None = None

    @property
    def initialized(self) -> bool:
        return self.ready.is_set()

    def snapshot(self) -> model.GadgetInstance:
        return replace(self.instance, status=self.status, message=self.message)

    async def gadget_info(self) -> api_pb2.GadgetInfo:
        """IG's ``GadgetInstance.GadgetInfo``: waits for initialization with no way out but cancellation."""
        await self.ready.wait()
        assert self.info is not None
        return self.info


class LocalManager:
    """What one daemon runs right now (IG's ``instancemanager.Manager``): memory only, no retries."""

    def __init__(self, node: str, *, timing: RunTiming, unknown_images: Iterable[str] = ()) -> None:
        self.node = node
        self.timing = timing
        self.unknown_images = frozenset(full_image_name(image) for image in unknown_images)
        self.multi_tenancy = False
        """IG's multitenancy branch: its KubeManager honours ``multi-tenancy-policy`` (``isolation_error``)."""
        self._runs: dict[str, LocalRun] = {}

    def run(self, instance: model.GadgetInstance) -> LocalRun:
        """IG's ``RunGadget``: held at once with StatusInvalid; the run goes on in the background."""
        run = LocalRun(instance)
        self._runs[instance.id] = run
        if self.timing.instant:
            if self._start(run):
                self._initialize(run)
        else:
            run.task = asyncio.get_running_loop().create_task(self._run(run), name=f"run {instance.id}")
        return run

    async def _run(self, run: LocalRun) -> None:
        if self.timing.start_delay > 0:
            await asyncio.sleep(self.timing.start_delay)
        if not self._start(run):
            return
        if self.timing.init_delay > 0:
            await asyncio.sleep(self.timing.init_delay)
        self._initialize(run)

    def _start(self, run: LocalRun) -> bool:
        version = run.instance.version
        if version != model.PROTOCOL_VERSION:  # checked before the state is set to running
            self._fail(run, f"expected version to be {model.PROTOCOL_VERSION}, got {version}")
            return False
        run.status = model.InstanceStatus.RUNNING  # IG sets it just before pulling
        return True

    def _problem(self, image: str, params: Mapping[str, str]) -> tuple[str, str] | None:
        """Why preparing the gadget's operators fails, with the gRPC code the error keeps; None if it does not.
        The KubeManager's params are validated before it is instantiated, so that refusal comes last."""
        problem = preparing_error(image, params, self.unknown_images)
        if problem is not None:
            return problem, "UNKNOWN"
        if self.multi_tenancy and (problem := isolation_error(image, params)) is not None:
            return problem, "PERMISSION_DENIED"
        return None

    def _initialize(self, run: LocalRun) -> None:
        problem = self._problem(run.instance.image, run.instance.params)
        if problem is not None:
            self._fail(run, f"initializing and preparing operators: {problem[0]}")
            return
        instance = run.instance
        run.info = api_pb2.GadgetInfo(
            id=instance.id, name=instance.name, imageName=instance.image, params=gadget_params(instance.image)
        )
        run.ready.set()

    def advance(self, instance_id: str) -> LocalRun:
        """Skip what is left of a run's delays: it starts and initializes (or fails) now. For tests that
        must hold a run at a step (long delays) and then let it go on, without waiting."""
        run = self._runs[instance_id]
        if run.task is not None and not run.task.done():
            run.task.cancel()
            run.task = None
            if run.status is model.InstanceStatus.INVALID and not self._start(run):
                return run
            if run.status is model.InstanceStatus.RUNNING:
                self._initialize(run)
        return run

    @staticmethod
    def _fail(run: LocalRun, message: str) -> None:
        run.status, run.message = model.InstanceStatus.ERROR, message

    def remove(self, instance_id: str) -> bool:
        """IG's ``RemoveGadget``: cancel and forget; False (IG: ``gadget not found``) when not run here."""
        run = self._runs.pop(instance_id, None)
        if run is None:
            return False
        if run.task is not None:
            run.task.cancel()
        return True

    def lookup(self, key: str) -> LocalRun | None:
        """IG's ``LookupInstance``: the exact ID, else a name, else an ID prefix (an empty key matches any)."""
        if key in self._runs:
            return self._runs[key]
        for run in self._runs.values():
            if run.instance.name == key:
                return run
        for instance_id, run in self._runs.items():
            if instance_id.startswith(key):
                return run
        return None

    def state(self, instance_id: str) -> tuple[model.InstanceStatus, str]:
        """IG's ``InstanceState``; raises with IG's ``gadget not found`` for an instance not run here."""
        run = self.lookup(instance_id)
        if run is None:
            raise DaemonCallError(f"getting instance status for {quote(instance_id)}: gadget not found")
        return run.status, run.message

    def running(self) -> dict[str, model.GadgetInstance]:
        return {instance_id: run.snapshot() for instance_id, run in self._runs.items()}

    def initialized(self, instance_id: str) -> bool:
        run = self._runs.get(instance_id)
        return run is not None and run.initialized

    async def dry_run(self, image: str, params: Mapping[str, str]) -> api_pb2.GadgetInfo:
        """GetGadgetInfo without flags: pull and prepare, start nothing."""
        if self.timing.init_delay > 0:
            await asyncio.sleep(self.timing.init_delay)
        problem = self._problem(image, params)
        if problem is not None:
            message, code = problem
            raise DaemonCallError(f"getting gadget info: initializing and preparing operators: {message}", code=code)
        return api_pb2.GadgetInfo(imageName=image, params=gadget_params(image))

    async def stop_all(self) -> None:
        """The daemon process ends: every run stops."""
        runs, self._runs = list(self._runs.values()), {}
        tasks = [run.task for run in runs if run.task is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task


# -- IG's service, common to both stores -----------------------------------------------------------------------

_ADJECTIVES = (
    "admiring",
    "adoring",
    "affectionate",
    "agitated",
    "amazing",
    "angry",
    "awesome",
    "beautiful",
    "blissful",
    "bold",
    "boring",
    "brave",
    "busy",
    "charming",
    "clever",
    "compassionate",
    "competent",
    "condescending",
    "confident",
    "cool",
    "cranky",
    "crazy",
    "dazzling",
    "determined",
    "distracted",
    "dreamy",
    "eager",
    "ecstatic",
    "elastic",
    "elated",
    "elegant",
    "eloquent",
    "epic",
    "exciting",
    "fervent",
    "festive",
    "flamboyant",
    "focused",
    "friendly",
    "frosty",
    "funny",
    "gallant",
    "gifted",
    "goofy",
    "gracious",
    "great",
    "happy",
    "hardcore",
    "heuristic",
    "hopeful",
    "hungry",
    "infallible",
    "inspiring",
    "intelligent",
    "interesting",
    "jolly",
    "jovial",
    "keen",
    "kind",
    "laughing",
    "loving",
    "lucid",
    "magical",
    "modest",
    "musing",
    "mystifying",
    "naughty",
    "nervous",
    "nice",
    "nifty",
    "nostalgic",
    "objective",
    "optimistic",
    "peaceful",
    "pedantic",
    "pensive",
    "practical",
    "priceless",
    "quirky",
    "quizzical",
    "recursing",
    "relaxed",
    "reverent",
    "romantic",
    "sad",
    "serene",
    "sharp",
    "silly",
    "sleepy",
    "stoic",
    "strange",
    "stupefied",
    "suspicious",
    "sweet",
    "tender",
    "thirsty",
    "trusting",
    "unruffled",
    "upbeat",
    "vibrant",
    "vigilant",
    "vigorous",
    "wizardly",
    "wonderful",
    "xenodochial",
    "youthful",
    "zealous",
    "zen",
)
_SURNAMES = (
    "agnesi",
    "albattani",
    "allen",
    "almeida",
    "antonelli",
    "archimedes",
    "ardinghelli",
    "aryabhata",
    "austin",
    "babbage",
    "banach",
    "banzai",
    "bardeen",
    "bartik",
    "bassi",
    "beaver",
    "bell",
    "benz",
    "bhabha",
    "bhaskara",
    "black",
    "blackburn",
    "blackwell",
    "bohr",
    "booth",
    "borg",
    "bose",
    "bouman",
    "boyd",
    "brahmagupta",
    "brattain",
    "brown",
    "buck",
    "burnell",
    "cannon",
    "carson",
    "cartwright",
    "carver",
    "cerf",
    "chandrasekhar",
    "chaplygin",
    "chatelet",
    "chatterjee",
    "chaum",
    "chebyshev",
    "clarke",
    "cohen",
    "colden",
    "cori",
    "cray",
    "curie",
    "curran",
    "darwin",
    "davinci",
    "dewdney",
    "dhawan",
    "diffie",
    "dijkstra",
    "dirac",
    "driscoll",
    "dubinsky",
    "easley",
    "edison",
    "einstein",
    "elbakyan",
    "elgamal",
    "elion",
    "ellis",
    "engelbart",
    "euclid",
    "euler",
    "faraday",
    "feistel",
    "fermat",
    "fermi",
    "feynman",
    "franklin",
    "gagarin",
    "galileo",
    "galois",
    "ganguly",
    "gates",
    "gauss",
    "germain",
    "goldberg",
    "goldstine",
    "goldwasser",
    "golick",
    "goodall",
    "gould",
    "greider",
    "grothendieck",
    "haibt",
    "hamilton",
    "haslett",
    "hawking",
    "heisenberg",
    "hellman",
    "hermann",
    "herschel",
    "hertz",
    "heyrovsky",
    "hodgkin",
    "hofstadter",
    "hoover",
    "hopper",
    "hugle",
    "hypatia",
    "ishizaka",
    "jackson",
    "jang",
    "jemison",
    "jennings",
    "jepsen",
    "johnson",
    "joliot",
    "jones",
    "kalam",
    "kapitsa",
    "kare",
    "keldysh",
    "keller",
    "kepler",
    "khayyam",
    "khorana",
    "kilby",
    "kirch",
    "knuth",
    "kowalevski",
    "lalande",
    "lamarr",
    "lamport",
    "leakey",
    "leavitt",
    "lederberg",
    "lehmann",
    "lewin",
    "lichterman",
    "liskov",
    "lovelace",
    "lumiere",
    "mahavira",
    "margulis",
    "matsumoto",
    "maxwell",
    "mayer",
    "mccarthy",
    "mcclintock",
    "mclaren",
    "mclean",
    "mcnulty",
    "meitner",
    "mendel",
    "mendeleev",
    "meninsky",
    "merkle",
    "mestorf",
    "mirzakhani",
    "montalcini",
    "moore",
    "morse",
    "moser",
    "murdock",
    "napier",
    "nash",
    "neumann",
    "newton",
    "nightingale",
    "nobel",
    "noether",
    "northcutt",
    "noyce",
    "panini",
    "pare",
    "pascal",
    "pasteur",
    "payne",
    "perlman",
    "pike",
    "poincare",
    "poitras",
    "proskuriakova",
    "ptolemy",
    "raman",
    "ramanujan",
    "rhodes",
    "ride",
    "ritchie",
    "robinson",
    "roentgen",
    "rosalind",
    "rubin",
    "saha",
    "sammet",
    "sanderson",
    "satoshi",
    "shamir",
    "shannon",
    "shaw",
    "shirley",
    "shockley",
    "shtern",
    "sinoussi",
    "snyder",
    "solomon",
    "spence",
    "stonebraker",
    "sutherland",
    "swanson",
    "swartz",
    "swirles",
    "taussig",
    "tesla",
    "tharp",
    "thompson",
    "torvalds",
    "tu",
    "turing",
    "varahamihira",
    "vaughan",
    "villani",
    "visvesvaraya",
    "volhard",
    "wescoff",
    "wilbur",
    "wiles",
    "williams",
    "williamson",
    "wilson",
    "wing",
    "wozniak",
    "wright",
    "wu",
    "yalow",
    "yonath",
    "zhukovsky",
)


def random_name() -> str:
    """IG's ``namesgenerator.GetRandomName(0)``: ``adjective_surname``, with no retry on a collision."""
    return f"{secrets.choice(_ADJECTIVES)}_{secrets.choice(_SURNAMES)}"


def check_instance_id(instance_id: str) -> None:
    if not _ID.match(instance_id):
        raise DaemonCallError(f"invalid gadget instance id: {instance_id}")


def new_identity(requested: model.GadgetInstance) -> model.GadgetInstance:
    """IG's ``Service.CreateGadgetInstance`` before the store: ID and name made or checked."""
    instance_id = requested.id
    if not instance_id:
        instance_id = secrets.token_hex(16)
    else:
        check_instance_id(instance_id)
    name = requested.name
    if not name:
        name = random_name()
    elif not _NAME.match(name):
        raise DaemonCallError(f"invalid gadget instance name: {name}")
    return replace(requested, id=instance_id, name=name)


class Daemon:
    """One daemon as its gRPC service answers: IG's ``Service`` over a store and a local manager."""

    def __init__(self, node: str, *, timing: RunTiming = DEFAULT_TIMING, unknown_images: Iterable[str] = ()) -> None:
        self.node = node
        self.timing = timing
        self.manager = LocalManager(node, timing=timing, unknown_images=unknown_images)

    @property
    def unknown_images(self) -> frozenset[str]:
        return self.manager.unknown_images

    # The four store calls, as the servicer makes them. ``visible`` and ``check`` are IG's multi-tenancy
    # policy: List skips what the caller may not see before it asks for states (so an instance it may not
    # see cannot break its List), Get and Remove refuse it (Remove then looks the instance up first).
    async def create_instance(
        self, requested: model.GadgetInstance, *, gadget_timeout: int = 0
    ) -> model.GadgetInstance:
        raise NotImplementedError

    async def list_instances(
        self, visible: Callable[[model.GadgetInstance], bool] | None = None
    ) -> list[model.GadgetInstance]:
        return self.list(visible)

    async def get_instance(self, instance_id: str, check: InstanceCheck | None = None) -> model.GadgetInstance:
        check_instance_id(instance_id)
        instance = self.load_stored(instance_id)
        if check is not None:
            check(instance)
        return self.with_state(instance)

    async def remove_instance(self, instance_id: str, check: InstanceCheck | None = None) -> tuple[int, str]:
        check_instance_id(instance_id)
        if check is not None:
            check(self.load_stored(instance_id))
        return await self.remove_stored(instance_id)

    def stored_instances(self) -> list[model.GadgetInstance]:
        """What the store holds, in its order, without state."""
        raise NotImplementedError

    def load_stored(self, instance_id: str) -> model.GadgetInstance:
        """One stored instance, without state; raises with IG's ``getting gadget instance from store`` error."""
        raise NotImplementedError

    async def remove_stored(self, instance_id: str) -> tuple[int, str]:
        """The store's RemoveGadgetInstance (the ID is valid)."""
        raise NotImplementedError

    def list(self, visible: Callable[[model.GadgetInstance], bool] | None = None) -> list[model.GadgetInstance]:
        """ListGadgetInstances: what the store holds, each with its state from the local manager."""
        return [self.with_state(i) for i in self.stored_instances() if visible is None or visible(i)]

    def with_state(self, instance: model.GadgetInstance) -> model.GadgetInstance:
        status, message = self.manager.state(instance.id)
        return replace(instance, status=status, message=message)

    async def get_gadget_info(
        self, image: str, params: Mapping[str, str], *, version: int, flags: int = 0, check: InstanceCheck | None = None
    ) -> api_pb2.GadgetInfo:
        """IG's ``Service.GetGadgetInfo``: a dry run, or (flag 1) the info of a run of this daemon, which
        ``check`` may refuse the caller by the params it runs with."""
        if version != model.PROTOCOL_VERSION:
            raise DaemonCallError(f"expected version to be {model.PROTOCOL_VERSION}, got {version}")
        if flags & GADGET_INFO_USE_INSTANCE:
            run = self.lookup_run(image, check)
            return await run.gadget_info()
        return await self.manager.dry_run(image, params)

    def lookup_run(self, key: str, check: InstanceCheck | None = None) -> LocalRun:
        """The run an attach or GetGadgetInfo names (ID, name or ID prefix), if ``check`` lets the caller see it."""
        run = self.manager.lookup(key)
        if run is None:
            raise DaemonCallError(f"instance {key} not found")
        if check is not None:
            check(run.instance)
        return run

    def running(self) -> dict[str, model.GadgetInstance]:
        return self.manager.running()

    def initialized(self, instance_id: str) -> bool:
        return self.manager.initialized(instance_id)

    async def start(self) -> None:
        """The daemon process starts: it resumes what its store holds."""

    async def restart(self) -> None:
        """The daemon process restarts: its runs are gone; what its store holds runs again."""
        await self.manager.stop_all()
        await self.start()

    async def close(self) -> None:
        """The daemon process ends for good (the fleet stops)."""
        await self.manager.stop_all()


class DaemonState(Daemon):
    """``ig daemon``: IG's file store (one file per instance, resumed at start) or memory only.

    Without a store directory the instances live in memory and a restart loses them."""

    def __init__(
        self,
        node: str,
        store: Path | None = None,
        unknown_images: Iterable[str] = (),
        *,
        timing: RunTiming = DEFAULT_TIMING,
    ) -> None:
        super().__init__(node, timing=timing, unknown_images=unknown_images)
        self.store = store
        self.stored: dict[str, model.GadgetInstance] = {}
        """What the store holds (a mirror of its files), by ID."""
        if self.store is not None:
            self.store.mkdir(parents=True, exist_ok=True)
            self.load()

    def _path(self, instance_id: str) -> Path:
        assert self.store is not None
        return self.store / f"{instance_id}.gadget"

    @staticmethod
    def _not_found(instance_id: str) -> str:
        return f"gadget instance not found at {quote(f'{IG_GADGET_DIR}/{instance_id}.gadget')}"

    def load(self) -> None:
        """Resume stored instances, as ``ig daemon`` does at start (``ResumeStoredGadgets``)."""
        assert self.store is not None
        self.stored.clear()
        for path in sorted(self.store.glob("*.gadget")):
            request = json_format.Parse(path.read_text(), api_pb2.CreateGadgetInstanceRequest())
            instance = convert.from_pb(request.gadgetInstance)
            self.stored[instance.id] = replace(instance, status=model.InstanceStatus.INVALID, message="")
        for instance in self.stored.values():
            self.manager.run(instance)

    def create(self, requested: model.GadgetInstance) -> model.GadgetInstance:
        """Create as IG's file store does; the result is what was asked for, with no state of its own."""
        created = new_identity(requested)
        for existing in sorted(self.stored.values(), key=lambda i: i.id):  # the files, in directory order
            if existing.id == created.id:
                raise DaemonCallError(f"gadget with id {quote(created.id)} already exists")
            if existing.name == created.name:
                raise DaemonCallError(f"gadget with name {quote(created.name)} already exists")
        stored = replace(created, status=model.InstanceStatus.INVALID, message="")
        if self.store is not None:
            request = api_pb2.CreateGadgetInstanceRequest(gadgetInstance=convert.to_pb(stored))
            self._path(created.id).write_text(json_format.MessageToJson(request))
        self.stored[created.id] = stored
        self.manager.run(stored)
        return created

    def stored_instances(self) -> list[model.GadgetInstance]:
        return [instance for _, instance in sorted(self.stored.items())]

    def load_stored(self, instance_id: str) -> model.GadgetInstance:
        instance = self.stored.get(instance_id)
        if instance is None:
            raise DaemonCallError(f"getting gadget instance from store: loading gadget: {self._not_found(instance_id)}")
        return instance

    def get(self, instance_id: str) -> model.GadgetInstance:
        check_instance_id(instance_id)
        return self.with_state(self.load_stored(instance_id))

    def remove(self, instance_id: str) -> tuple[int, str]:
        """Answer like the real RemoveGadgetInstance: OK with result 1 for an unknown ID."""
        check_instance_id(instance_id)
        if instance_id not in self.stored:
            return 1, self._not_found(instance_id)
        if not self.manager.remove(instance_id):
            return 1, "gadget not found"
        del self.stored[instance_id]
        if self.store is not None:
            self._path(instance_id).unlink(missing_ok=True)
        return 0, ""

    async def create_instance(
        self, requested: model.GadgetInstance, *, gadget_timeout: int = 0
    ) -> model.GadgetInstance:
        return self.create(requested)

    async def remove_stored(self, instance_id: str) -> tuple[int, str]:
        return self.remove(instance_id)

    async def start(self) -> None:
        if self.store is not None:
            self.load()
        else:
            self.stored.clear()

    def lose_memory(self) -> None:
        """A restart, synchronously: memory is gone; with a store the instances come back."""
        for instance_id in list(self.manager.running()):
            self.manager.remove(instance_id)
        if self.store is not None:
            self.load()
        else:
            self.stored.clear()
