"""The BLE transport: bless peripheral + bleak central over BlueZ's D-Bus API.

Every node is both: it advertises meshd's service with a node summary (``ble_advert``)
and serves the GATT pipe (``ble_gatt.Peripheral``), and it scans and connects to chosen
peers (``ble_policy``, ``ble_gatt.CentralConnection``). Each link runs the identity-bound
Noise XX handshake and the AEAD channel of the inet transport over the PDU pipe of
``ble_session``, so a BLE neighbour is a proven identity.

Pacing (measured, docs/virtual-bluez.md): bless's dbus-next connection dies with
``BlockingIOError`` when hundreds of notifications are emitted without yielding. The
peripheral therefore sends notifications from one task that yields to the loop after
each, and credits (``ble_session``) bound what is in flight per link; with both, bless
shares the daemon's loop (no thread or process needed; see docs/ble.md for figures).

Recovery: ``AdapterWatch`` follows ``Powered``, bluetoothd's bus name and the bus
connection. While the adapter is off or bluetoothd is gone the transport is DEGRADED with
a "down: ..." detail and has no links; when it comes back, the peripheral and the scanner
are rebuilt from scratch (BlueZ forgets registrations), retried with capped backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Callable, Coroutine
from typing import Any

import structlog

from meshd.address import NodeAddress
from meshd.crypto.identity import Identity
from meshd.errors import WireError
from meshd.router.events import LinkId
from meshd.transports.base import LinkEvents, Transport, TransportState, TransportStatus
from meshd.transports.ble_advert import (
    PROTOCOL_VERSION,
    SERVICE_UUID,
    AdvertSummary,
    fold_cluster,
    summary_from_advert,
)
from meshd.transports.ble_gatt import AdapterWatch, CentralConnection, Peripheral, Refused
from meshd.transports.ble_link import BleConfig as BleConfig  # re-exported: the public config
from meshd.transports.ble_link import BleLink, EphemeralCache
from meshd.transports.ble_policy import Candidate, LinkView, plan, rank, scan_duty
from meshd.transports.ble_session import (
    CLOSE_DUPLICATE,
    OPEN,
    BleSession,
    parse_open,
    parse_pdu,
)

# (battery level or None on mains, charging, router cluster id or None)
SummarySource = Callable[[], tuple[int | None, bool, int | None]]


class BleTransport(Transport):
    """BLE links in both roles, bounded, recovering from BlueZ restarts and power cycles."""

    name = "ble"

    def __init__(
        self,
        identity: Identity,
        *,
        config: BleConfig | None = None,
        summary: SummarySource | None = None,
        rng: random.Random | None = None,
        logger: Any = None,
    ) -> None:
        self.identity = identity
        self.config = config or BleConfig()
        self._summary_source: SummarySource = summary or (lambda: (None, False, None))
        self._rng = rng or random.Random()
        self._log = logger or structlog.get_logger("meshd.ble")
        self._own = identity.address
        self._events: LinkEvents | None = None
        self._state = TransportState.STOPPED
        self._detail = "not started"
        self._watch = AdapterWatch(self.config.adapter, self._adapter_changed, self._device_gone)
        self._up = False
        self._peripheral: Peripheral | None = None
        self._sessions: dict[int, BleLink] = {}  # peripheral side, by session id
        self._centrals: set[BleLink] = set()
        self._by_peer: dict[NodeAddress, BleLink] = {}
        self._advice: dict[LinkId, bool] = {}
        self._candidates: dict[str, Candidate] = {}
        self._devices: dict[str, Any] = {}  # BLEDevice objects from the scanner
        self._busy: set[str] = set()  # devices being connected to
        self._retry_at: dict[str, float] = {}
        self._backoff: dict[str, float] = {}
        self._seen_ephemerals = EphemeralCache()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._up_tasks: set[asyncio.Task[Any]] = set()  # die with the adapter
        self._wake_sup = asyncio.Event()
        self._wake_periph = asyncio.Event()
        self._advert_at = -1e9
        self._broken = False  # a task of the up state failed: rebuild
        self._rebalanced_at = -1e9
        self.counters: dict[str, int] = {"refused_writes": 0, "bad_pdus": 0, "notified": 0}

    # --- Transport ------------------------------------------------------------------
    async def start(self, events: LinkEvents) -> None:
        self._events = events
        self._state = TransportState.STARTING
        try:
            await asyncio.wait_for(self._watch.connect(), 5.0)
        except Exception as exc:
            self._unavailable(f"no D-Bus system bus: {exc}")
            return
        if not self._watch.present:
            why = "bluetoothd not running" if not self._watch.bluez else "no such adapter"
            self._unavailable(f"no Bluetooth adapter {self.config.adapter} ({why})")
            return
        self._spawn(self._supervise(), self._tasks)
        self._spawn(self._ticker(), self._tasks)
        self._state = TransportState.RUNNING
        self._detail = "starting"

    async def stop(self) -> None:
        self._state = TransportState.STOPPED
        self._detail = "stopped"
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self._bring_down("stopped")
        self._watch.close()

    def status(self) -> TransportStatus:
        state, detail = self._state, self._detail
        if state is TransportState.RUNNING and not self._up:
            state = TransportState.DEGRADED
        endpoints = (f"ble {self.config.adapter}",) if self._up else ()
        return TransportStatus(
            name=self.name, state=state, detail=detail,
            links=len(self._by_peer), local_endpoints=endpoints,
        )

    def advise(self, link_id: LinkId, keep: bool) -> None:
        self._advice[link_id] = keep

    def set_summary_source(self, source: SummarySource) -> None:
        """Where the advertised battery and cluster id come from (the node, once open)."""
        self._summary_source = source

    def links(self) -> list[BleLink]:
        return list(self._by_peer.values())

    # --- state ----------------------------------------------------------------------
    def _unavailable(self, why: str) -> None:
        self._state = TransportState.UNAVAILABLE
        self._detail = why
        self._log.warning("ble.unavailable", reason=why)  # once: never retried
        self._watch.close()

    def _adapter_changed(self) -> None:
        self._wake_sup.set()

    def _device_gone(self) -> None:
        """Some LE connection of ours ended: which peripheral session was it? Probe all
        (bless cannot tell which central a session belongs to)."""
        now = asyncio.get_running_loop().time()
        for link in list(self._sessions.values()):
            if link.session.up and link.probe_at is None:
                link.probe_at = now
                link.session.ping(now=now)
                self._wake(link)

    async def _supervise(self) -> None:
        delay = self.config.backoff_initial
        loop = asyncio.get_running_loop()
        up_at = 0.0
        while True:
            self._wake_sup.clear()
            w = self._watch
            try:
                if not w.bus_ok:
                    w.close()
                    await asyncio.wait_for(w.connect(), 5.0)
                else:
                    await asyncio.wait_for(w.refresh(), 5.0)
            except Exception as exc:
                w.bus_ok = False
                self._detail = f"down: system bus unreachable ({exc})"
            want = w.bus_ok and w.present and w.powered
            peripheral_dead = self._up and not (self._peripheral and self._peripheral.alive)
            if self._up and (not want or peripheral_dead or self._broken):
                reason = (
                    self._watch.down_reason() if not want
                    else "down: peripheral lost its bus" if peripheral_dead
                    else "down: restarting after a failure"
                )
                self._log.warning("ble.down", reason=reason)
                failed = want  # our own failure, not BlueZ going away: back off first
                await self._bring_down(reason)
                if failed:
                    if loop.time() - up_at > self.config.backoff_max:
                        delay = self.config.backoff_initial  # it had been up a while
                    await asyncio.sleep(delay * self._rng.uniform(0.5, 1.0))
                    delay = min(self.config.backoff_max, delay * 2)
            if want and not self._up:
                try:
                    await self._bring_up()
                    up_at = loop.time()
                    self._log.info("ble.up", adapter=self.config.adapter)
                except Exception as exc:
                    self._log.warning("ble.start_failed", error=repr(exc), retry_in=delay)
                    await self._bring_down(f"down: start failed ({exc!r}); retrying")
                    await asyncio.sleep(delay * self._rng.uniform(0.5, 1.0))
                    delay = min(self.config.backoff_max, delay * 2)
                    continue
            elif not want:
                self._detail = self._watch.down_reason() if w.bus_ok else self._detail
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake_sup.wait(), 5.0)

    async def _bring_up(self) -> None:
        self._broken = False
        self._peripheral = Peripheral(self.config.adapter, self._on_write)
        await asyncio.wait_for(self._peripheral.start(self._summary_bytes()), 10.0)
        self._advert_at = asyncio.get_running_loop().time()
        self._up = True
        self._detail = "ok"
        self._spawn(self._scanner(), self._up_tasks)
        self._spawn(self._peripheral_pump(), self._up_tasks)

    async def _bring_down(self, reason: str) -> None:
        self._up = False
        self._detail = reason
        for task in list(self._up_tasks):
            task.cancel()
        for task in list(self._up_tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for link in [*self._sessions.values(), *self._centrals]:
            link.session.closed = True
            link.session.close_reason = link.session.close_reason or reason
            self._finish(link)
        conns = [link.conn for link in self._centrals if link.conn is not None]
        self._centrals.clear()
        self._sessions.clear()
        for conn in conns:
            await conn.disconnect()
        self._busy.clear()
        self._retry_at.clear()
        self._backoff.clear()
        self._candidates.clear()
        self._devices.clear()
        if self._peripheral is not None:
            periph, self._peripheral = self._peripheral, None
            await periph.stop()

    def _spawn(self, coro: Coroutine[Any, Any, Any], group: set[asyncio.Task[Any]]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        group.add(task)
        task.add_done_callback(group.discard)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        if not task.cancelled() and task.exception() is not None:
            self._log.error("ble.task_failed", error=repr(task.exception()))
            self._broken = True  # the supervisor rebuilds peripheral and scanner
            self._wake_sup.set()

    # --- advertisement ----------------------------------------------------------------
    def _summary_bytes(self) -> bytes:
        battery, charging, cluster = self._summary_source()
        links = self._link_count()
        return AdvertSummary(
            version=PROTOCOL_VERSION,
            free_slots=max(0, self.config.max_links - links),
            battery=battery,
            charging=charging,
            addr=self._own.raw[:2],
            cluster=fold_cluster(cluster),
        ).encode()

    # --- peripheral side ----------------------------------------------------------------
    def _on_write(self, data: bytes) -> None:
        """A central wrote a PDU (bless callback). Raising refuses the write."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        try:
            pdu = parse_pdu(data)
            link = self._sessions.get(pdu.session)
            if pdu.ctype == OPEN:
                if link is not None and not link.session.closed:
                    raise WireError("session id in use", field="pdu.session")
                _, mtu, window = parse_open(pdu.body)
                if self._link_count() >= self.config.max_links:
                    raise WireError("no free connection slot", field="pdu.open")
                session = BleSession(
                    self.identity, central=False, session=pdu.session, mtu=mtu, now=now,
                    config=self.config.session,
                )
                session.grant(window)
                self._sessions[pdu.session] = BleLink(
                    session, device=f"session-{pdu.session}", conn=None, rssi=None,
                    wake=self._wake,
                )
                return
            if link is None or link.session.closed:
                raise WireError("unknown session", field="pdu.session")
        except WireError as exc:
            self.counters["refused_writes"] += 1
            raise Refused(str(exc)) from None
        first = link.session.remote_ephemeral is None
        link.session.receive(pdu, now=now)
        eph = link.session.remote_ephemeral
        if first and eph is not None and not self._seen_ephemerals.fresh(eph):
            link.session.close("replayed handshake message")
        link.probe_at = None
        self._process(link)
        self._wake(link)

    async def _peripheral_pump(self) -> None:
        """Notify queued PDUs, one session after another, yielding after each."""
        while True:
            self._wake_periph.clear()
            sent = 0
            for link in list(self._sessions.values()):
                periph = self._peripheral
                if periph is None:
                    return
                for pdu in link.session.take_pdus(4):
                    if not periph.notify(pdu):
                        link.session.closed = True
                        link.session.close_reason = "notification failed"
                        break
                    sent += 1
                    self.counters["notified"] += 1
                    if self.config.pace_notifications:
                        await asyncio.sleep(0)  # let dbus-next drain (module docstring)
                self._process(link)
            if not sent:
                await self._wake_periph.wait()

    # --- central side -------------------------------------------------------------------
    def _on_advert(self, device: Any, adv: Any) -> None:
        summary = summary_from_advert(dict(adv.manufacturer_data))
        if summary is None:
            return
        now = asyncio.get_running_loop().time()
        addr = str(device.address)
        old = self._candidates.get(addr)
        first = old.first_seen if old is not None and old.summary.addr == summary.addr else now
        self._candidates[addr] = Candidate(addr, summary, adv.rssi, first, now)
        self._devices[addr] = device

    async def _scanner(self) -> None:
        from bleak import BleakScanner

        scanner = BleakScanner(
            self._on_advert, [SERVICE_UUID], bluez={"adapter": self.config.adapter}
        )
        try:
            while True:
                battery, charging, _ = self._summary_source()
                on, off = scan_duty(battery, charging)
                await scanner.start()
                await asyncio.sleep(on)
                if off > 0:
                    await scanner.stop()
                    await asyncio.sleep(off)
                else:
                    await scanner.stop()
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(scanner.stop(), 2.0)

    def _connect_some(self, now: float) -> None:
        links = [*self._sessions.values(), *self._centrals]
        views = [
            LinkView(int(lk.link_id), lk.peer.address.raw[:2],
                     self._advice.get(lk.link_id, True), lk.created)
            for lk in links if lk.link_id is not None
        ]
        _, _, cluster = self._summary_source()
        ranked = rank(
            [c for c in self._candidates.values() if self._retry_at.get(c.device, 0) <= now],
            own_addr=self._own.raw[:2], own_cluster=fold_cluster(cluster),
            linked={a.raw[:2] for a in self._by_peer},
            busy=self._busy | {lk.device for lk in self._centrals}, now=now,
            grace=self.config.grace,
        )
        handshaking = sum(1 for lk in links if lk.link_id is None and not lk.session.closed)
        pending = handshaking + len(self._busy)
        drop, opens = plan(views, max_links=max(0, self.config.max_links - pending),
                           waiting=len(ranked))
        if drop and now - self._rebalanced_at < self.config.rebalance_interval:
            # One trade at a time: a rebalancing drop waits until the last one settled.
            opens -= min(opens, len(drop))
            drop = []
        elif drop:
            self._rebalanced_at = now
        for link in links:
            if link.link_id is not None and int(link.link_id) in drop:
                self._log.info("ble.rebalance_drop", peer=link.peer.address.short)
                link.close()
        for cand in ranked[:opens]:
            self._busy.add(cand.device)
            self._spawn(self._connect(cand), self._up_tasks)

    async def _connect(self, cand: Candidate) -> None:
        loop = asyncio.get_running_loop()
        device = self._devices.get(cand.device, cand.device)
        link: BleLink | None = None
        holder: list[BleLink] = []

        def on_notify(data: bytes) -> None:
            if holder:
                self._central_rx(holder[0], data)

        def on_disconnect() -> None:
            if holder:
                holder[0].session.closed = True
                holder[0].session.close_reason = holder[0].session.close_reason or "disconnected"
                self._wake(holder[0])

        conn = CentralConnection(device, on_notify, on_disconnect)
        try:
            await conn.connect(connect_timeout=self.config.connect_timeout)
            session = BleSession(
                self.identity, central=True, session=self._rng.randint(1, 127),
                mtu=conn.mtu, now=loop.time(), config=self.config.session,
            )
            link = BleLink(session, device=cand.device, conn=conn, rssi=cand.rssi,
                           wake=self._wake)
            holder.append(link)
            self._centrals.add(link)
            self._busy.discard(cand.device)  # counted as a central link from now on
            await self._central_pump(link)
        except Exception as exc:
            self._log.debug("ble.connect_failed", device=cand.device, error=repr(exc))
            await conn.disconnect()
        finally:
            self._busy.discard(cand.device)
            self._after_attempt(cand.device, link, loop.time())

    def _after_attempt(self, device: str, link: BleLink | None, now: float) -> None:
        """Back off from a device whose connections fail or die young (doubling up to
        ``backoff_max``); a link that lived a while resets it."""
        lived = now - link.created if link is not None and link.session.peer else 0.0
        if lived >= self.config.backoff_max:
            self._backoff.pop(device, None)
            return
        delay = self._backoff.get(device, self.config.retry_after / 2) * 2
        delay = min(self.config.backoff_max, delay)
        self._backoff[device] = delay
        self._retry_at[device] = now + delay * self._rng.uniform(0.5, 1.0)

    def _central_rx(self, link: BleLink, data: bytes) -> None:
        try:
            pdu = parse_pdu(data)
        except WireError:
            self.counters["bad_pdus"] += 1
            return
        if pdu.session != link.session.session:
            return  # a notification for another central of that peripheral
        link.session.receive(pdu, now=asyncio.get_running_loop().time())
        self._process(link)
        self._wake(link)

    async def _central_pump(self, link: BleLink) -> None:
        """Write queued PDUs with response, one at a time (GATT flow control)."""
        conn = link.conn
        assert conn is not None
        loop = asyncio.get_running_loop()
        try:
            while True:
                link.wakeup.clear()
                pdus = link.session.take_pdus(8)
                for pdu in pdus:
                    await conn.write(pdu)
                    link.session.last_tx = loop.time()
                self._process(link)
                if link.session.closed and not link.session.pending:
                    break
                if not pdus:
                    await link.wakeup.wait()
        except Exception as exc:
            link.session.closed = True
            link.session.close_reason = link.session.close_reason or f"write failed: {exc!r}"
        finally:
            self._finish(link)
            self._centrals.discard(link)
            shared = link.session.peer is not None and any(
                o is not link and o.session.peer == link.session.peer and not o.session.closed
                for o in [*self._sessions.values(), *self._centrals]
            )
            if not shared:  # one LE connection per pair: do not cut a kept link's
                await conn.disconnect()

    # --- both sides -------------------------------------------------------------------
    def _wake(self, link: BleLink) -> None:
        if link.central:
            link.wakeup.set()
        else:
            self._wake_periph.set()

    def _process(self, link: BleLink) -> None:
        """After any input: announce a new link, deliver frames, report a closed one."""
        session = link.session
        events = self._events
        if session.peer is not None and not link.announced and not session.closed:
            link.announced = True
            self._authenticated(link)
        if session.frames and link.link_id is not None and events is not None:
            frames, session.frames = session.frames, []
            for frame in frames:
                events.frame_received(link.link_id, frame)
        if session.closed:
            self._finish(link)

    def _finish(self, link: BleLink) -> None:
        session = link.session
        if not link.central and not session.pending and self._sessions.get(session.session) is link:
            del self._sessions[session.session]
        if link.link_id is None:
            return
        link_id, link.link_id = link.link_id, None
        self._advice.pop(link_id, None)
        peer = session.peer
        if peer is not None and self._by_peer.get(peer.address) is link:
            del self._by_peer[peer.address]
        if self._events is not None:
            self._events.link_down(link_id)
        self._log.info("ble.link_down", peer=peer.address.short if peer else None,
                       link=link.description, reason=session.close_reason)

    def _authenticated(self, link: BleLink) -> None:
        peer = link.peer.address
        if peer == self._own:
            link.session.close("connected to ourselves", CLOSE_DUPLICATE)
            return
        old = self._by_peer.get(peer)
        if old is not None:
            if self._preference(link) >= self._preference(old):
                self._log.debug("ble.duplicate_link", peer=peer.short, kept=old.description)
                link.session.close("duplicate link", CLOSE_DUPLICATE)
                self._wake(link)
                return
            old.session.close("replaced by a preferred link", CLOSE_DUPLICATE)
            self._finish(old)
            self._wake(old)
        self._by_peer[peer] = link
        assert self._events is not None
        link.link_id = self._events.link_up(link)
        self._log.info("ble.link_up", peer=peer.short, link=link.description)

    def _preference(self, link: BleLink) -> tuple[bytes, float]:
        """Both ends keep the link whose central has the smaller address; of two in the
        same direction the newer (the older one is a leftover of a dropped connection)."""
        central = self._own if link.central else link.peer.address
        return central.raw, -link.created

    def _link_count(self) -> int:
        """Links and connections in progress, both roles (what ``max_links`` bounds)."""
        open_sessions = sum(1 for lk in self._sessions.values() if not lk.session.closed)
        return open_sessions + len(self._centrals) + len(self._busy)

    async def _ticker(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.config.tick)
            try:
                self._tick(loop.time())
            except Exception as exc:  # one bad tick must not stop the timers for good
                self._log.error("ble.tick_failed", error=repr(exc))

    def _tick(self, now: float) -> None:
        cfg = self.config
        # A closed peripheral session whose last PDUs cannot leave (no credits from a
        # vanished central) is forgotten after a while: it must not hold a slot.
        for sid, link in list(self._sessions.items()):
            if link.session.closed and now - link.session.last_rx > cfg.probe_timeout:
                self._finish(link)
                del self._sessions[sid]
        for link in [*self._sessions.values(), *self._centrals]:
            if link.probe_at is not None and now - link.probe_at > cfg.probe_timeout:
                if link.session.last_rx < link.probe_at:
                    link.session.closed = True
                    link.session.close_reason = "peer gone (no answer after a disconnect)"
                link.probe_at = None
            before = link.session.pending
            link.session.tick(now=now)
            if link.session.pending != before or link.session.closed:
                self._wake(link)
            self._process(link)
        if not self._up:
            return
        self._connect_some(now)
        if now - self._advert_at >= cfg.advert_refresh and self._peripheral is not None:
            self._advert_at = now
            summary = self._summary_bytes()
            periph = self._peripheral
            self._spawn(periph.advertise(summary), self._up_tasks)
