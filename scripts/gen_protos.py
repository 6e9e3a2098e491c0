#!/usr/bin/env python3
"""Generate the Python code and mypy stubs for ``proto/meshd/v1`` (``--check``: verify only).

The same modules go into ``meshd/api/v1/`` (the daemon) and
``clients/python/meshd_client/v1/`` (the client package). protoc writes imports as
``from meshd.v1 import x_pb2``, a package that exists in neither place, so they are
rewritten to relative imports; that keeps both copies byte-identical.
"""

from __future__ import annotations

import argparse
import filecmp
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto"
PROTO_PKG = "meshd/v1"
TARGETS = (ROOT / "meshd" / "api" / "v1", ROOT / "clients" / "python" / "meshd_client" / "v1")
_GENERATED = re.compile(r".*_pb2(_grpc)?\.pyi?$")
_IMPORT = re.compile(r"^from meshd\.v1 import ", re.MULTILINE)
_INIT = '"""Generated from proto/meshd/v1 by scripts/gen_protos.py; do not edit."""\n'
# grpc ships no type stubs (mypy sees it as Any), so mypy-protobuf's ignores and overloads
# for the aio/sync variants look redundant to mypy: silence exactly those two codes.
_GRPC_STUB_HEADER = '# mypy: disable-error-code="unused-ignore,overload-cannot-match"\n'


def generate(out: Path) -> None:
    """Run protoc (from grpcio-tools) for every proto into ``out`` (flat, relative imports)."""
    sources = (PROTO_ROOT / PROTO_PKG).glob("*.proto")
    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in sources)
    if not protos:
        raise SystemExit(f"gen_protos: no .proto files under {PROTO_ROOT / PROTO_PKG}")
    with tempfile.TemporaryDirectory() as raw:
        cmd = [
            sys.executable, "-m", "grpc_tools.protoc", f"-I{PROTO_ROOT}",
            f"--python_out={raw}", f"--grpc_python_out={raw}",
            f"--mypy_out={raw}", f"--mypy_grpc_out={raw}", *protos,
        ]  # fmt: skip
        result = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise SystemExit(f"gen_protos: protoc failed:\n{result.stderr}")
        out.mkdir(parents=True, exist_ok=True)
        for src in sorted((Path(raw) / PROTO_PKG).iterdir()):
            text = _IMPORT.sub("from . import ", src.read_text())
            if src.name.endswith("_grpc.pyi"):
                text = _GRPC_STUB_HEADER + text
            (out / src.name).write_text(text)
    (out / "__init__.py").write_text(_INIT)


def differences(expected: Path, actual: Path) -> list[str]:
    """Names of generated files that differ, are missing, or are stale in ``actual``."""
    def names(d: Path) -> set[str]:
        if not d.is_dir():
            return set()
        return {p.name for p in d.iterdir() if _GENERATED.match(p.name) or p.name == "__init__.py"}

    want, have = names(expected), names(actual)
    diffs = [f"missing {actual / n}" for n in sorted(want - have)]
    diffs += [f"stale {actual / n}" for n in sorted(have - want)]
    diffs += [
        f"differs {actual / n}"
        for n in sorted(want & have)
        if not filecmp.cmp(expected / n, actual / n, shallow=False)
    ]
    return diffs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--check", action="store_true", help="fail if the checked-in code differs from the protos"
    )
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        fresh = Path(tmp) / "v1"
        generate(fresh)
        if args.check:
            diffs = [d for target in TARGETS for d in differences(fresh, target)]
            if diffs:
                print("gen_protos: generated code is out of date; run scripts/gen_protos.py",
                      file=sys.stderr)  # fmt: skip
                for d in diffs:
                    print(f"  {d}", file=sys.stderr)
                return 1
            print("gen_protos: generated code matches the protos")
            return 0
        for target in TARGETS:
            for stale in differences(fresh, target):
                if stale.startswith("stale "):
                    Path(stale.removeprefix("stale ")).unlink()
            target.mkdir(parents=True, exist_ok=True)
            for f in fresh.iterdir():
                shutil.copyfile(f, target / f.name)
            print(f"gen_protos: wrote {target.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
