"""Lasting state is frozen out of the collector's way, and released again at the next settle."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from fastapi.testclient import TestClient

from service import heap
from service.app import create_app
from service.auth import AuthSettings
from service.guideline_source import DirectorySource, GuidelinePublisher
from service.settings import Settings
from tests.conftest import FIXTURE_GUIDELINES
from tests.support.live_service import retargeted


class Node:
    """Something that can be part of a reference cycle and be watched with a weakref."""

    other: Node | None = None


@pytest.fixture(autouse=True)
def unfrozen() -> Iterator[None]:
    gc.unfreeze()
    yield
    gc.unfreeze()


def test_settle_freezes_what_is_alive_and_frees_what_an_earlier_settle_kept() -> None:
    first, second = Node(), Node()
    first.other, second.other = second, first  # a cycle: only the collector can free it
    alive = weakref.ref(first)
    heap.settle()
    assert gc.get_freeze_count() > 0
    del first, second
    gc.collect()
    assert alive() is not None  # frozen: out of the collector's reach (a replaced set, say)
    heap.settle()
    assert alive() is None  # the next settle unfreezes and collects it


def test_the_service_settles_once_its_guidelines_are_loaded(tmp_path: Path) -> None:
    assert gc.get_freeze_count() == 0
    settings = Settings(
        guidelines=FIXTURE_GUIDELINES,
        auth=AuthSettings(enabled=False),
        feedback_database=tmp_path / "feedback.sqlite",
    )
    with TestClient(create_app(settings)):
        assert gc.get_freeze_count() > 0


def test_a_swap_seen_by_the_watch_settles_again(
    guideline_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settled: list[str] = []
    publisher = GuidelinePublisher(DirectorySource(guideline_dir), poll_seconds=0.01)
    monkeypatch.setattr(heap, "settle", lambda: settled.append(publisher.snapshot.fingerprint))
    path = guideline_dir / "example.yaml"
    path.write_text(retargeted(path.read_text(), 54))

    async def watch_until_swapped() -> None:
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(publisher.watch)
                while not settled:
                    await anyio.sleep(0.01)
                tasks.cancel_scope.cancel()

    anyio.run(watch_until_swapped)
    assert settled == [publisher.snapshot.fingerprint] and publisher.swaps == 2
