"""Zero-config discovery between two network namespaces joined by a veth pair.

Each node runs in its own namespace (``ip netns exec``) with no peer list: they must find
each other by multicast beacons (IPv6 link-local only, or IPv4 only), dial, prove their
identities, exchange a frame, and settle on exactly one link.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from meshd.crypto.identity import Identity

pytestmark = [pytest.mark.netns, pytest.mark.timeout(60)]
REPO = Path(__file__).resolve().parents[2]

NODE_SCRIPT = textwrap.dedent(
    """
    import asyncio, json, sys, time
    from meshd.crypto.identity import Identity
    from meshd.transports.discovery import DiscoveryConfig
    from meshd.transports.inet import InetConfig, InetTransport

    seed = int(sys.argv[1])
    ident = Identity.from_seed(bytes([seed]) * 64)

    class Rec:
        def __init__(self):
            self.ups, self.downs, self.frames, self.links, self.peers = 0, 0, [], {}, []
        def link_up(self, link):
            self.ups += 1
            self.links[self.ups] = link
            self.peers.append(link.peer.address.text)
            link.send(b"hello from %d" % seed)
            return self.ups
        def frame_received(self, link_id, frame):
            self.frames.append(frame.decode())
        def link_down(self, link_id):
            self.downs += 1
            self.links.pop(link_id, None)

    async def main():
        rec = Rec()
        cfg = InetConfig(discovery=DiscoveryConfig(fast_interval=0.5, fast_count=20, defer=1.0),
                         rescan_interval=0.5)
        t = InetTransport(ident, listen=[("::", 4717)], discovery=True, config=cfg)
        await t.start(rec)
        end = time.monotonic() + 20
        while time.monotonic() < end and not (rec.links and rec.frames):
            await asyncio.sleep(0.05)
        await asyncio.sleep(2.0)  # stay up a little: no churn, no second link
        status = t.status()
        print(json.dumps({"address": ident.address.text, "ups": rec.ups, "downs": rec.downs,
                          "peers": rec.peers, "frames": rec.frames,
                          "descriptions": [l.description for l in rec.links.values()],
                          "open_links": len(rec.links), "state": status.state.value,
                          "endpoints": list(status.local_endpoints)}), flush=True)
        # Stay up until the test has both reports (it closes our stdin).
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
        await t.stop()

    asyncio.run(main())
    """
)


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


def _sysctl(ns: str, *settings: str) -> None:
    subprocess.run(["ip", "netns", "exec", ns, "sysctl", "-qw", *settings],
                   check=True, capture_output=True)


@pytest.fixture
def veth_pair(request: pytest.FixtureRequest) -> Iterator[tuple[str, str, str]]:
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("needs root and iproute2 for network namespaces")
    family = request.param
    tag = f"{os.getpid() % 100000}"
    ns_a, ns_b = f"mdA{tag}", f"mdB{tag}"
    try:
        for ns in (ns_a, ns_b):
            _ip("netns", "add", ns)
            # No duplicate address detection: link-local addresses usable at once.
            _sysctl(ns, "net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0")
            if family == "ipv4":
                _sysctl(ns, "net.ipv6.conf.all.disable_ipv6=1",
                        "net.ipv6.conf.default.disable_ipv6=1")
        _ip("link", "add", f"va{tag}", "type", "veth", "peer", "name", f"vb{tag}")
        ends = ((ns_a, f"va{tag}", "10.77.0.1/24"), (ns_b, f"vb{tag}", "10.77.0.2/24"))
        for ns, dev, addr in ends:
            _ip("link", "set", dev, "netns", ns)
            if family == "ipv4":
                _ip("-n", ns, "addr", "add", addr, "dev", dev)
            _ip("-n", ns, "link", "set", dev, "up")
            _ip("-n", ns, "link", "set", "lo", "up")
        yield ns_a, ns_b, family
    finally:
        for ns in (ns_a, ns_b):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


@pytest.mark.parametrize("veth_pair", ["ipv6-link-local", "ipv4"], indirect=True)
def test_two_namespaces_discover_each_other_with_no_config(
    veth_pair: tuple[str, str, str], tmp_path: Path
) -> None:
    ns_a, ns_b, family = veth_pair
    script = tmp_path / "node.py"
    script.write_text(NODE_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [
        subprocess.Popen(
            ["ip", "netns", "exec", ns, sys.executable, str(script), str(seed)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, cwd=REPO, env=env,
        )
        for ns, seed in ((ns_a, 1), (ns_b, 2))
    ]
    results = []
    try:
        for proc in procs:
            assert proc.stdout is not None
            # Log lines come first; the report is the JSON line (pytest-timeout bounds this).
            seen = []
            for line in proc.stdout:
                if line.startswith("{"):
                    results.append(json.loads(line))
                    break
                seen.append(line)
            else:
                raise AssertionError("node exited without a report: " + "".join(seen[-20:]))
    finally:
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.close()
        for proc in procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    assert [p.returncode for p in procs] == [0, 0]
    a, b = results
    addr_a, addr_b = (Identity.from_seed(bytes([n]) * 64).address.text for n in (1, 2))
    assert a["address"] == addr_a and b["address"] == addr_b
    # Each proved the other's identity, exchanged a frame, and kept exactly one link.
    assert set(a["peers"]) == {addr_b}, a
    assert set(b["peers"]) == {addr_a}, b
    assert a["frames"] and set(a["frames"]) == {"hello from 2"}
    assert b["frames"] and set(b["frames"]) == {"hello from 1"}
    assert a["open_links"] == 1 and b["open_links"] == 1
    assert a["state"] == "running"
    assert any("discovery" in e for e in a["endpoints"])
    if family == "ipv4":
        assert all("10.77.0." in d for d in a["descriptions"] + b["descriptions"])
    else:
        assert all("fe80::" in d and "%" in d for d in a["descriptions"] + b["descriptions"])
