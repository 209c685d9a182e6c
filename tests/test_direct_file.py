"""The trace's appender: O_DIRECT for whole blocks, the page cache for the tail, one file."""
import errno
import os

import numpy as np
import pytest

from switch import direct_file
from switch.direct_file import BLOCK, DirectAppender

PIECES = (1, BLOCK - 1, BLOCK + 1, 3 * BLOCK, 7, 5 * BLOCK + 13, 2, BLOCK)


def _append_and_check(path, stage):
    rng = np.random.default_rng(3)
    app = DirectAppender(path, stage_bytes=stage)
    want = b""
    for k, n in enumerate(PIECES):
        data = rng.integers(0, 256, n, dtype=np.uint8)
        app.write(data if k % 2 else data.tobytes())   # numpy arrays and bytes alike
        want += data.tobytes()
        if k % 3 == 2:   # after a flush the file holds every byte so far, tail included
            app.flush()
            assert path.read_bytes() == want
    assert app.size == len(want)
    app.close()
    app.close()   # idempotent
    assert path.read_bytes() == want
    return app


def test_pieces_that_straddle_blocks_and_the_stage_come_back_whole(tmp_path):
    # a stage of two blocks: most pieces fill it several times over
    _append_and_check(tmp_path / "t.bin", 2 * BLOCK)


def test_without_o_direct_the_same_bytes_go_through_the_page_cache(tmp_path, monkeypatch):
    real_open = os.open

    def no_direct(path, flags, *a):
        if flags & os.O_DIRECT:   # as tmpfs answers
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_open(path, flags, *a)

    monkeypatch.setattr(direct_file.os, "open", no_direct)
    app = _append_and_check(tmp_path / "t.bin", 2 * BLOCK)
    assert app.direct is False


def test_a_new_appender_truncates_the_file(tmp_path):
    path = tmp_path / "t.bin"
    path.write_bytes(b"x" * 10000)
    app = DirectAppender(path)
    app.write(b"abc")
    app.close()
    assert path.read_bytes() == b"abc"


def test_an_unwritable_path_is_refused_at_open():
    with pytest.raises(OSError):   # no such directory
        DirectAppender("/nonexistent-dir/t.bin")
