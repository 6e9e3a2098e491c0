"""packaging/systemd: the unit passes ``systemd-analyze verify``; sysusers/tmpfiles apply."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNIT_DIR = Path(__file__).resolve().parents[2] / "packaging" / "systemd"


def _need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.skip(f"{tool} is not installed")
    return path


def test_unit_verifies_clean(tmp_path: Path) -> None:
    analyze = _need("systemd-analyze")
    text = (UNIT_DIR / "meshd.service").read_text()
    for key in (
        "Type=notify",
        "WatchdogSec=",
        "StateDirectory=meshd",
        "RuntimeDirectory=meshd",
        "User=meshd",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
    ):
        assert key in text, key
    # verify insists that ExecStart's binary exists: point it at this interpreter.
    assert "ExecStart=/usr/bin/meshd " in text
    unit = tmp_path / "meshd.service"
    here = f"ExecStart={sys.executable} -m meshd "
    unit.write_text(text.replace("ExecStart=/usr/bin/meshd ", here))
    proc = subprocess.run(
        [analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    assert proc.stderr == ""
    assert proc.returncode == 0


def test_sysusers_and_tmpfiles_apply_in_a_scratch_root(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("tmpfiles chowns to the meshd user: needs root")
    sysusers = _need("systemd-sysusers")
    tmpfiles = _need("systemd-tmpfiles")
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    subprocess.run(
        [sysusers, f"--root={root}", str(UNIT_DIR / "meshd.sysusers")],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    passwd = (root / "etc" / "passwd").read_text()
    group = (root / "etc" / "group").read_text()
    assert passwd.startswith("meshd:") or "\nmeshd:" in passwd
    assert "meshd-admin:" in group
    proc = subprocess.run(
        [tmpfiles, f"--root={root}", "--create", str(UNIT_DIR / "meshd.tmpfiles")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert (root / "var/lib/meshd").stat().st_mode & 0o777 == 0o700
    assert (root / "run/meshd").is_dir()
