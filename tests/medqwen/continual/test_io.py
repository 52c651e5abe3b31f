"""medqwen.continual.io: the run lock that lets two grid commands share one grid (one per core)."""

import os
import subprocess
import sys

from medqwen.continual.io import pid_alive, take_lock


def test_lock_is_taken_refused_while_its_holder_lives_and_taken_over_when_it_is_gone(tmp_path):
    assert take_lock(tmp_path) is None and (tmp_path / "grid.lock").read_text() == str(os.getpid())
    assert take_lock(tmp_path) is None  # this process's own lock (a resumed run) is taken again
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / "grid.lock").write_text(str(other.pid))
        assert pid_alive(other.pid) and take_lock(tmp_path) == other.pid
    finally:
        other.kill()
        other.wait()
    assert not pid_alive(other.pid)
    assert take_lock(tmp_path) is None and (tmp_path / "grid.lock").read_text() == str(os.getpid())
    (tmp_path / "grid.lock").write_text("not a pid")  # a torn write is stale, not an error
    assert take_lock(tmp_path) is None
