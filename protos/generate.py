"""Regenerate the Python code for protos/microstack_api/v1/*.proto.

Run from anywhere: ``python protos/generate.py [--out DIR]``. The generated
``*_pb2.py``, ``*_pb2.pyi`` and ``*_pb2_grpc.py`` are committed beside the
``.proto`` files and never edited by hand; tests/unit/test_protos_fresh.py
regenerates into a temporary folder and fails if they are stale.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def generate(out: Path) -> None:
    import grpc_tools
    from grpc_tools import protoc  # heavy; only needed here

    include = Path(grpc_tools.__file__).resolve().parent / "_proto"
    protos = sorted(str(p.relative_to(HERE)) for p in (HERE / "microstack_api").rglob("*.proto"))
    out.mkdir(parents=True, exist_ok=True)
    args = [
        "protoc",
        f"-I{HERE}",
        f"-I{include}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        *protos,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE, help="output root (default: protos/)")
    generate(parser.parse_args().out)


if __name__ == "__main__":
    sys.exit(main())
