"""The README's install section, checked as users read it: offline always, and run as written on a real cluster.

The section lies between ``<!-- install:start -->`` and ``<!-- install:end -->`` in README.md. Its fenced
blocks are what this module works on:

* ``sh`` blocks hold commands. A block right after ``<!-- e2e: NAME -->`` is one the end-to-end tests run,
  verbatim, with bash (``-euo pipefail``), from the repository root.
* A ``yaml`` block right after ``<!-- file: PATH -->`` is a file the reader writes (e.g. a kustomize overlay
  of their own); commands of the section that name PATH's directory use it.

Offline (every run; only the real ``kubectl`` and ``helm`` of tools/k8s_binaries.py, no cluster):

* every repository path the section names exists, and every release it pins is the chart's appVersion;
* every chart value it names (the values table, every ``--set``) exists in charts/gadget-operator/values.yaml,
  with the default the table shows;
* every install command renders: ``kubectl kustomize`` for ``kubectl apply|delete -k`` (a URL of this
  repository stands for its local directory), ``helm template`` with the same arguments for
  ``helm install|upgrade`` of the local chart; ``kubectl apply -f`` names files kubectl can apply;
* what the commands name exists in what they install: ``deployment/...``, ``crd/...``, ``gi/...``,
  namespaces, the TLS Secret and its keys, the Helm release; the JSON patch applies;
* the GitOps snippets name the real API group, kind, finalizer and Argo CD key.

End to end (``GADGET_E2E_KUBECONFIG=/path/to/kubeconfig``; marked ``e2e``): against that cluster, with the
real binaries first in PATH and KUBECONFIG set, install with kubectl -> CRD established and Deployment
available -> uninstall; then the same with Helm. The cluster must be able to pull the operator's image
(``ghcr.io/gadget-operator/gadget-operator:0.1.0``; on kind, ``kind load docker-image`` it) and must not run
gadget-operator already, nor hold GadgetInstances (the README's uninstall deletes them all). Without
Inspektor Gadget the test creates the namespace ``gadget`` the base's Role needs, and removes it afterwards;
with IG's DaemonSet (``gadget/gadget``) it also runs the first-GadgetInstance block.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import jsonpatch
import pytest
import yaml

from gadget_operator import cli
from gadget_operator import resource as gi_resource

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
CHART = ROOT / "charts" / "gadget-operator"
CRD_FILE = ROOT / "crds" / "gadgetinstances.gadget-operator.io.yaml"
ARGOCD_PATCH = ROOT / "manifests" / "argocd" / "argocd-cm-patch.yaml"
SECTION_START = "<!-- install:start -->"
SECTION_END = "<!-- install:end -->"
REPO_URL = "https://github.com/gadget-operator/gadget-operator"
# A kustomize remote target of this repository: URL//PATH?ref=REF.
REMOTE_TARGET = re.compile(re.escape(REPO_URL) + r"//(?P<path>[^?\s'\"]+)\?ref=(?P<ref>[\w.-]+)")
E2E_KUBECONFIG = os.environ.get("GADGET_E2E_KUBECONFIG")
RELEASE_NAMESPACE = "gadget-operator-system"
CRD_NAME = "gadgetinstances.gadget-operator.io"
CLUSTER_CRD_NAME = "clustergadgetinstances.gadget-operator.io"
DAEMON_NAMESPACE = "gadget"

# The blocks the end-to-end tests run, each exactly once in the section.
E2E_BLOCKS = {
    "kustomize-install",
    "verify",
    "first-instance",
    "delete-instances",
    "kustomize-uninstall",
    "helm-install",
    "helm-uninstall",
    "helm-cleanup",
}

# `kubectl` and `helm` flags that take a value (the next argument, unless given as --flag=value).
KUBECTL_VALUE_FLAGS = {
    "-n",
    "--namespace",
    "-k",
    "--kustomize",
    "-f",
    "--filename",
    "-p",
    "--patch",
    "--patch-file",
    "--type",
    "--for",
    "--timeout",
    "-o",
    "--output",
    "-l",
    "--selector",
    "--from-file",
    "--from-literal",
    "--field-manager",
    "--context",
    "--kubeconfig",
}
HELM_VALUE_FLAGS = {
    "-n",
    "--namespace",
    "--set",
    "--set-string",
    "--set-json",
    "--set-file",
    "--set-literal",
    "-f",
    "--values",
    "--version",
    "--timeout",
    "--repo",
    "--kube-context",
    "--kubeconfig",
    "--description",
    "--history-max",
}
HELM_SET_FLAGS = ("--set", "--set-string", "--set-json", "--set-file", "--set-literal")
# `helm upgrade` flags `helm template` does not take; they change nothing in what is rendered.
HELM_UPGRADE_ONLY_FLAGS = {
    "--install",
    "-i",
    "--reuse-values",
    "--reset-values",
    "--reset-then-reuse-values",
    "--cleanup-on-fail",
    "--force",
    "--history-max",
}
# Kinds the commands may name by kubectl's short or long names, and which of them are namespaced. Only
# these are checked: the others (IG's DaemonSet, Argo CD's ConfigMap) are not installed from here.
KINDS = {
    "deployment": "Deployment",
    "deployments": "Deployment",
    "deploy": "Deployment",
    "crd": "CustomResourceDefinition",
    "crds": "CustomResourceDefinition",
    "customresourcedefinition": "CustomResourceDefinition",
    "customresourcedefinitions": "CustomResourceDefinition",
    "gi": "GadgetInstance",
    "gadgetinstance": "GadgetInstance",
    "gadgetinstances": "GadgetInstance",
    "namespace": "Namespace",
    "namespaces": "Namespace",
    "ns": "Namespace",
}
NAMESPACED_KINDS = {"Deployment", "GadgetInstance"}
RUN_FLAG_ENV = {f"{cli.ENV_PREFIX}_{param.name.upper()}" for param in cli.run.params if param.name}


# -- the README's install section ---------------------------------------------------------------------


@dataclass(frozen=True)
class Block:
    """One fenced block of the section."""

    lang: str
    text: str
    line: int  # of the opening fence in README.md, 1-based
    marker: tuple[str, str] | None  # ("e2e", NAME) or ("file", PATH) from the comment right before it

    @property
    def where(self) -> str:
        return f"README.md:{self.line}"


@dataclass(frozen=True)
class Command:
    """One simple command of an ``sh`` block, as the shell splits it."""

    argv: tuple[str, ...]
    block: Block

    def __str__(self) -> str:
        return shlex.join(self.argv)


@dataclass
class Section:
    text: str  # everything between the markers
    prose: str  # the same without the fenced blocks
    blocks: list[Block]

    def commands(self) -> list[Command]:
        return [command for block in self.blocks if block.lang == "sh" for command in split_commands(block)]

    def e2e(self, name: str) -> Block:
        (block,) = [b for b in self.blocks if b.marker == ("e2e", name)]
        return block

    def files(self) -> dict[str, Block]:
        return {b.marker[1]: b for b in self.blocks if b.marker and b.marker[0] == "file"}


MARKER = re.compile(r"^<!--\s*(?P<kind>e2e|file):\s*(?P<value>\S+)\s*-->$")
FENCE = re.compile(r"^(?P<indent>\s*)(?P<fence>`{3,})(?P<lang>[\w-]*)\s*$")


def read_section(readme: Path = README) -> Section:
    lines = readme.read_text().splitlines()
    starts = [i for i, line in enumerate(lines) if line.strip() == SECTION_START]
    ends = [i for i, line in enumerate(lines) if line.strip() == SECTION_END]
    assert len(starts) == 1, f"README.md needs exactly one {SECTION_START}"
    assert len(ends) == 1, f"README.md needs exactly one {SECTION_END}"
    first, last = starts[0] + 1, ends[0]
    assert first < last, f"{SECTION_END} comes before {SECTION_START}"
    blocks: list[Block] = []
    prose: list[str] = []
    i = first
    while i < last:
        opening = FENCE.match(lines[i])
        if not opening:
            prose.append(lines[i])
            i += 1
            continue
        indent, fence, opened_at = opening["indent"], opening["fence"], i + 1
        previous = next((lines[j].strip() for j in range(i - 1, first - 1, -1) if lines[j].strip()), "")
        marker = MARKER.match(previous)
        body: list[str] = []
        i += 1
        while i < last and not re.fullmatch(re.escape(indent) + fence + r"`*\s*", lines[i]):
            body.append(lines[i].removeprefix(indent))
            i += 1
        assert i < last, f"README.md:{opened_at}: unclosed code block"
        kind_value = (marker["kind"], marker["value"]) if marker else None
        blocks.append(Block(opening["lang"], "\n".join(body) + "\n", opened_at, kind_value))
        i += 1
    return Section("\n".join(lines[first:last]), "\n".join(prose), blocks)


def split_commands(block: Block) -> list[Command]:
    """The simple commands of an ``sh`` block: continuation lines joined, comments dropped, and split at
    ``&&``, ``||``, ``;`` and ``|``."""
    logical: list[str] = []
    pending = ""
    for raw in block.text.splitlines():
        if raw.rstrip().endswith("\\"):
            pending += raw.rstrip()[:-1] + " "
            continue
        logical.append(pending + raw)
        pending = ""
    if pending:
        logical.append(pending)
    commands = []
    for line in logical:
        argv: list[str] = []
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        lexer.commenters = "#"
        for token in lexer:
            if token in ("&&", "||", ";", "|", "&"):
                if argv:
                    commands.append(Command(tuple(argv), block))
                argv = []
            else:
                argv.append(token)
        if argv:
            commands.append(Command(tuple(argv), block))
    return commands


@dataclass
class Parsed:
    """A command's positional arguments and its flags (every value of each)."""

    positional: list[str]
    flags: dict[str, list[str]] = field(default_factory=dict)

    def get(self, *names: str) -> str | None:
        values = [v for name in names for v in self.flags.get(name, [])]
        return values[-1] if values else None

    def all(self, *names: str) -> list[str]:
        return [v for name in names for v in self.flags.get(name, [])]


def parse_args(args: Sequence[str], value_flags: set[str]) -> Parsed:
    parsed = Parsed([])
    i = 0
    while i < len(args):
        token = args[i]
        if token.startswith("-") and token != "-":
            if "=" in token:
                name, value = token.split("=", 1)
            elif token in value_flags and i + 1 < len(args):
                name, value = token, args[i + 1]
                i += 1
            else:
                name, value = token, ""
            parsed.flags.setdefault(name, []).append(value)
        else:
            parsed.positional.append(token)
        i += 1
    return parsed


# -- chart values -------------------------------------------------------------------------------------


def chart_values() -> dict[str, Any]:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert isinstance(values, dict)
    return values


def split_value_key(key: str) -> list[str]:
    """``a.b[0].c`` -> ``["a", "b", "c"]``; a dot escaped with a backslash stays in its part."""
    return [re.sub(r"\[\d+\]$", "", part).replace("\\.", ".") for part in re.split(r"(?<!\\)\.", key)]


def value_key_exists(values: Mapping[str, Any], key: str) -> bool:
    """Whether ``key`` names a chart value: every part exists, except below a map or list that is empty
    by default (its keys are the user's, e.g. ``discovery.staticNodes.node-1``)."""
    node: Any = values
    for part in split_value_key(key):
        if isinstance(node, dict) and part in node:
            node = node[part]
            continue
        # Not a child of a map that has it: fine only below a user-filled map or list.
        return isinstance(node, (dict, list)) and not node
    return True


def value_at(values: Mapping[str, Any], key: str) -> Any:
    node: Any = values
    for part in split_value_key(key):
        node = node[part]
    return node


def set_flag_keys(flag: str, argument: str) -> list[str]:
    """The value keys one ``--set*`` argument names: ``a=1,b={x,y}`` -> ``["a", "b"]``; ``--set-json``
    takes one ``key=JSON``."""
    if flag == "--set-json":
        return [argument.split("=", 1)[0]]
    pieces, depth, current, escaped = [], 0, "", False
    for char in argument:
        if escaped:
            current += char
            escaped = False
        elif char == "\\":
            current += char
            escaped = True
        elif char in "{[":
            depth += 1
            current += char
        elif char in "}]":
            depth -= 1
            current += char
        elif char == "," and depth == 0:
            pieces.append(current)
            current = ""
        else:
            current += char
    pieces.append(current)
    return [piece.split("=", 1)[0] for piece in pieces if piece]


def values_table(section: Section) -> list[tuple[str, str]]:
    """(key, default) of every row of the tables whose first header cell is ``value``."""
    rows: list[tuple[str, str]] = []
    in_table = header = False
    for line in section.prose.splitlines():
        stripped = line.strip()
        if not stripped.startswith("|"):
            in_table = False
            continue
        cells = [cell.strip() for cell in stripped.strip("|").split("|")]
        if not in_table:
            in_table = cells[0] == "value"
            header = True
            continue
        if header:  # the |---| line
            header = False
            continue
        key, default = (re.fullmatch(r"`([^`]*)`", cell) for cell in cells[:2])
        assert key, f"values table: the key {cells[0]!r} is not one code span"
        assert default, f"values table: the default {cells[1]!r} of {key[1]} is not one code span"
        rows.append((key[1], default[1]))
    return rows


# -- the binaries and rendering ----------------------------------------------------------------------


def _load_k8s_binaries() -> ModuleType:
    name = "gadget_operator_tools_k8s_binaries"  # the name tests/packaging uses: one module either way
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, ROOT / "tools" / "k8s_binaries.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


k8s_binaries = _load_k8s_binaries()


@pytest.fixture(scope="module")
def binaries() -> dict[str, Path]:
    try:
        return dict(k8s_binaries.ensure())
    except k8s_binaries.UnsupportedPlatform as error:
        pytest.skip(str(error))
    except k8s_binaries.BinariesUnavailable as error:
        pytest.fail(str(error), pytrace=False)


def run_tool(command: Sequence[str | Path], *, env: Mapping[str, str] | None = None, what: str = "") -> str:
    result = subprocess.run(
        [str(c) for c in command], capture_output=True, text=True, cwd=ROOT, env=env, check=False, timeout=300
    )
    if result.returncode != 0:
        pytest.fail(
            f"{what}`{shlex.join(str(c) for c in command)}` exited with {result.returncode}:\n{result.stderr}",
            pytrace=False,
        )
    return result.stdout


def documents(text: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(text) if doc]


@dataclass
class Rendered:
    """What the section's install commands install, rendered offline."""

    by_command: dict[str, list[dict[str, Any]]]  # str(command) -> its objects
    helm_releases: set[tuple[str, str]]  # (release, namespace) of every helm install

    def objects(self) -> Iterator[dict[str, Any]]:
        for objects in self.by_command.values():
            yield from objects

    def has(self, kind: str, name: str, namespace: str | None) -> bool:
        return any(
            obj.get("kind") == kind
            and obj.get("metadata", {}).get("name") == name
            and (kind not in NAMESPACED_KINDS or obj["metadata"].get("namespace", "default") == namespace)
            for obj in self.objects()
        )


def local_kustomize_dir(target: str, files_root: Path, files: Mapping[str, Block]) -> Path:
    """The local directory a ``-k`` target stands for: this repository's directory for its URL, the directory
    of a README ``file:`` block, or a directory of the repository (which must be a kustomization)."""
    remote = REMOTE_TARGET.fullmatch(target)
    if remote:
        return ROOT / remote["path"]
    if any(Path(name).parent == Path(target) for name in files):
        return files_root / target
    directory = ROOT / target
    assert (directory / "kustomization.yaml").is_file(), f"kubectl -k {target}: no kustomization.yaml there"
    return directory


def write_file_blocks(files: Mapping[str, Block], root: Path) -> None:
    """Write the README's ``file:`` blocks under ``root``, this repository's URLs made local paths."""
    for name, block in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)

        def local(match: re.Match[str], directory: Path = path.parent) -> str:
            return os.path.relpath(ROOT / match["path"], directory)

        path.write_text(REMOTE_TARGET.sub(local, block.text))


def local_chart(parsed: Parsed) -> bool:
    """Whether a parsed ``helm install|upgrade|template RELEASE CHART`` names a chart of this repository."""
    return len(parsed.positional) >= 3 and (ROOT / parsed.positional[2]).is_dir()


def helm_template_command(helm: Path, parsed: Parsed) -> list[str | Path]:
    """``helm template`` with the arguments of a ``helm install|upgrade`` (the upgrade-only ones dropped)."""
    release, chart = parsed.positional[1:3]
    command: list[str | Path] = [helm, "template", release, chart, "--include-crds"]
    for name, values in parsed.flags.items():
        if name in HELM_UPGRADE_ONLY_FLAGS:
            continue
        for value in values:
            command.append(f"{name}={value}" if value or name in HELM_VALUE_FLAGS else name)
    return command


def render(section: Section, binaries: Mapping[str, Path], workdir: Path) -> Rendered:
    files = section.files()
    write_file_blocks(files, workdir)
    helm_env = {
        **os.environ,
        "HELM_CACHE_HOME": str(workdir / ".helm" / "cache"),
        "HELM_CONFIG_HOME": str(workdir / ".helm" / "config"),
        "HELM_DATA_HOME": str(workdir / ".helm" / "data"),
    }
    rendered = Rendered({}, set())
    for command in section.commands():
        argv = command.argv
        where = f"{command.block.where}: `{command}`: "
        if argv[0] == "kubectl":
            parsed = parse_args(argv[1:], KUBECTL_VALUE_FLAGS)
            target = parsed.get("-k", "--kustomize")
            if target is not None:
                directory = local_kustomize_dir(target, workdir, files)
                out = run_tool([binaries["kubectl"], "kustomize", directory], what=where)
                rendered.by_command[str(command)] = documents(out)
            local_files = [f for f in parsed.all("-f", "--filename") if not re.match(r"https?://", f)]
            if local_files:
                rendered.by_command[str(command)] = [o for f in local_files for o in applied_objects(ROOT / f)]
        elif argv[0] == "helm":
            parsed = parse_args(argv[1:], HELM_VALUE_FLAGS)
            # Only this repository's chart: not another project's (Inspektor Gadget's).
            if parsed.positional[:1] in (["install"], ["upgrade"], ["template"]) and local_chart(parsed):
                out = run_tool(helm_template_command(binaries["helm"], parsed), env=helm_env, what=where)
                rendered.by_command[str(command)] = documents(out)
                if parsed.positional[0] != "template":
                    namespace = parsed.get("-n", "--namespace") or "default"
                    rendered.helm_releases.add((parsed.positional[1], namespace))
    return rendered


def applied_objects(path: Path) -> list[dict[str, Any]]:
    """The objects ``kubectl apply -f path`` would send: a file, or a directory's .yaml/.yml/.json files."""
    assert path.exists(), f"kubectl apply -f {path.relative_to(ROOT)}: no such file or directory"
    files = sorted(p for p in path.iterdir() if p.suffix in (".yaml", ".yml", ".json")) if path.is_dir() else [path]
    objects = []
    for file in files:
        for obj in documents(file.read_text()):
            # kubectl -f sends every document to the API server: a Kustomization is not a Kubernetes object.
            assert not str(obj.get("apiVersion", "")).startswith("kustomize.config.k8s.io/"), (
                f"kubectl apply -f {path.relative_to(ROOT)}: {file.relative_to(ROOT)} is a kustomization, which"
                " kubectl -f cannot apply (use -k, or name the manifest)"
            )
            objects.append(obj)
    return objects


@pytest.fixture(scope="module")
def section() -> Section:
    return read_section()


@pytest.fixture(scope="module")
def rendered(section: Section, binaries: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Rendered:
    return render(section, binaries, tmp_path_factory.mktemp("readme-install"))


# -- offline checks -----------------------------------------------------------------------------------


def test_the_section_marks_the_blocks_the_e2e_tests_run(section: Section) -> None:
    marked = [b.marker[1] for b in section.blocks if b.marker and b.marker[0] == "e2e"]
    assert sorted(marked) == sorted(E2E_BLOCKS), "every e2e block exactly once, and no other"
    for name in E2E_BLOCKS:
        block = section.e2e(name)
        assert block.lang == "sh", f"{block.where}: e2e: {name} must be an ```sh block"
        assert split_commands(block), f"{block.where}: e2e: {name} holds no command"
    for name, block in section.files().items():
        assert block.lang == "yaml", f"{block.where}: file: {name} must be a ```yaml block"
        assert not Path(name).is_absolute()
        assert ".." not in Path(name).parts
    assert [b.lang for b in section.blocks if b.lang not in ("sh", "yaml", "console")] == []


def repository_paths(text: str) -> set[str]:
    """Every ``dir/...`` in the text whose first part is a top-level directory of the repository (also as
    ``./dir/...``; not inside URLs)."""
    top = sorted(p.name for p in ROOT.iterdir() if p.is_dir() and not p.name.startswith("."))
    pattern = re.compile(r"(?:(?<=\./)|(?<![\w:/.-]))((?:" + "|".join(map(re.escape, top)) + r")/[\w./-]*)")
    return {match.rstrip(".") for match in pattern.findall(text)}


def test_every_path_the_section_names_exists(section: Section) -> None:
    paths = repository_paths(section.text)
    assert {"manifests/base", "charts/gadget-operator", "examples/trace-exec-all-nodes.yaml"} <= paths
    missing = sorted(path for path in paths if not (ROOT / path).exists())
    assert missing == [], f"README install section names paths that do not exist: {missing}"
    for match in REMOTE_TARGET.finditer(section.text):
        assert (ROOT / match["path"]).is_dir(), f"{match[0]}: no directory {match['path']} here"


def test_every_release_the_section_pins_is_the_charts(section: Section) -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    version = chart["appVersion"]
    assert chart["version"] == version
    found = re.findall(r"(?<![\w.])v?(\d+\.\d+\.\d+)(?![\w.])", section.text)
    assert found, "the section pins no release"
    assert set(found) == {version}, f"the section pins {sorted(set(found))}, the chart is {version}"
    refs = {m["ref"] for m in REMOTE_TARGET.finditer(section.text)}
    assert refs == {f"v{version}"}


def test_the_values_table_matches_values_yaml(section: Section) -> None:
    values = chart_values()
    rows = values_table(section)
    keys = [key for key, _ in rows]
    for key in ("discovery.mode", "discovery.transport", "watchNamespaces", "replicaCount"):
        assert key in keys, f"the values table misses {key}"
    assert {"metrics.serviceMonitor.enabled", "tls.existingSecret"} <= set(keys)
    assert len(keys) == len(set(keys)), "a value appears twice in the table"
    for key, default in rows:
        assert value_key_exists(values, key), f"values table: {key} is not in charts/gadget-operator/values.yaml"
        assert yaml.safe_load(default) == value_at(values, key), (
            f"values table: {key} defaults to {value_at(values, key)!r} in values.yaml, not {default}"
        )


def test_every_set_flag_names_a_chart_value(section: Section) -> None:
    values = chart_values()
    seen = []
    for command in section.commands():
        if command.argv[0] != "helm":
            continue
        parsed = parse_args(command.argv[1:], HELM_VALUE_FLAGS)
        if not local_chart(parsed):
            continue
        for flag in HELM_SET_FLAGS:
            for argument in parsed.all(flag):
                for key in set_flag_keys(flag, argument):
                    seen.append(key)
                    assert value_key_exists(values, key), (
                        f"{command.block.where}: `{command}`: {key} is not in charts/gadget-operator/values.yaml"
                    )
    assert {"replicaCount", "discovery.mode", "tls.existingSecret"} <= set(seen)


def test_the_install_commands_render(section: Section, rendered: Rendered) -> None:
    kustomize, helm = [], []
    for command in section.commands():
        if command.argv[0] == "kubectl" and parse_args(command.argv[1:], KUBECTL_VALUE_FLAGS).get("-k", "--kustomize"):
            kustomize.append(str(command))
        parsed = parse_args(command.argv[1:], HELM_VALUE_FLAGS)
        if command.argv[0] == "helm" and parsed.positional[:1] in (["install"], ["upgrade"]) and local_chart(parsed):
            helm.append(str(command))
    assert kustomize, "no `kubectl apply -k` in the section"
    assert helm, "no `helm install` of the chart in the section"
    for command in kustomize + helm:
        assert command in rendered.by_command, f"not rendered: {command}"
        deployments = [o for o in rendered.by_command[command] if o["kind"] == "Deployment"]
        crds = [o for o in rendered.by_command[command] if o["kind"] == "CustomResourceDefinition"]
        assert len(deployments) == 1, f"`{command}` installs {len(deployments)} operator Deployments"
        names = sorted(c["metadata"]["name"] for c in crds)
        assert names == [CLUSTER_CRD_NAME, CRD_NAME], f"`{command}` does not install both CRDs"
        for container in deployments[0]["spec"]["template"]["spec"]["containers"]:
            names = {env["name"] for env in container.get("env", [])}
            unknown = {n for n in names if n.startswith(f"{cli.ENV_PREFIX}_")} - RUN_FLAG_ENV
            assert not unknown, f"`{command}`: not `gadget-operator run` flags: {sorted(unknown)}"


def test_the_e2e_blocks_install_what_they_verify(section: Section, rendered: Rendered) -> None:
    for install in ("kustomize-install", "helm-install"):
        (command,) = split_commands(section.e2e(install))
        objects = rendered.by_command[str(command)]
        names = {(o["kind"], o["metadata"]["name"], o["metadata"].get("namespace")) for o in objects}
        assert ("Deployment", "gadget-operator", RELEASE_NAMESPACE) in names, install
        assert ("CustomResourceDefinition", CRD_NAME, None) in names, install
        assert ("CustomResourceDefinition", CLUSTER_CRD_NAME, None) in names, install
    # The kubectl uninstall removes exactly what the kubectl install applied.
    (install,) = split_commands(section.e2e("kustomize-install"))
    (uninstall,) = split_commands(section.e2e("kustomize-uninstall"))
    assert rendered.by_command[str(install)] == rendered.by_command[str(uninstall)]


def object_references(parsed: Parsed) -> Iterator[tuple[str, str]]:
    """(kind, name) of the objects a kubectl command names: ``kind/name`` arguments, or ``kind name``."""
    arguments = parsed.positional[1:]
    if parsed.positional[:2] in (["rollout", "status"], ["rollout", "restart"]):
        arguments = parsed.positional[2:]
    slashed = False
    for argument in arguments:
        kind, sep, name = argument.partition("/")
        if sep and kind.lower() in KINDS:
            slashed = True
            yield KINDS[kind.lower()], name
    if not slashed and len(arguments) >= 2 and arguments[0].lower() in KINDS:
        for name in arguments[1:]:
            yield KINDS[arguments[0].lower()], name


def test_the_commands_name_what_the_section_installs(section: Section, rendered: Rendered) -> None:
    checked = set()
    for command in section.commands():
        argv = command.argv
        where = f"{command.block.where}: `{command}`"
        if argv[0] == "helm":
            parsed = parse_args(argv[1:], HELM_VALUE_FLAGS)
            if parsed.positional[:1] == ["uninstall"]:
                release = (parsed.positional[1], parsed.get("-n", "--namespace") or "default")
                assert release in rendered.helm_releases, f"{where}: no helm install of {release}"
                checked.add("helm release")
            continue
        if argv[0] != "kubectl" or len(argv) < 2:
            continue
        parsed = parse_args(argv[1:], KUBECTL_VALUE_FLAGS)
        if not parsed.positional or parsed.positional[0] in ("gadget", "create", "apply", "kustomize"):
            if parsed.positional[:3] == ["create", "secret", "generic"]:
                check_secret(parsed, rendered, command.block, where)
                checked.add("secret")
            continue
        namespace = parsed.get("-n", "--namespace") or "default"
        for kind, name in object_references(parsed):
            assert rendered.has(kind, name, namespace), f"{where}: the section installs no {kind} {namespace}/{name}"
            checked.add(kind)
        patch = parsed.get("-p", "--patch")
        if parsed.positional[0] == "patch" and patch is not None:
            check_patch(parsed, patch, rendered, where)
            checked.add("patch")
        for patch_file in parsed.all("--patch-file"):
            assert documents((ROOT / patch_file).read_text()), f"{where}: {patch_file} is empty"
    assert checked >= {"Deployment", "CustomResourceDefinition", "GadgetInstance", "Namespace", "secret", "patch"}
    assert "helm release" in checked


def check_secret(parsed: Parsed, rendered: Rendered, block: Block, where: str) -> None:
    """A Secret the section creates is mounted by the operator Deployment installed next to it (in the same
    block; else by any the section installs) in its namespace, with every key the operator reads from it."""
    name = parsed.positional[3]
    namespace = parsed.get("-n", "--namespace") or "default"
    keys = {spec.split("=", 1)[0] for spec in parsed.all("--from-file") if "=" in spec}
    nearby = [obj for command in split_commands(block) for obj in rendered.by_command.get(str(command), [])]
    candidates = nearby if any(obj["kind"] == "Deployment" for obj in nearby) else list(rendered.objects())
    users = []
    for obj in candidates:
        if obj["kind"] != "Deployment" or obj["metadata"].get("namespace") != namespace:
            continue
        pod = obj["spec"]["template"]["spec"]
        volumes = {v["name"] for v in pod.get("volumes", []) if v.get("secret", {}).get("secretName") == name}
        if not volumes:
            continue
        users.append(obj)
        for container in pod["containers"]:
            mounts = [m["mountPath"] for m in container.get("volumeMounts", []) if m["name"] in volumes]
            for env in container.get("env", []):
                value = str(env.get("value", ""))
                for mount in mounts:
                    if value.startswith(mount.rstrip("/") + "/"):
                        key = value[len(mount.rstrip("/")) + 1 :]
                        assert key in keys, f"{where}: the operator reads key {key} ({env['name']}), not created"
    assert users, f"{where}: no Deployment the section installs in {namespace} mounts Secret {name}"


def check_patch(parsed: Parsed, patch: str, rendered: Rendered, where: str) -> None:
    """A JSON patch the section applies to a GadgetInstance applies, and releases the finalizer."""
    assert parsed.get("--type") == "json", f"{where}: only JSON patches are checked here"
    operations = json.loads(patch)
    (kind, name), *_ = object_references(parsed)
    namespace = parsed.get("-n", "--namespace") or "default"
    (target,) = [
        o
        for o in rendered.objects()
        if o["kind"] == kind and o["metadata"]["name"] == name and o["metadata"].get("namespace") == namespace
    ]
    held = copy.deepcopy(target)
    held["metadata"]["finalizers"] = [gi_resource.FINALIZER]
    released = jsonpatch.apply_patch(held, operations)
    assert "finalizers" not in released["metadata"], f"{where}: the patch leaves the finalizer"


def yaml_objects(section: Section) -> Iterator[tuple[Block, Any]]:
    for block in section.blocks:
        if block.lang == "yaml":
            for doc in yaml.safe_load_all(block.text):
                yield block, doc


def walk(node: Any) -> Iterator[Mapping[str, Any]]:
    if isinstance(node, Mapping):
        yield node
        for value in node.values():
            yield from walk(value)
    elif isinstance(node, list):
        for item in node:
            yield from walk(item)


def test_the_gitops_snippets_name_the_real_resource(section: Section) -> None:
    crd = yaml.safe_load(CRD_FILE.read_text())
    group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
    served = {f"{group}/{v['name']}" for v in crd["spec"]["versions"] if v["served"]}
    references = 0
    for block, doc in yaml_objects(section):
        assert doc is not None, f"{block.where}: an empty YAML document"
        for node in walk(doc):
            api_version = node.get("apiVersion")
            if isinstance(api_version, str) and api_version.startswith(f"{group}/"):
                assert api_version in served, f"{block.where}: {api_version} is not served by the CRD"
                assert node.get("kind") == kind, f"{block.where}: {group} has no kind {node.get('kind')}"
                references += 1
    assert references, "no YAML snippet of the section refers to a GadgetInstance"
    # The short name, the finalizer and the Argo CD key the prose names are the real ones.
    assert "gi" in crd["spec"]["names"]["shortNames"]
    assert gi_resource.FINALIZER in section.prose
    (argocd_key,) = re.findall(r"resource\.customizations\.health\.[\w.-]+", section.prose)
    assert argocd_key == f"resource.customizations.health.{group}_{kind}"
    assert argocd_key in yaml.safe_load(ARGOCD_PATCH.read_text())["data"]


def test_the_file_blocks_are_used_and_render(section: Section, rendered: Rendered) -> None:
    files = section.files()
    assert files, "the section shows no overlay of one's own"
    for name in files:
        users = [c for c in rendered.by_command if re.search(rf"-k\s+{re.escape(str(Path(name).parent))}\b", c)]
        assert users, f"file: {name}: no command of the section applies it"
        for command in users:
            (deployment,) = [o for o in rendered.by_command[command] if o["kind"] == "Deployment"]
            env = {e["name"]: e.get("value") for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
            assert env.get("GADGET_OPERATOR_NAMESPACES") == "team-a,team-b", "the overlay's patch did not apply"


# -- end to end ---------------------------------------------------------------------------------------


@dataclass
class Cluster:
    env: dict[str, str]
    section: Section
    has_ig: bool

    def run(self, *argv: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            list(argv), capture_output=True, text=True, cwd=ROOT, env=self.env, check=False, timeout=timeout
        )
        if check and result.returncode != 0:
            pytest.fail(f"`{shlex.join(argv)}` exited with {result.returncode}:\n{result.stderr}", pytrace=False)
        return result

    def exists(self, *argv: str) -> bool:
        result = self.run("kubectl", "get", *argv, check=False)
        if result.returncode == 0:
            return True
        assert "NotFound" in result.stderr or "not found" in result.stderr, result.stderr
        return False

    def run_block(self, name: str) -> str:
        """Run the README's ``e2e: name`` block as written, with bash."""
        block = self.section.e2e(name)
        bash = shutil.which("bash", path=self.env["PATH"])
        assert bash, "bash is needed to run the README's blocks"
        try:
            result = subprocess.run(
                [bash, "--noprofile", "--norc", "-euxo", "pipefail", "-c", block.text],
                capture_output=True,
                text=True,
                cwd=ROOT,
                env=self.env,
                check=False,
                timeout=900,
            )
        except subprocess.TimeoutExpired as error:
            pytest.fail(f"README block e2e: {name} ({block.where}) timed out:\n{error.stderr}", pytrace=False)
        if result.returncode != 0:
            pytest.fail(
                f"README block e2e: {name} ({block.where}) exited with {result.returncode}:\n"
                f"--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}",
                pytrace=False,
            )
        return result.stdout

    def gadget_instances(self) -> list[str]:
        if not self.exists("crd", CRD_NAME):
            return []
        items = json.loads(self.run("kubectl", "get", "gi", "-A", "-o", "json").stdout)["items"]
        return [f"{item['metadata']['namespace']}/{item['metadata']['name']}" for item in items]

    def assert_running(self) -> None:
        crd = json.loads(self.run("kubectl", "get", "crd", CRD_NAME, "-o", "json").stdout)
        established = [c for c in crd["status"]["conditions"] if c["type"] == "Established"]
        assert [c["status"] for c in established] == ["True"]
        deployment = json.loads(
            self.run("kubectl", "-n", RELEASE_NAMESPACE, "get", "deployment", "gadget-operator", "-o", "json").stdout
        )
        assert deployment["status"].get("availableReplicas", 0) >= 1

    def cleanup(self) -> None:
        """Best effort, after a failure: leave the cluster as the test found it."""
        if self.exists("crd", CRD_NAME):
            self.run("kubectl", "delete", "gi", "--all", "-A", "--timeout=120s", check=False)
            for item in self.gadget_instances():
                namespace, name = item.split("/", 1)
                patch = '[{"op":"remove","path":"/metadata/finalizers"}]'
                self.run("kubectl", "-n", namespace, "patch", "gi", name, "--type=json", f"-p={patch}", check=False)
        self.run("helm", "uninstall", "gadget-operator", "--namespace", RELEASE_NAMESPACE, check=False)
        self.run("kubectl", "delete", "-k", "manifests/base", "--ignore-not-found", "--timeout=300s", check=False)
        if self.exists("crd", CLUSTER_CRD_NAME):
            self.run("kubectl", "delete", "cgi", "--all", "--timeout=120s", check=False)
        self.run("kubectl", "delete", "crd", CRD_NAME, CLUSTER_CRD_NAME, "--ignore-not-found", check=False)
        self.run("kubectl", "delete", "namespace", RELEASE_NAMESPACE, "--ignore-not-found", check=False)


@pytest.fixture(scope="module")
def cluster(section: Section, binaries: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    assert E2E_KUBECONFIG
    home = tmp_path_factory.mktemp("helm-home")
    bin_dirs = {str(path.parent) for path in binaries.values()}
    env = {
        **os.environ,
        "PATH": os.pathsep.join([*sorted(bin_dirs), os.environ.get("PATH", "")]),
        "KUBECONFIG": E2E_KUBECONFIG,
        "HELM_CACHE_HOME": str(home / "cache"),
        "HELM_CONFIG_HOME": str(home / "config"),
        "HELM_DATA_HOME": str(home / "data"),
    }
    probe = Cluster(env, section, has_ig=False)
    probe.run("kubectl", "version")
    if probe.exists("namespace", RELEASE_NAMESPACE):
        pytest.fail(f"the cluster already has namespace {RELEASE_NAMESPACE}: this test installs gadget-operator itself")
    if instances := probe.gadget_instances():
        pytest.fail(f"the cluster holds GadgetInstances, which the README's uninstall deletes: {instances}")
    created_daemon_namespace = False
    if not probe.exists("namespace", DAEMON_NAMESPACE):
        probe.run("kubectl", "create", "namespace", DAEMON_NAMESPACE)
        created_daemon_namespace = True
    has_ig = probe.exists("-n", DAEMON_NAMESPACE, "daemonset", "gadget")
    try:
        yield Cluster(env, section, has_ig)
    finally:
        if created_daemon_namespace:
            probe.run("kubectl", "delete", "namespace", DAEMON_NAMESPACE, "--ignore-not-found", check=False)


needs_cluster = pytest.mark.skipif(not E2E_KUBECONFIG, reason="needs a real cluster: set GADGET_E2E_KUBECONFIG")


@pytest.mark.e2e
@needs_cluster
@pytest.mark.timeout(1800)
def test_e2e_install_and_uninstall_with_kubectl(cluster: Cluster) -> None:
    try:
        cluster.run_block("kustomize-install")
        cluster.run_block("verify")
        cluster.assert_running()
        if cluster.has_ig:
            cluster.run_block("first-instance")
        cluster.run_block("delete-instances")
        assert cluster.gadget_instances() == []
        cluster.run_block("kustomize-uninstall")
        assert not cluster.exists("namespace", RELEASE_NAMESPACE)
        assert not cluster.exists("crd", CRD_NAME)
        assert not cluster.exists("crd", CLUSTER_CRD_NAME)
        assert not cluster.exists("-n", DAEMON_NAMESPACE, "role", "gadget-operator-daemon-pods")
    finally:
        cluster.cleanup()


@pytest.mark.e2e
@needs_cluster
@pytest.mark.timeout(1800)
def test_e2e_install_and_uninstall_with_helm(cluster: Cluster) -> None:
    try:
        cluster.run_block("helm-install")
        cluster.run_block("verify")
        cluster.assert_running()
        if cluster.has_ig:
            cluster.run_block("first-instance")
        cluster.run_block("delete-instances")
        assert cluster.gadget_instances() == []
        cluster.run_block("helm-uninstall")
        assert not cluster.exists("-n", RELEASE_NAMESPACE, "deployment", "gadget-operator")
        assert cluster.exists("crd", CRD_NAME), "the README says Helm keeps the CRD"
        cluster.run_block("helm-cleanup")
        assert not cluster.exists("namespace", RELEASE_NAMESPACE)
        assert not cluster.exists("crd", CRD_NAME)
        assert not cluster.exists("crd", CLUSTER_CRD_NAME)
    finally:
        cluster.cleanup()
