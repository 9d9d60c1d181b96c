"""The journal's segments: mapped files with reserved space, and what a reader finds in them."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from cmdrdata_autotrack.export import journal as journal_module
from cmdrdata_autotrack.export.journal import SEGMENT_BYTES, Journal, read_segment

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

# None of these tests drives the openai SDK: newest SDK only (see tests/run.sh).
pytestmark = pytest.mark.sdk_independent

HEADER = {"identity": "test"}


def line(n: int, size: int = 40) -> bytes:
    body = f'{{"n":{n},"pad":"'.encode()
    return body + b"x" * max(0, size - len(body) - 3) + b'"}\n'


def segments(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.jsonl"))


def read(path: Path) -> tuple[dict[str, object] | None, list[bytes]]:
    fd = os.open(path, os.O_RDONLY)
    try:
        return read_segment(fd)
    finally:
        os.close(fd)


def test_lines_are_readable_while_mapped_and_the_segment_is_cut_when_closed(
    tmp_path: Path,
) -> None:
    journal = Journal(tmp_path, 10**9, HEADER)
    lines = [line(i) for i in range(50)]
    for item in lines:
        assert journal.append(item)
    (path,) = segments(tmp_path)
    assert path.stat().st_size == SEGMENT_BYTES  # reserved: a full disk refuses no line
    header, found = read(path)  # what an importer reads if this process died now
    assert header is not None and header["identity"] == "test"
    assert found == [item.rstrip(b"\n") for item in lines]
    journal.rotate()
    assert path.stat().st_size == len(path.read_bytes().split(b"\n", 1)[0]) + 1 + sum(
        map(len, lines)
    )
    assert b"\x00" not in path.read_bytes()
    assert read(path)[1] == found


def test_a_line_cut_short_by_a_kill_is_skipped(tmp_path: Path) -> None:
    """A process killed while copying a line: its newline is copied last, so it has none."""
    script = f"""
import os, sys
sys.path[:0] = {sys.path!r}
from pathlib import Path
from cmdrdata_autotrack.export.journal import Journal
journal = Journal(Path({str(tmp_path)!r}), 10**9, {{"identity": "test"}})
for i in range(3):
    assert journal.append(b'{{"n":%d}}\\n' % i)
segment = journal._segment
half = b'{{"n":3,"half":'
segment.map[segment.pos : segment.pos + len(half)] = half  # the kill comes mid-copy
os._exit(0)
"""
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60)
    (path,) = segments(tmp_path)
    assert read(path)[1] == [b'{"n":0}', b'{"n":1}', b'{"n":2}']


def test_no_space_to_reserve_falls_back_to_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(fd: int, offset: int, length: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", full)
    journal = Journal(tmp_path, 10**9, HEADER)
    lines = [line(i) for i in range(5)]
    for item in lines:
        assert journal.append(item)
    (path,) = segments(tmp_path)
    assert journal._segment is not None and journal._segment.map is None
    data = path.read_bytes()
    assert b"\x00" not in data and data.endswith(b"".join(lines))  # right after the header
    assert read(path)[1] == [item.rstrip(b"\n") for item in lines]


def test_full_segments_rotate_and_a_long_line_gets_a_segment_of_its_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(journal_module, "SEGMENT_BYTES", 8192)
    journal = Journal(tmp_path, 10**9, HEADER)
    small = [line(i, 1000) for i in range(20)]
    for item in small:
        assert journal.append(item)
    long = line(99, 50_000)
    assert journal.append(long)
    journal.rotate()
    found = [entry for path in segments(tmp_path) for entry in read(path)[1]]
    assert sorted(found) == sorted(item.rstrip(b"\n") for item in [*small, long])
    assert len(segments(tmp_path)) >= 3
    # every closed segment is ready to import, and holds exactly what it was given
    ready = list(journal.ready_segments())
    for _, fd in ready:
        os.close(fd)
    assert len(ready) == len(segments(tmp_path))


def test_the_prepared_segment_is_used_next_and_never_left_behind(tmp_path: Path) -> None:
    journal = Journal(tmp_path, 10**9, HEADER)
    journal.prepare()
    assert segments(tmp_path) == []  # a process that has written nothing needs none
    assert journal.append(line(0))
    journal.rotate()
    journal.prepare()
    spare = journal._spare
    assert spare is not None
    ready = [path for path, fd in journal.ready_segments() if os.close(fd) is None]
    assert spare.path not in ready  # locked, and this process's: never imported
    assert journal.append(line(1))
    assert journal._segment is not None and journal._segment.path == spare.path
    journal.rotate()
    journal.prepare()
    before = journal.pending_bytes()
    left = journal._spare
    assert left is not None
    journal.discard_spare()
    assert not left.path.exists()
    assert journal.pending_bytes() < before
    assert sorted(entry for path in segments(tmp_path) for entry in read(path)[1]) == [
        line(0).rstrip(b"\n"),
        line(1).rstrip(b"\n"),
    ]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork only")
def test_a_forked_child_never_writes_into_its_parents_mapped_segment(tmp_path: Path) -> None:
    journal = Journal(tmp_path, 10**9, HEADER)
    assert journal.append(b'{"who":"parent","n":0}\n')
    pid = os.fork()
    if pid == 0:  # the child
        try:  # the journal's after-fork hook has run (os.register_at_fork)
            ok = journal.append(b'{"who":"child","n":0}\n')
            journal.rotate()
            os._exit(0 if ok else 3)
        except BaseException:
            os._exit(4)
    _, code = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(code) == 0
    assert journal.append(b'{"who":"parent","n":1}\n')
    journal.rotate()
    by_segment = {path.name: read(path)[1] for path in segments(tmp_path)}
    assert sorted(by_segment.values()) == [
        [b'{"who":"child","n":0}'],
        [b'{"who":"parent","n":0}', b'{"who":"parent","n":1}'],
    ]


FORK_DURING_IMPORT = """
import builtins, os, sys, threading
sys.path.insert(0, sys.argv[1])
from cmdrdata_autotrack import forksafe
forksafe.LAZY_IMPORTS = forksafe.LAZY_IMPORTS | {"slow_dependency"}
forksafe.watch_imports()
builtins.probe_started, builtins.probe_release = threading.Event(), threading.Event()
importer = threading.Thread(target=__import__, args=("slow_dependency",))
importer.start()
assert builtins.probe_started.wait(30)
builtins.probe_release.set()  # the import goes on for a while yet: the fork comes first
pid = os.fork()
if pid == 0:
    import slow_dependency  # never returns if the module stayed locked in the child
    os._exit(0 if slow_dependency.DONE else 3)
importer.join()
deadline = __import__("time").monotonic() + 30
while __import__("time").monotonic() < deadline:
    done, status = os.waitpid(pid, os.WNOHANG)
    if done:
        sys.exit(os.waitstatus_to_exitcode(status))
    threading.Event().wait(0.05)  # bounded poll of the child's exit
os.kill(pid, 9)
sys.exit("the child hung importing a module its parent's thread was importing at the fork")
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork only")
def test_a_fork_during_a_lazy_import_never_hangs_the_child(tmp_path: Path) -> None:
    """A thread of the agent is importing a dependency (``requests``, when the first sender
    starts) as the app forks: the fork waits for it (bounded), so the child can import it
    too."""
    (tmp_path / "slow_dependency.py").write_text(
        "import builtins, time\n"
        "builtins.probe_started.set()\n"
        "builtins.probe_release.wait(30)\n"
        "time.sleep(0.5)  # an import that takes a while (requests takes about that)\n"
        "DONE = True\n"
    )
    done = _run_script(FORK_DURING_IMPORT, tmp_path)
    assert done.returncode == 0, done.stderr


FORK_DURING_A_STUCK_IMPORT = """
import builtins, os, sys, threading
sys.path.insert(0, sys.argv[1])
from cmdrdata_autotrack import forksafe
forksafe.LAZY_IMPORTS = forksafe.LAZY_IMPORTS | {"stuck_dependency"}
forksafe.FINISH_IMPORTS_S = 0.2
forksafe.watch_imports()
builtins.probe_started, builtins.probe_release = threading.Event(), threading.Event()
threading.Thread(target=__import__, args=("stuck_dependency",), daemon=True).start()
assert builtins.probe_started.wait(30)
pid = os.fork()  # the import never ends: the fork goes on all the same
if pid == 0:
    os._exit(0)
_, status = os.waitpid(pid, 0)
builtins.probe_release.set()
sys.exit(os.waitstatus_to_exitcode(status))
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork only")
def test_a_fork_never_waits_for_good_for_an_import(tmp_path: Path) -> None:
    """An import that does not end (its thread waits for the app): the fork waits a moment
    for it, then goes on (the app is never held up at a fork)."""
    (tmp_path / "stuck_dependency.py").write_text(
        "import builtins\nbuiltins.probe_started.set()\nbuiltins.probe_release.wait(600)\n"
    )
    done = _run_script(FORK_DURING_A_STUCK_IMPORT, tmp_path)
    assert done.returncode == 0, done.stderr


def _run_script(script: str, folder: Path) -> subprocess.CompletedProcess[str]:
    """``script`` in a fresh interpreter, ``folder`` (its probe module's) as its argument."""
    return subprocess.run(
        [sys.executable, "-c", script, str(folder)], capture_output=True, text=True, timeout=120
    )


class _HeldClose:
    """``_Segment.close`` held at its start until released, noting which thread closed what."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.entered, self.release = threading.Event(), threading.Event()
        self.closed_by: list[int] = []
        close = journal_module._Segment.close

        def held(segment: journal_module._Segment) -> None:
            self.closed_by.append(threading.get_ident())
            self.entered.set()
            if not self.release.wait(30):
                raise AssertionError("never released")
            close(segment)

        monkeypatch.setattr(journal_module._Segment, "close", held)


def test_lines_are_appended_while_a_segment_is_being_closed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Closing a segment (unmapping and cutting it) takes the background thread hundreds
    of microseconds: the app's thread never waits for it."""
    journal = Journal(tmp_path, 10**9, HEADER)
    assert journal.append(line(0))
    held = _HeldClose(monkeypatch)
    rotating = threading.Thread(target=journal.rotate)
    rotating.start()
    try:
        assert held.entered.wait(30)
        appended = threading.Event()
        appender = threading.Thread(target=lambda: journal.append(line(1)) and appended.set())
        appender.start()
        assert appended.wait(30), "an append waited for a segment being closed"
        appender.join()
        # the segment being closed is still this process's: never ready, and waited for
        assert [path for path, fd in journal.ready_segments() if os.close(fd) is None] == []
        assert len(journal.unimported()) == 1
    finally:
        held.release.set()
        rotating.join()
    journal.rotate()
    ready = [path for path, fd in journal.ready_segments() if os.close(fd) is None]
    assert sorted(entry for path in ready for entry in read(path)[1]) == [
        line(0).rstrip(b"\n"),
        line(1).rstrip(b"\n"),
    ]


def test_a_full_segment_is_set_aside_by_the_app_and_closed_by_the_next_rotation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(journal_module, "SEGMENT_BYTES", 8192)
    journal = Journal(tmp_path, 10**9, HEADER)
    held = _HeldClose(monkeypatch)
    held.release.set()
    lines = [line(i, 1000) for i in range(30)]  # about four segments' worth
    for item in lines:
        assert journal.append(item)
    assert held.closed_by == []  # the app's thread closed none of them
    assert len(journal.unimported()) >= 3  # set aside: waited for by a flush
    rotating = threading.Thread(target=journal.rotate)
    rotating.start()
    rotating.join()
    assert len(held.closed_by) >= 4 and set(held.closed_by) == {rotating.ident}
    ready = [path for path, fd in journal.ready_segments() if os.close(fd) is None]
    assert len(ready) == len(held.closed_by)
    assert sorted(entry for path in ready for entry in read(path)[1]) == sorted(
        item.rstrip(b"\n") for item in lines
    )


@pytest.mark.skipif(not hasattr(os, "fork") or fcntl is None, reason="fork and flock only")
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # a fork with threads (3.12+)
def test_a_child_forked_while_a_segment_is_closed_lets_go_of_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The child gets a copy of the descriptor being closed: it must close it, or the
    segment's lock would stay held, and its events unimported, for as long as it lives."""
    journal = Journal(tmp_path, 10**9, HEADER)
    assert journal.append(line(0))
    (path,) = segments(tmp_path)
    held = _HeldClose(monkeypatch)
    rotating = threading.Thread(target=journal.rotate)
    rotating.start()
    assert held.entered.wait(30)
    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its after-fork hooks have run
        os.write(ready_w, b"r")
        os.read(go_r, 1)  # lives until the parent has looked
        os._exit(0)
    try:
        assert os.read(ready_r, 1) == b"r"
        held.release.set()
        rotating.join()
        fd = os.open(path, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # raises if the child holds it
        finally:
            os.close(fd)
    finally:
        held.release.set()
        os.write(go_w, b"g")
        _, status = os.waitpid(pid, 0)
        for end in (ready_r, ready_w, go_r, go_w):
            os.close(end)
    assert os.waitstatus_to_exitcode(status) == 0
