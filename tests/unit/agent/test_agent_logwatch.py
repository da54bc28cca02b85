"""LogWatch: followers are woken by their files changing, their process exiting, or the close; not
otherwise. The looks are driven by hand (_look) so nothing here depends on timing."""

from __future__ import annotations

import threading
from pathlib import Path

from chital.agent.logwatch import LogWatch


def test_a_follower_is_woken_by_growth_rotation_and_exit_only(tmp_path: Path) -> None:
    out, err = tmp_path / "stdout", tmp_path / "stderr"
    out.write_bytes(b"before\n")
    exited = threading.Event()
    watch = LogWatch(interval=3600.0)  # its thread never looks by itself here
    try:
        follower = watch.follow((str(out), str(err)), exited.is_set)
        watch._look()
        assert not follower.wake.is_set()  # nothing changed since it registered
        with out.open("ab") as f:
            f.write(b"line\n")
        watch._look()
        assert follower.wake.is_set()
        follower.wake.clear()
        watch._look()
        assert not follower.wake.is_set()  # the same size again: no wake
        err.write_bytes(b"")  # a file that appears counts as a change
        watch._look()
        assert follower.wake.is_set()
        follower.wake.clear()
        out.rename(tmp_path / "stdout.1")  # rotated: a new file of the same size
        out.write_bytes(b"before\nline\n")
        watch._look()
        assert follower.wake.is_set()
        follower.wake.clear()
        exited.set()
        watch._look()
        assert follower.wake.is_set()
        watch.unfollow(follower)
        assert watch.followers() == 0
    finally:
        watch.close()


def test_followers_of_one_file_share_a_look_and_close_wakes_them_all(tmp_path: Path) -> None:
    log = tmp_path / "stdout"
    log.write_bytes(b"")
    watch = LogWatch(interval=3600.0)
    followers = [watch.follow((str(log),), lambda: False) for _ in range(50)]
    log.write_bytes(b"x\n")
    watch._look()
    assert all(f.wake.is_set() for f in followers)
    for f in followers:
        f.wake.clear()
    watch.close()
    assert all(f.wake.is_set() for f in followers)
    late = watch.follow((str(log),), lambda: False)
    assert late.wake.is_set()  # after the close: woken at once, never registered
    assert watch.followers() == 50
