"""A throwaway PostgreSQL server on 127.0.0.1, for the fleet ledger's tests.

``initdb`` into a temporary folder (trust authentication, no fsync: nothing here
must survive the tests), then ``postgres`` on a free port, listening on
127.0.0.1 only, its socket in that folder too. PostgreSQL refuses to run as
root: as root, the server runs as an unprivileged system user (``postgres``,
which Debian's package creates, else ``cmdrdata-pg``, created here).

The server binaries are looked for on ``PATH``, then where Debian puts them
(``/usr/lib/postgresql/VERSION/bin``, newest first). Without them
:func:`find_bindir` returns ``None`` (the tests skip), except under CI (:func:`required`),
where it raises, as ``conftest.system_tool`` does.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
from pathlib import Path

INSTALL = "apt-get install postgresql"
_USERS = ("postgres", "cmdrdata-pg")
_READY = "database system is ready to accept connections"


def find_bindir() -> Path | None:
    """The folder holding ``initdb`` and ``postgres``, or ``None`` (CI: an error)."""
    candidates: list[Path] = []
    found = shutil.which("initdb")
    if found:
        candidates.append(Path(found).resolve().parent)

    def version(path: Path) -> tuple[int, ...]:
        return tuple(int(n) for n in re.findall(r"\d+", path.parent.name))

    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=version, reverse=True)
    for folder in candidates:
        if (folder / "initdb").is_file() and (folder / "postgres").is_file():
            return folder
    if required():
        raise RuntimeError(f"PostgreSQL's initdb is required under CI; tests/run.sh: {INSTALL}")
    return None


def required() -> bool:
    """Under CI a missing tool is an error. (tests/run.sh exports CMDRDATA_REQUIRE_SYSTEM_TOOLS,
    but conftest clears every CMDRDATA_ variable at import: CI=true says it too.)"""
    return os.environ.get("CMDRDATA_REQUIRE_SYSTEM_TOOLS") == "1" or os.environ.get("CI") == "true"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _server_user() -> pwd.struct_passwd | None:
    """Who runs the server: nobody else when not root; else an unprivileged user."""
    if os.geteuid() != 0:
        return None
    for name in _USERS:
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    subprocess.run(
        ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", _USERS[-1]],
        check=True,
        capture_output=True,
    )
    return pwd.getpwnam(_USERS[-1])


class PostgresServer:
    """One server with its own data folder; :meth:`database` makes a fresh database."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.dir = Path(tempfile.mkdtemp(prefix="cmdrdata-pg-"))
        self.data = self.dir / "data"
        self.port = _free_port()
        self.user = _server_user()
        self._databases = 0
        self.proc: subprocess.Popen[str] | None = None
        if self.user is not None:
            os.chmod(self.dir, 0o700)
            os.chown(self.dir, self.user.pw_uid, self.user.pw_gid)
        self._as_server_user(
            [
                str(bindir / "initdb"),
                "-D", str(self.data),
                "-U", "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--no-sync",
                "--no-instructions",
            ]
        )  # fmt: skip
        self.start()

    def _as_server_user(self, args: list[str]) -> None:
        result = subprocess.run(args, capture_output=True, text=True, **self._user_args())
        if result.returncode != 0:
            raise AssertionError(f"{args[0]} failed: {result.stdout}{result.stderr}")

    def _user_args(self) -> dict[str, object]:
        if self.user is None:
            return {}
        return {"user": self.user.pw_uid, "group": self.user.pw_gid, "extra_groups": []}

    def start(self) -> None:
        """Start the server (again, on the same port, after :meth:`stop`)."""
        self.proc = subprocess.Popen(
            [
                str(self.bindir / "postgres"),
                "-D", str(self.data),
                "-k", str(self.dir),
                "-h", "127.0.0.1",
                "-p", str(self.port),
                "-c", "fsync=off",
                "-c", "synchronous_commit=off",
                "-c", "full_page_writes=off",
                "-c", "max_connections=50",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            **self._user_args(),  # type: ignore[call-overload]
        )  # fmt: skip
        assert self.proc.stdout is not None
        for line in self.proc.stdout:  # it says when it accepts connections
            if _READY in line:
                break
        else:
            raise AssertionError(f"postgres did not start (exit {self.proc.wait()})")
        # keep reading what it logs, so a full pipe never stalls it
        threading.Thread(target=self.proc.stdout.read, daemon=True).start()

    def stop(self) -> None:
        """Stop it now (immediate shutdown): clients see connections refused."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)
            self.proc.wait(timeout=30)
        self.proc = None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def database(self) -> str:
        """A new, empty database; its URL."""
        import psycopg

        self._databases += 1
        name = f"fleet_{self._databases}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.url(name)

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
