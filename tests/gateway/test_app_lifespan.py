"""What `GatewayApp` starts when it opens the platform, it stops on shutdown."""

from __future__ import annotations

import gc
from collections.abc import Callable
from pathlib import Path

from tests.conftest import RunningServer


def test_shutdown_stops_the_sweeper_and_gives_the_collector_back(
    server_factory: Callable[..., RunningServer],
) -> None:
    thresholds = gc.get_threshold()
    running = server_factory()
    s3 = running.app._s3
    assert s3 is not None and s3.sweeper is not None
    assert s3.sweeper._periodic._task is not None  # sweeping while the app serves
    assert gc.get_freeze_count() > 0  # start-up's objects are out of the collector's way
    assert gc.get_threshold() != thresholds
    running.stop()
    assert not running.thread.is_alive()
    assert s3.sweeper._periodic._task is None
    assert gc.get_freeze_count() == 0
    assert gc.get_threshold() == thresholds


def test_apps_serving_at_once_share_the_collector_and_the_last_gives_it_back(
    server_factory: Callable[..., RunningServer], tmp_path: Path
) -> None:
    thresholds = gc.get_threshold()
    first = server_factory(data_dir=tmp_path / "first")
    second = server_factory(data_dir=tmp_path / "second")
    tuned = gc.get_threshold()
    assert tuned != thresholds
    first.stop()
    assert gc.get_threshold() == tuned and gc.get_freeze_count() > 0  # the second still serves
    second.stop()
    assert gc.get_threshold() == thresholds
    assert gc.get_freeze_count() == 0
