"""Crash safety: the daemon killed with SIGKILL while eight writers are busy."""

from __future__ import annotations

import os
from pathlib import Path

from tests.harness import crash


def test_kill_9_loop_loses_no_acknowledged_file(tmp_path: Path) -> None:
    iterations = int(os.environ.get("WORM_FS_CRASH_ITERATIONS", "5"))
    report = crash.run(iterations, tmp_path, seed=1234)
    assert report.problems == []
    assert report.iterations == iterations
    assert report.acknowledged > 0  # the writers did get work done between crashes
    assert max(report.remount_s) <= 5.0
    # The kills landed on group commits: closes of several writers shared each sync.
    assert report.commits_shared > 0


def test_content_is_a_function_of_the_name() -> None:
    assert crash.content("w1-7-12345") == crash.content("w1-7-12345")
    assert len(crash.content("w0-1-10000")) == 10000
    assert crash.content("w0-1-10000") != crash.content("w0-2-10000")
