"""One real ``meshd`` process for system tests and benchmarks: start (optionally inside a
network namespace), wait for sd_notify READY=1, stop, ``kill -9``, restart with the same
state, run ``meshctl`` against it, read its log.

Its files (state dir, log) survive restarts, so a restarted daemon has the same identity
and store. Daemons run under ``setpriv --pdeathsig KILL`` so that they die with the test process.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from meshd.errors import DeadlineExceeded, FailedPrecondition, MeshdError

_REPO_ROOT = Path(__file__).resolve().parents[2]


class LabError(MeshdError):
    """A lab command failed; the message carries the command and its output."""


def deathsig_prefix() -> list[str]:
    """``setpriv --pdeathsig KILL``: the child is SIGKILLed if the test process dies (even
    by -9); it survives the execs of ``ip netns exec``.

    Not a ``preexec_fn`` calling prctl: that forces fork() instead of vfork(), and in a
    process with live grpc threads (async tests, the bench) grpc's fork handlers then abort
    the child before it execs (seen: meshd "exited with -6", epoll_wait EBADF). Spawn
    from the main thread: the signal fires when the spawning *thread* exits.
    """
    path = shutil.which("setpriv")
    return [path, "--pdeathsig", "KILL"] if path else []


def child_env(home: Path) -> dict[str, str]:
    """The environment for meshd/meshctl: this checkout importable, XDG dirs in ``home``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MESHD_", "NOTIFY_"))}
    path = env.get("PYTHONPATH")
    env["PYTHONPATH"] = f"{_REPO_ROOT}{os.pathsep}{path}" if path else str(_REPO_ROOT)
    env["PYTHONUNBUFFERED"] = "1"
    env["XDG_DATA_HOME"] = str(home / "xdg-data")
    env["XDG_RUNTIME_DIR"] = str(home / "xdg-run")
    env["XDG_CONFIG_HOME"] = str(home / "xdg-config")
    return env


class _NotifyListener:
    """The sd_notify datagram socket of one daemon; a thread drains it (a full socket
    buffer would block a daemon that notifies with a blocking send)."""

    def __init__(self, path: Path) -> None:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        self.path = path
        self.messages: list[str] = []
        self._ready = threading.Event()
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(str(path))
        self._sock.settimeout(0.1)
        self._stop = False
        self._thread = threading.Thread(target=self._drain, name=f"notify:{path}", daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        while not self._stop:
            try:
                data = self._sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            text = data.decode("utf-8", "replace")
            self.messages.append(text)
            if "READY=1" in text.splitlines():
                self._ready.set()

    def wait_ready(self, timeout: float) -> bool:
        return self._ready.wait(timeout)

    def close(self) -> None:
        self._stop = True
        self._thread.join(timeout=1.0)
        self._sock.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


class MeshdProcess:
    """A ``meshd`` with its own state dir, socket and log; ``netns`` runs it in a namespace."""

    def __init__(self, name: str, home: Path, rundir: Path, *, netns: str | None = None) -> None:
        home.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.netns = netns
        self.home = home
        self.state_dir = home / "state"
        self.log_path = home / "meshd.log"
        # Unix socket paths must fit in 107 bytes (unix(7)): ``rundir`` is kept short.
        self.socket_path = rundir / f"{name}.sock"
        self._notify_path = rundir / f"{name}.notify"
        self.proc: subprocess.Popen[bytes] | None = None
        self.notify: _NotifyListener | None = None
        self.ready_s: float | None = None  # start → READY=1 of the latest start
        self.started_at = 0.0  # time.monotonic() of the latest start
        self.starts = 0
        self.extra_args: list[str] = []
        self.env: dict[str, str] = {}  # extra environment, e.g. DBUS_SYSTEM_BUS_ADDRESS
        self._helpers: list[subprocess.Popen[str]] = []

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise FailedPrecondition(f"meshd {self.name} was never started", field="node")
        return self.proc.pid

    def _wrap(self, argv: list[str]) -> list[str]:
        return argv if self.netns is None else ["ip", "netns", "exec", self.netns, *argv]

    def start(self, *extra_args: str, wait_ready: bool = True, timeout: float = 15.0) -> None:
        """Start meshd with ``extra_args`` (``--listen``… — the lab passes no peer list);
        waits for READY=1 unless ``wait_ready`` is False."""
        if self.running:
            raise FailedPrecondition(f"meshd {self.name} is already running", field="node")
        self._reap_notify()
        self.extra_args = list(extra_args)
        self.notify = _NotifyListener(self._notify_path)
        env = child_env(self.home)
        env["NOTIFY_SOCKET"] = str(self._notify_path)
        env.update(self.env)
        argv = [
            sys.executable, "-m", "meshd",
            "--state-dir", str(self.state_dir),
            "--socket", str(self.socket_path),
            "--log-format", "json",
            *extra_args,
        ]  # fmt: skip
        with self.log_path.open("ab") as log:
            log.write(f"=== start {self.starts + 1}: {' '.join(argv)}\n".encode())
            log.flush()
            self.started_at = time.monotonic()
            self.proc = subprocess.Popen(
                [*deathsig_prefix(), *self._wrap(argv)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self.home,
                start_new_session=True,
            )
        self.starts += 1
        self.ready_s = None
        if wait_ready:
            self.wait_ready(timeout=timeout)

    def wait_ready(self, *, timeout: float = 15.0) -> float:
        """Wait for READY=1; returns (and records) seconds from start to READY."""
        if self.notify is None or self.proc is None:
            raise FailedPrecondition(f"meshd {self.name} is not started", field="node")
        if self.ready_s is not None:
            return self.ready_s
        deadline = self.started_at + timeout
        while time.monotonic() < deadline:
            if self.notify.wait_ready(0.01):
                self.ready_s = time.monotonic() - self.started_at
                return self.ready_s
            if self.proc.poll() is not None:
                raise LabError(
                    f"meshd {self.name} exited with {self.proc.returncode} before READY:\n"
                    + self.log_tail()
                )
        raise DeadlineExceeded(
            f"meshd {self.name} not READY after {timeout} s:\n" + self.log_tail()
        )

    def stop(self, *, timeout: float = 10.0) -> int:
        """SIGTERM (a clean shutdown); SIGKILL if still alive after ``timeout``. Exit code."""
        if self.proc is None:
            raise FailedPrecondition(f"meshd {self.name} was never started", field="node")
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill9()
        self._reap_notify()
        return self.proc.returncode

    def kill9(self) -> None:
        """``kill -9``: no chance to flush or say goodbye."""
        if self.proc is None:
            raise FailedPrecondition(f"meshd {self.name} was never started", field="node")
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(5.0)
        self._reap_notify()

    def restart(self, *, timeout: float = 15.0) -> None:
        if self.running:
            self.stop()
        self.start(*self.extra_args, timeout=timeout)

    def _reap_notify(self) -> None:
        if self.notify is not None and (self.proc is None or self.proc.poll() is not None):
            self.notify.close()
            self.notify = None

    def rss_kib(self) -> int:
        """Resident set size (VmRSS) in KiB."""
        if not self.running:
            raise FailedPrecondition(f"meshd {self.name} is not running", field="node")
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise LabError(f"no VmRSS for pid {self.pid}")

    # ---------------------------------------------------------------- meshctl

    def _meshctl_argv(self, args: tuple[str, ...]) -> list[str]:
        return [sys.executable, "-m", "meshctl", "--socket", str(self.socket_path), *args]

    def meshctl(
        self, *args: str, timeout: float = 30.0, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """``meshctl --socket <this socket> ARGS``, run from the caller's namespace: the API
        is a Unix socket, which network namespaces do not separate."""
        try:
            done = subprocess.run(
                self._meshctl_argv(args),
                capture_output=True,
                text=True,
                timeout=timeout,
                env=child_env(self.home),
            )
        except subprocess.TimeoutExpired as exc:
            raise DeadlineExceeded(f"meshctl {' '.join(args)} on {self.name}: timed out") from exc
        if check and done.returncode != 0:
            raise LabError(
                f"meshctl {' '.join(args)} on {self.name}: exit {done.returncode}\n"
                f"stdout: {done.stdout}\nstderr: {done.stderr}"
            )
        return done

    def meshctl_json(self, *args: str, timeout: float = 30.0) -> Any:
        return json.loads(self.meshctl("--json", *args, timeout=timeout).stdout)

    def meshctl_popen(self, *args: str) -> subprocess.Popen[str]:
        """A long-running meshctl (``watch``) with stdout/stderr piped; killed by close()."""
        proc = subprocess.Popen(
            [*deathsig_prefix(), *self._meshctl_argv(args)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=child_env(self.home),
        )
        self._helpers.append(proc)
        return proc

    # ---------------------------------------------------------------- logs, teardown

    def log_tail(self, lines: int = 60) -> str:
        if not self.log_path.exists():
            return f"(no log for {self.name})"
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def close(self) -> None:
        """Kill the daemon and any meshctl started here. Idempotent."""
        for helper in self._helpers:
            if helper.poll() is None:
                helper.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                helper.wait(5.0)
        self._helpers.clear()
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(5.0)
        if self.notify is not None:
            self.notify.close()
            self.notify = None
