"""A network-namespace lab for system tests: real ``meshd`` processes joined by veth pairs.

Each node gets its own network namespace; only the pairs given as links are joined (one
veth pair each), IP forwarding is off everywhere, so anything that crosses more than one
link does so because the mesh relayed it. Every link has IPv6 link-local addresses (what
meshd's discovery uses) and optionally an IPv4 /30. Loss is injected with nftables
(``numgen random mod 100 < N drop`` on each veth's ingress hook): the kernel here has no
``tc netem`` (DESIGN.md, Testing).

Namespace names carry the owning pid and a random tag (``mlab-<pid>-<tag>-<node>``) so
parallel runs never collide, and a lab left behind by a killed run is reaped by the next
one. ``close()`` always kills every process in the lab's namespaces and deletes them;
daemons run under ``setpriv --pdeathsig KILL`` so that they die with the test process.

Needs root, ``ip`` (iproute2) and ``nft`` (nftables); :func:`unavailable_reason` says why
not when they are missing.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from meshd.errors import DeadlineExceeded, InvalidArgument
from meshd.testing.daemon_proc import LabError, MeshdProcess, deathsig_prefix

NS_PREFIX = "mlab"
_NS_RE = re.compile(rf"^{NS_PREFIX}-(\d+)-[0-9a-f]{{6}}-")
_NODE_RE = re.compile(r"^[a-z][a-z0-9]{0,7}$")
_NFT_TABLE = "meshlab"


def unavailable_reason() -> str | None:
    """Why namespace tests cannot run here, or None when they can."""
    if sys.platform != "linux":
        return "network namespaces need Linux"
    if os.geteuid() != 0:
        return "network namespaces need root (run the system tests as root)"
    for tool in ("ip", "nft"):
        if shutil.which(tool) is None:
            return f"`{tool}` is not installed (apt-get install iproute2 nftables)"
    probe = f"{NS_PREFIX}-{os.getpid()}-{secrets.token_hex(3)}-probe"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"`ip netns add` failed: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def chain(n: int) -> tuple[list[str], list[tuple[str, str]]]:
    """Node names a, b, c… and the links of a line topology a-b-c."""
    if not 1 <= n <= 26:
        raise InvalidArgument("a chain has 1..26 nodes", field="n")
    names = [chr(ord("a") + i) for i in range(n)]
    return names, list(itertools.pairwise(names))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _run(argv: Sequence[str], *, timeout: float = 10.0, stdin: str | None = None) -> str:
    try:
        done = subprocess.run(
            list(argv), input=stdin, capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired as exc:
        raise DeadlineExceeded(f"{' '.join(argv)}: timed out after {timeout} s") from exc
    if done.returncode != 0:
        raise LabError(f"{' '.join(argv)}: exit {done.returncode}: {done.stderr.strip()}")
    return done.stdout


def _list_namespaces() -> list[str]:
    out = _run(["ip", "netns", "list"])
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _kill_namespace_pids(ns: str) -> None:
    done = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True)
    for word in done.stdout.split():
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(word), signal.SIGKILL)


def _delete_namespace(ns: str) -> None:
    _kill_namespace_pids(ns)
    subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def reap_stale() -> list[str]:
    """Delete lab namespaces whose owning process is gone (a run killed with -9)."""
    reaped = []
    for ns in _list_namespaces():
        match = _NS_RE.match(ns)
        if match and not _pid_alive(int(match.group(1))):
            _delete_namespace(ns)
            reaped.append(ns)
    for rundir in Path(tempfile.gettempdir()).glob(f"{NS_PREFIX}-*"):
        match = _NS_RE.match(rundir.name)
        if match and rundir.is_dir() and not _pid_alive(int(match.group(1))):
            shutil.rmtree(rundir, ignore_errors=True)
    return reaped


@dataclass(frozen=True, slots=True)
class _Link:
    a: str
    b: str
    index: int


class NetnsLab:
    """N namespaces joined by veth pairs; use :meth:`create` and always :meth:`close`."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.tag = f"{NS_PREFIX}-{os.getpid()}-{secrets.token_hex(3)}"
        self.nodes: list[str] = []
        self.links: list[_Link] = []
        self.daemons: dict[str, MeshdProcess] = {}
        self._loss: dict[tuple[str, str], int] = {}  # (node, peer) → % dropped on ingress
        self._made: list[str] = []
        self._helpers: list[subprocess.Popen[str]] = []
        self._closed = False
        # Unix socket paths must fit in 107 bytes (unix(7)); pytest's tmp dirs may not.
        self.rundir = Path(tempfile.mkdtemp(prefix=f"{self.tag}-"))

    # ---------------------------------------------------------------- set-up

    @classmethod
    def create(
        cls,
        nodes: Sequence[str],
        links: Iterable[tuple[str, str]],
        workdir: Path,
        *,
        ipv4: bool = False,
    ) -> NetnsLab:
        """Build the topology; on any failure everything made so far is removed."""
        lab = cls(workdir)
        try:
            lab._build(nodes, list(links), ipv4=ipv4)
        except BaseException:
            lab.close()
            raise
        return lab

    def _build(self, nodes: Sequence[str], links: list[tuple[str, str]], *, ipv4: bool) -> None:
        if len(set(nodes)) != len(nodes):
            raise InvalidArgument("node names must be unique", field="nodes")
        for node in nodes:
            if not _NODE_RE.match(node):
                raise InvalidArgument(
                    f"bad node name {node!r} ([a-z][a-z0-9]{{0,7}})", field="nodes"
                )
        seen: set[frozenset[str]] = set()
        for a, b in links:
            if a not in nodes or b not in nodes or a == b:
                raise InvalidArgument(f"link {a}-{b} must join two known nodes", field="links")
            if frozenset((a, b)) in seen:
                raise InvalidArgument(f"link {a}-{b} given twice", field="links")
            seen.add(frozenset((a, b)))
        reap_stale()
        self.workdir.mkdir(parents=True, exist_ok=True)
        for node in nodes:
            self._add_namespace(node)
        for index, (a, b) in enumerate(links):
            self._add_link(_Link(a, b, index), ipv4=ipv4)

    def _add_namespace(self, node: str) -> None:
        ns = self.ns(node)
        _run(["ip", "netns", "add", ns])
        self._made.append(ns)
        self.nodes.append(node)
        _run(["ip", "-n", ns, "link", "set", "lo", "up"])
        # No forwarding (multi-hop is the mesh's job); no DAD so that link-local
        # addresses are usable at once instead of after ~1 s of tentative state.
        self._sysctl(
            node,
            "net.ipv4.ip_forward=0",
            "net.ipv6.conf.all.forwarding=0",
            "net.ipv6.conf.default.forwarding=0",
            "net.ipv6.conf.all.accept_dad=0",
            "net.ipv6.conf.default.accept_dad=0",
        )

    def _add_link(self, link: _Link, *, ipv4: bool) -> None:
        a_if, b_if = self.ifname(link.a, link.b), self.ifname(link.b, link.a)
        a_ns, b_ns = self.ns(link.a), self.ns(link.b)
        # Created directly inside the namespaces: no name ever exists in the root one.
        _run(["ip", "link", "add", a_if, "netns", a_ns, "type", "veth",
              "peer", "name", b_if, "netns", b_ns])  # fmt: skip
        self.links.append(link)
        if ipv4:
            _run(["ip", "-n", a_ns, "addr", "add", f"{self._v4(link, 1)}/30", "dev", a_if])
            _run(["ip", "-n", b_ns, "addr", "add", f"{self._v4(link, 2)}/30", "dev", b_if])
        _run(["ip", "-n", a_ns, "link", "set", a_if, "up"])
        _run(["ip", "-n", b_ns, "link", "set", b_if, "up"])

    def _sysctl(self, node: str, *settings: str) -> None:
        _run(["ip", "netns", "exec", self.ns(node), "sysctl", "-qw", *settings])

    @staticmethod
    def _v4(link: _Link, host: int) -> str:
        base = link.index * 4  # one /30 per link: .1 for end a, .2 for end b
        return f"10.{200 + base // 65536}.{base // 256 % 256}.{base % 256 + host}"

    # ---------------------------------------------------------------- naming

    def ns(self, node: str) -> str:
        return f"{self.tag}-{node}"

    def ifname(self, node: str, peer: str) -> str:
        """The name, inside ``node``'s namespace, of the veth end facing ``peer``."""
        return f"ve-{peer}"

    def _link(self, a: str, b: str) -> _Link:
        for link in self.links:
            if {link.a, link.b} == {a, b}:
                return link
        raise InvalidArgument(f"no link between {a} and {b}", field="link")

    def ipv4(self, node: str, peer: str) -> str:
        """``node``'s IPv4 address on its link to ``peer`` (labs made with ipv4=True)."""
        link = self._link(node, peer)
        return self._v4(link, 1 if node == link.a else 2)

    def link_local(self, node: str, peer: str) -> str:
        """``node``'s fe80:: address on its link to ``peer``, without the scope."""
        out = _run(["ip", "-n", self.ns(node), "-6", "-o", "addr", "show", "dev",
                    self.ifname(node, peer), "scope", "link"])  # fmt: skip
        for line in out.split("\n"):
            words = line.split()
            if "inet6" in words:
                return words[words.index("inet6") + 1].split("/")[0]
        raise LabError(f"{node} has no link-local address towards {peer}")

    # ---------------------------------------------------------------- commands

    def exec(
        self, node: str, argv: Sequence[str], *, timeout: float = 10.0, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run a command inside ``node``'s namespace."""
        cmd = ["ip", "netns", "exec", self.ns(node), *argv]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            raise DeadlineExceeded(f"{' '.join(argv)} in {node}: timed out") from exc
        if check and done.returncode != 0:
            raise LabError(f"{' '.join(argv)} in {node}: exit {done.returncode}: {done.stderr}")
        return done

    def popen(self, node: str, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[str]:
        """Start a command inside ``node``'s namespace (killed by :meth:`close`)."""
        proc = subprocess.Popen(
            [*deathsig_prefix(), "ip", "netns", "exec", self.ns(node), *argv],
            text=True,
            **kwargs,
        )
        self._helpers.append(proc)
        return proc

    # ---------------------------------------------------------------- loss

    def set_loss(self, a: str, b: str, percent: int) -> None:
        """Drop ``percent`` % of the packets in each direction of the a-b link."""
        if not isinstance(percent, int) or not 0 <= percent <= 100:
            raise InvalidArgument("loss is an integer percentage 0..100", field="percent")
        self._link(a, b)
        self._loss[(a, b)] = percent
        self._loss[(b, a)] = percent
        self._apply_loss(a)
        self._apply_loss(b)

    def set_loss_all(self, percent: int) -> None:
        for link in self.links:
            self.set_loss(link.a, link.b, percent)

    def _apply_loss(self, node: str) -> None:
        # One netdev table per namespace, one ingress chain per veth: dropping on the
        # receiving end of each direction loses `percent` % of every packet on the
        # wire (ND and multicast beacons included, like a lossy radio would).
        chains = []
        for (owner, peer), percent in sorted(self._loss.items()):
            if owner != node or percent == 0:
                continue
            dev = self.ifname(node, peer)
            # numgen's range is 0..99: "< 100" is refused, so total loss is a plain drop.
            rule = "drop" if percent == 100 else f"numgen random mod 100 < {percent} drop"
            chains.append(
                f'  chain loss_{peer} {{ type filter hook ingress device "{dev}" priority 0;'
                f" {rule}; }}"
            )
        # "add then delete" makes the flush idempotent in one atomic transaction.
        script = f"table netdev {_NFT_TABLE} {{}}\ndelete table netdev {_NFT_TABLE}\n"
        if chains:
            script += f"table netdev {_NFT_TABLE} {{\n" + "\n".join(chains) + "\n}\n"
        _run(["ip", "netns", "exec", self.ns(node), "nft", "-f", "-"], stdin=script)

    def link_down(self, a: str, b: str) -> None:
        """Cut the a-b link (both ends down); :meth:`link_up` restores it."""
        self._link(a, b)
        _run(["ip", "-n", self.ns(a), "link", "set", self.ifname(a, b), "down"])
        _run(["ip", "-n", self.ns(b), "link", "set", self.ifname(b, a), "down"])

    def link_up(self, a: str, b: str) -> None:
        self._link(a, b)
        _run(["ip", "-n", self.ns(a), "link", "set", self.ifname(a, b), "up"])
        _run(["ip", "-n", self.ns(b), "link", "set", self.ifname(b, a), "up"])

    # ---------------------------------------------------------------- daemons

    def daemon(self, node: str) -> MeshdProcess:
        """``node``'s meshd (made on first use; the same object across restarts)."""
        if node not in self.nodes:
            raise InvalidArgument(f"unknown node {node!r}", field="node")
        if node not in self.daemons:
            self.daemons[node] = MeshdProcess(
                node, self.workdir / node, self.rundir, netns=self.ns(node)
            )
        return self.daemons[node]

    def start(
        self, node: str, *extra_args: str, wait_ready: bool = True, timeout: float = 15.0
    ) -> MeshdProcess:
        """Start meshd in ``node``'s namespace with NO peer list: it must discover its
        neighbours itself. Waits for sd_notify READY=1 unless ``wait_ready`` is False."""
        d = self.daemon(node)
        d.start(*extra_args, wait_ready=wait_ready, timeout=timeout)
        return d

    def start_all(self, *extra_args: str, timeout: float = 20.0) -> None:
        """Start every node's daemon at once, then wait until all are READY."""
        for node in self.nodes:
            self.start(node, *extra_args, wait_ready=False)
        for node in self.nodes:
            self.daemon(node).wait_ready(timeout=timeout)

    def stop(self, node: str, *, timeout: float = 10.0) -> int:
        """SIGTERM ``node``'s meshd; its exit code."""
        return self.daemon(node).stop(timeout=timeout)

    def kill9(self, node: str) -> None:
        self.daemon(node).kill9()

    def meshctl(
        self, node: str, *args: str, timeout: float = 30.0, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        return self.daemon(node).meshctl(*args, timeout=timeout, check=check)

    def meshctl_json(self, node: str, *args: str, timeout: float = 30.0) -> Any:
        return self.daemon(node).meshctl_json(*args, timeout=timeout)

    def meshctl_popen(self, node: str, *args: str) -> subprocess.Popen[str]:
        return self.daemon(node).meshctl_popen(*args)

    # ---------------------------------------------------------------- logs

    def collect_logs(self, dest: Path | None = None, *, lines: int = 80) -> str:
        """Every node's log tail as one text (and each whole log copied into ``dest``)."""
        parts = []
        for node in self.nodes:
            d = self.daemons.get(node)
            if d is None:
                continue
            if dest is not None and d.log_path.exists():
                dest.mkdir(parents=True, exist_ok=True)
                shutil.copy(d.log_path, dest / f"{self.tag}-{node}-meshd.log")
            state = "running" if d.running else "stopped"
            parts.append(f"----- {node} ({state}, {d.starts} starts) -----\n" + d.log_tail(lines))
        return "\n".join(parts)

    # ---------------------------------------------------------------- teardown

    def close(self) -> None:
        """Kill every daemon and process in the lab, delete every namespace. Idempotent."""
        if self._closed:
            return
        self._closed = True
        for proc in self._helpers:
            if proc.poll() is None:
                proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5.0)
        for d in self.daemons.values():
            d.close()
        for ns in self._made:
            _delete_namespace(ns)
        self._made.clear()
        shutil.rmtree(self.rundir, ignore_errors=True)

    def __enter__(self) -> NetnsLab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextlib.contextmanager
def lab(
    nodes: Sequence[str], links: Iterable[tuple[str, str]], workdir: Path, *, ipv4: bool = False
) -> Iterator[NetnsLab]:
    """``with lab(...) as l:`` — a :class:`NetnsLab` that is always closed."""
    made = NetnsLab.create(nodes, links, workdir, ipv4=ipv4)
    try:
        yield made
    finally:
        made.close()
