"""What `GatewayApp` starts when it opens the platform, it stops on shutdown."""

from __future__ import annotations

import gc
from collections.abc import Callable

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
