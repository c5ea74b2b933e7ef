"""Generates the Python code for `protos/` into `libs/` with the pinned grpcio-tools (`make proto`)."""

from __future__ import annotations

import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[3]
PROTO_ROOT = REPO_ROOT / "protos"
OUTPUT_ROOT = REPO_ROOT / "libs"
PACKAGE_DIR = Path("kairos") / "v1"


def proto_files() -> list[Path]:
    return sorted((PROTO_ROOT / PACKAGE_DIR).glob("*.proto"))


def generate(output_root: Path) -> None:
    """Compiles every proto into `output_root/kairos/v1` (messages, gRPC stubs and .pyi stubs)."""
    import grpc_tools
    from grpc_tools import protoc

    package_out = output_root / PACKAGE_DIR
    package_out.mkdir(parents=True, exist_ok=True)
    for stale in package_out.glob("*_pb2*"):
        stale.unlink()
    well_known = Path(grpc_tools.__file__).parent / "_proto"
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"-I{well_known}",
        f"--python_out={output_root}",
        f"--pyi_out={output_root}",
        f"--grpc_python_out={output_root}",
        f"--plugin=protoc-gen-mypy_grpc={Path(sys.executable).parent / 'protoc-gen-mypy_grpc'}",
        f"--mypy_grpc_out={output_root}",
        *(str(path.relative_to(PROTO_ROOT)) for path in proto_files()),
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    init = package_out / "__init__.py"
    init.write_text('"""Generated protobuf and gRPC code for kairos.v1 (`make proto`). Do not edit."""\n')


def main() -> None:
    generate(Path(sys.argv[1]) if len(sys.argv) > 1 else OUTPUT_ROOT)


if __name__ == "__main__":
    main()
