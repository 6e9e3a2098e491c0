"""System-test fixtures: network-namespace labs that are always torn down, with the
daemons' logs printed (and copied next to the test's tmp dir) when a test fails."""

from __future__ import annotations

import functools
from collections.abc import Callable, Generator, Iterable, Sequence
from pathlib import Path

import pytest

from meshd.testing.netns import NetnsLab, unavailable_reason

LabFactory = Callable[..., NetnsLab]


@functools.cache
def _netns_unavailable() -> str | None:
    return unavailable_reason()


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("netns") is not None:
        reason = _netns_unavailable()
        if reason is not None:
            pytest.skip(f"netns system test skipped: {reason}")


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


@pytest.fixture
def make_lab(request: pytest.FixtureRequest, tmp_path: Path) -> Generator[LabFactory, None, None]:
    """``make_lab(nodes, links, ipv4=False)``; every lab made is closed after the test,
    whatever happened (failure, timeout, KeyboardInterrupt)."""
    labs: list[NetnsLab] = []

    def factory(
        nodes: Sequence[str], links: Iterable[tuple[str, str]], *, ipv4: bool = False
    ) -> NetnsLab:
        made = NetnsLab.create(nodes, links, tmp_path / f"lab{len(labs)}", ipv4=ipv4)
        labs.append(made)
        return made

    try:
        yield factory
    finally:
        rep = getattr(request.node, "rep_call", None)
        failed = rep is None or rep.failed
        for made in labs:
            if failed and made.daemons:
                logs = made.collect_logs(tmp_path / "logs")
                print(f"\n===== meshd logs ({made.tag}; full logs in {tmp_path / 'logs'}) =====")
                print(logs)
            made.close()
