"""Generates gen/python from protos/: messages, gRPC stubs and typed .pyi stubs.

Usage: ``python scripts/gen_proto.py [--check] [--out DIR]``. With ``--check`` the code is generated
into a temporary folder and compared with gen/python; any difference is reported and exits 1, so CI
fails when someone changed a contract without regenerating.
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import sys
import tempfile
from importlib import resources
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
GEN = ROOT / "gen" / "python"


def generate(out: Path) -> None:
    """Runs protoc with the Python, gRPC and mypy plugins over every .proto file into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    files = sorted(str(p.relative_to(PROTOS)) for p in PROTOS.rglob("*.proto"))
    well_known = str(resources.files("grpc_tools") / "_proto")
    plugin_dir = Path(sys.executable).parent
    args = [
        "grpc_tools.protoc",
        f"-I{PROTOS}",
        f"-I{well_known}",
        f"--plugin=protoc-gen-mypy={plugin_dir / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={plugin_dir / 'protoc-gen-mypy_grpc'}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        f"--mypy_out=quiet:{out}",
        f"--mypy_grpc_out=quiet:{out}",
        *files,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    # PEP 561 marker so mypy reads the generated .pyi files.
    for pkg in {p.parent for p in out.rglob("*_pb2.py")}:
        (pkg / "py.typed").touch()


def _differences(a: Path, b: Path) -> list[str]:
    cmp = filecmp.dircmp(a, b, ignore=["__pycache__"])
    diffs = [f"only in gen/python: {x}" for x in cmp.left_only]
    diffs += [f"missing from gen/python: {x}" for x in cmp.right_only]
    diffs += [f"stale: {x}" for x in cmp.diff_files]
    for sub in cmp.common_dirs:
        diffs += [f"{sub}/{d}" for d in _differences(a / sub, b / sub)]
    return diffs


def main() -> int:
    """Entry point: regenerates gen/python, or checks it with ``--check``."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail when gen/python is stale")
    opts = parser.parse_args()
    if opts.check:
        with tempfile.TemporaryDirectory() as tmp:
            generate(Path(tmp))
            diffs = _differences(GEN, Path(tmp)) if GEN.exists() else ["gen/python is missing"]
        if diffs:
            print("gen/python is stale; run `make proto`:", *diffs, sep="\n  ", file=sys.stderr)
            return 1
        print("gen/python is up to date")
        return 0
    if GEN.exists():
        shutil.rmtree(GEN)
    generate(GEN)
    print(f"generated {sum(1 for _ in GEN.rglob('*.py'))} modules into {GEN.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
