"""Generate the Python gRPC stubs from proto/, or check that they are current.

    python tools/protogen.py          # write every target below
    python tools/protogen.py --check  # exit 1 if what is committed differs

Two sets of stubs: the Inspektor Gadget wire protocol (``proto/api`` into
``operator/gadget_operator/daemon/pb/``) and the operator's own control API (``proto/control/v1`` into
``operator/gadget_operator/control/pb/``). Each proto directory is mapped onto its package path (e.g.
``-Igadget_operator/daemon/pb=proto/api``) so that the generated modules import each other by their
package name, with no post-processing; ``google/protobuf/*.proto`` come from grpc_tools' bundled
includes (``python -m grpc_tools.protoc`` adds them).
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Stubs:
    """One .proto file and where its generated modules live."""

    package_path: str
    """The package the modules import each other by, e.g. ``gadget_operator/daemon/pb``."""
    proto_dir: str
    """The directory of the .proto file, relative to the repository."""
    name: str
    """The .proto file's name without its suffix."""

    @property
    def target(self) -> Path:
        return ROOT / "operator" / self.package_path

    @property
    def generated(self) -> tuple[str, ...]:
        return tuple(f"{self.name}{suffix}" for suffix in ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py", "_pb2_grpc.pyi"))


STUBS = (
    Stubs("gadget_operator/daemon/pb", "proto/api", "api"),
    Stubs("gadget_operator/control/pb", "proto/control/v1", "control"),
)


def generate(stubs: Stubs, out_root: Path) -> None:
    bindir = Path(sys.executable).parent
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{stubs.package_path}={stubs.proto_dir}",
            f"--python_out={out_root}",
            f"--pyi_out={out_root}",
            f"--grpc_python_out={out_root}",
            f"--mypy_grpc_out={out_root}",
            f"--plugin=protoc-gen-mypy_grpc={bindir / 'protoc-gen-mypy_grpc'}",
            f"{stubs.proto_dir}/{stubs.name}.proto",
        ],
        cwd=ROOT,
        check=True,
        stdout=subprocess.DEVNULL,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the committed stubs are stale")
    args = parser.parse_args()
    stale: list[str] = []
    for stubs in STUBS:
        with tempfile.TemporaryDirectory() as tmp:
            generate(stubs, Path(tmp))
            fresh = Path(tmp) / stubs.package_path
            if args.check:
                stale += [
                    f"{stubs.package_path}/{name}"
                    for name in stubs.generated
                    if not (stubs.target / name).exists()
                    or not filecmp.cmp(fresh / name, stubs.target / name, shallow=False)
                ]
                continue
            stubs.target.mkdir(parents=True, exist_ok=True)
            for name in stubs.generated:
                shutil.copyfile(fresh / name, stubs.target / name)
            print(f"wrote {', '.join(stubs.generated)} to {stubs.target.relative_to(ROOT)}")
    if args.check:
        if stale:
            print(f"stale generated stubs: {', '.join(stale)}; run `make proto` and commit", file=sys.stderr)
            return 1
        print("generated stubs are current")
    return 0


if __name__ == "__main__":
    sys.exit(main())
