"""fsnn.locks: the advisory lock behind the dataset preparation and the run-directory claim."""

import errno
import fcntl
import os

import pytest

from fsnn import locks


class Busy(Exception):
    pass


def test_a_held_lock_is_busy_with_the_holders_pid_and_free_after(tmp_path):
    lock = tmp_path / "deep" / "x.lock"  # folders are created
    with locks.exclusive(lock):
        with pytest.raises(Busy, match=f"^{os.getpid()}$"):
            with locks.exclusive(lock, busy=Busy):  # another open file: flock makes it wait or fail
                pytest.fail("entered a lock that is held")
    with locks.exclusive(lock, busy=Busy):  # released on leaving
        assert lock.read_text() == f"{os.getpid()}\n"


def test_a_filesystem_without_locks_warns_and_goes_on(tmp_path, monkeypatch):
    def unsupported(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", unsupported)
    entered = False
    with pytest.warns(UserWarning, match="going on without the lock"):
        with locks.exclusive(tmp_path / "x.lock", busy=Busy):
            entered = True
    assert entered
