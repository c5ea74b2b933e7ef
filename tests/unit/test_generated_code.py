"""The committed protobuf/gRPC code in `libs/kairos/v1/` is exactly what `make proto` generates.

This is the CI guard against editing a `.proto` without regenerating (or hand-editing generated code): the
protos are compiled into a temporary directory with the pinned grpcio-tools and compared byte for byte.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from kairos.devtools import protogen

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = ROOT / "libs" / "kairos" / "v1"
IGNORED_PARTS = {"__pycache__"}


def _files(directory: Path) -> dict[str, bytes]:
    return {
        path.relative_to(directory).as_posix(): path.read_bytes()
        for path in sorted(directory.rglob("*"))
        if path.is_file() and not IGNORED_PARTS.intersection(path.parts) and path.suffix != ".pyc"
    }


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    output_root = tmp_path_factory.mktemp("protogen")
    protogen.generate(output_root)
    return _files(output_root / "kairos" / "v1")


def test_every_proto_is_compiled() -> None:
    protos = protogen.proto_files()
    assert protos, "no .proto files found under protos/kairos/v1"
    committed = _files(COMMITTED)
    for proto in protos:
        stem = proto.stem
        for suffix in ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py", "_pb2_grpc.pyi"):
            assert f"{stem}{suffix}" in committed, f"{proto.name} has no committed {stem}{suffix}; run `make proto`"


def test_regenerated_file_set_matches_committed(generated: dict[str, bytes]) -> None:
    committed = _files(COMMITTED)
    missing = sorted(set(generated) - set(committed))
    stale = sorted(set(committed) - set(generated))
    assert not missing, f"generated files not committed (run `make proto`): {missing}"
    assert not stale, f"committed files that `make proto` no longer generates: {stale}"


def test_regenerated_files_are_byte_identical(generated: dict[str, bytes]) -> None:
    committed = _files(COMMITTED)
    differing = sorted(name for name in generated.keys() & committed.keys() if generated[name] != committed[name])
    assert not differing, f"libs/kairos/v1 is out of date with protos/ (run `make proto`): {differing}"


def test_every_generated_python_module_says_do_not_edit(generated: dict[str, bytes]) -> None:
    python_files = {name: content for name, content in generated.items() if name.endswith(".py")}
    assert "__init__.py" in python_files
    for name, content in python_files.items():
        head = content[:400].decode().lower()
        assert "generated" in head and "do not edit" in head, f"{name} lacks a generated / DO NOT EDIT header"
    for name, content in _files(COMMITTED).items():
        if name.endswith(".py"):
            head = content[:400].decode().lower()
            assert "generated" in head and "do not edit" in head, f"committed {name} lacks the header"
