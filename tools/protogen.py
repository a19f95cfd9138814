"""Generate the Python gRPC stubs from proto/, or check that they are current.

    python tools/protogen.py          # write operator/gadget_operator/daemon/pb/
    python tools/protogen.py --check  # exit 1 if what is committed differs

The proto file is mapped onto the package path (`-Igadget_operator/daemon/pb=proto/api`)
so that the generated modules import each other by their package name, with no
post-processing.
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE_PATH = "gadget_operator/daemon/pb"
TARGET = ROOT / "operator" / PACKAGE_PATH
GENERATED = ("api_pb2.py", "api_pb2.pyi", "api_pb2_grpc.py", "api_pb2_grpc.pyi")


def generate(out_root: Path) -> None:
    bindir = Path(sys.executable).parent
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{PACKAGE_PATH}=proto/api",
            f"--python_out={out_root}",
            f"--pyi_out={out_root}",
            f"--grpc_python_out={out_root}",
            f"--mypy_grpc_out={out_root}",
            f"--plugin=protoc-gen-mypy_grpc={bindir / 'protoc-gen-mypy_grpc'}",
            "proto/api/api.proto",
        ],
        cwd=ROOT,
        check=True,
        stdout=subprocess.DEVNULL,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the committed stubs are stale")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp))
        fresh = Path(tmp) / PACKAGE_PATH
        if args.check:
            stale = [
                name
                for name in GENERATED
                if not (TARGET / name).exists() or not filecmp.cmp(fresh / name, TARGET / name, shallow=False)
            ]
            if stale:
                print(f"stale generated stubs: {', '.join(stale)}; run `make proto` and commit", file=sys.stderr)
                return 1
            print("generated stubs are current")
            return 0
        TARGET.mkdir(parents=True, exist_ok=True)
        for name in GENERATED:
            shutil.copyfile(fresh / name, TARGET / name)
        print(f"wrote {', '.join(GENERATED)} to {TARGET.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
