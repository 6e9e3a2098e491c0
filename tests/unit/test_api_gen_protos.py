"""The checked-in generated code matches the protos, and --check notices when it does not."""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[2]


def _gen_protos() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_protos", ROOT / "scripts" / "gen_protos.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["gen_protos"] = module
    spec.loader.exec_module(module)
    return module


def test_checked_in_code_matches_protos() -> None:
    assert _gen_protos().main(["--check"]) == 0


def test_differences_reports_edited_missing_and_stale(tmp_path: Path) -> None:
    gen = _gen_protos()
    fresh, copy = tmp_path / "fresh", tmp_path / "copy"
    gen.generate(fresh)
    shutil.copytree(fresh, copy)
    assert gen.differences(fresh, copy) == []
    (copy / "node_pb2.py").write_text("# edited by hand\n")
    (copy / "messaging_pb2.pyi").unlink()
    (copy / "old_pb2.py").write_text("")
    diffs = gen.differences(fresh, copy)
    assert f"differs {copy / 'node_pb2.py'}" in diffs
    assert f"missing {copy / 'messaging_pb2.pyi'}" in diffs
    assert f"stale {copy / 'old_pb2.py'}" in diffs
    assert len(diffs) == 3


def test_generated_imports_are_relative() -> None:
    for target in (ROOT / "meshd/api/v1", ROOT / "clients/python/meshd_client/v1"):
        for path in target.glob("*_pb2*.py*"):
            assert "from meshd.v1 import" not in path.read_text(), path
