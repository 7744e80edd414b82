"""Every registered source type passes the conformance kit (:mod:`tests.conformance`).

Parametrised over the registry, so a new source type is tested as soon as it registers
itself, and fails until it has a harness (``tests/harnesses/<type>.py``). The checks run
each source in-process against real services (PostgreSQL, MariaDB, a folder) through a
real SQLite outbox, as the daemon's capture loop does; the daemon-level check runs the
daemon itself with the toy source.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from cdc_bridge.adapters.registry import REGISTRY
from tests import conformance
from tests.conformance import Harness, harness_for
from tests.services.nats_server import NatsServer

SOURCE_TYPES = sorted(REGISTRY)

Check = Callable[[Harness, Path], Awaitable[None]]


@pytest.fixture(params=SOURCE_TYPES)
def source_type(request: pytest.FixtureRequest) -> str:
    value: str = request.param
    return value


async def run_check(check: Check, source_type: str, request: pytest.FixtureRequest,
                    tmp_path: Path) -> None:
    async with harness_for(source_type, request, tmp_path / "harness") as harness:
        await check(harness, tmp_path / "kit")


def test_has_conformance_harness(source_type: str) -> None:
    conformance.load_harness(source_type)


def test_missing_harness_fails_with_a_clear_message() -> None:
    with pytest.raises(pytest.fail.Exception, match=(
            r"^source type no_such_source has no conformance harness: "
            r"add tests/harnesses/no_such_source\.py$")):
        conformance.load_harness("no_such_source")


async def test_resumes_exactly_after_committed_checkpoint(
        source_type: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    await run_check(conformance.check_resumes_exactly, source_type, request, tmp_path)


async def test_forgets_nothing_before_commit(
        source_type: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    await run_check(conformance.check_forgets_nothing_before_commit, source_type, request,
                    tmp_path)


async def test_daemon_acknowledges_only_committed_checkpoints(
        tmp_path: Path, nats_server: NatsServer, monkeypatch: pytest.MonkeyPatch) -> None:
    await conformance.check_daemon_acknowledges_after_commit(tmp_path, nats_server.url,
                                                             monkeypatch)


async def test_close_twice_is_harmless(
        source_type: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    await run_check(conformance.check_close_twice, source_type, request, tmp_path)


async def test_unreachable_source_raises_retryable_error(
        source_type: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    await run_check(conformance.check_unreachable_is_retryable, source_type, request,
                    tmp_path)


async def test_missing_privilege_raises_fatal_error(
        source_type: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    await run_check(conformance.check_missing_privilege_is_fatal, source_type, request,
                    tmp_path)


async def test_reports_connected_and_lag(
        source_type: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    await run_check(conformance.check_reports_connected_and_lag, source_type, request,
                    tmp_path)
