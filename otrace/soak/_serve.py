"""`otrace serve` as a child process the soak harness can SIGKILL and restart.

The node runs in its own process group (host and enclave process), on fixed
ports chosen once, so load generators and the query client reconnect to the
same addresses after every restart.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

from otrace.errors import UnavailableError

__all__ = ["ServeOptions", "ServeProcess", "free_port", "rss_of_tree"]

_READY = re.compile(r"otrace node up: OTLP/gRPC :(\d+)")


def free_port() -> int:
    """A loopback port nobody listens on now (bound once, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def rss_of_tree(pid: int) -> int:
    """Resident memory of a process and its descendants (the enclave), in bytes."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    total = 0
    for proc in procs:
        try:
            total += proc.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total


@dataclass(frozen=True, slots=True)
class ServeOptions:
    """The node the harness runs: where it keeps its data and how it is sized."""

    data_dir: Path
    platform_dir: Path
    storage: str = "oram"
    store: str = ""  # SQLAlchemy URL; empty: SQLite in the data directory
    oram_blocks: int = 8192
    epoch: str = "100ms"
    max_pending: int | None = None
    max_journal_depth: int | None = None
    extra: tuple[str, ...] = ()


class ServeProcess:
    """One `otrace serve` at a time on fixed ports; `start`, `kill`, `stop`."""

    def __init__(self, options: ServeOptions, *, start_timeout_s: float = 120.0) -> None:
        self.options = options
        self.grpc_port, self.http_port, self.query_port = free_port(), free_port(), free_port()
        self._timeout = start_timeout_s
        self._proc: subprocess.Popen[bytes] | None = None
        self.log_path = options.data_dir.parent / "serve.log"
        self.starts = 0

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    @property
    def credential(self) -> Path:
        return self.options.data_dir / "analyst.cred"

    def args(self) -> list[str]:
        o = self.options
        args = [
            sys.executable, "-m", "otrace", "serve",
            "--data-dir", str(o.data_dir),
            "--platform-dir", str(o.platform_dir),
            "--otlp-grpc", f"127.0.0.1:{self.grpc_port}",
            "--otlp-http", f"127.0.0.1:{self.http_port}",
            "--query", f"127.0.0.1:{self.query_port}",
            "--metrics", "",
            "--storage", o.storage,
            "--oram-blocks", str(o.oram_blocks),
            "--epoch", o.epoch,
        ]  # fmt: skip
        if o.store:
            args += ["--store", o.store]
        return args + list(o.extra)

    def start(self) -> float:
        """Starts the node and waits until it serves; returns the seconds that took."""
        if self._proc is not None and self._proc.poll() is None:
            raise UnavailableError("the node is already running")
        self.options.data_dir.parent.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        if self.options.max_pending is not None:
            env["OTRACE_MAX_PENDING_REQUESTS"] = str(self.options.max_pending)
        if self.options.max_journal_depth is not None:
            env["OTRACE_MAX_JOURNAL_DEPTH"] = str(self.options.max_journal_depth)
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        started = time.monotonic()
        with self.log_path.open("ab") as sink:
            self._proc = subprocess.Popen(
                self.args(), stdout=sink, stderr=sink, env=env, start_new_session=True
            )
        self.starts += 1
        deadline = started + self._timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise UnavailableError(
                    f"otrace serve exited with {self._proc.returncode} while starting: "
                    f"{self.log_tail(offset)}"
                )
            if _READY.search(self.log_tail(offset, 1 << 20)):
                return time.monotonic() - started
            time.sleep(0.02)
        self.kill()
        raise UnavailableError(f"otrace serve did not start in {self._timeout:g} s")

    def kill(self) -> None:
        """SIGKILL to the whole process group: host and enclave die at the same instant."""
        if self._proc is None:
            return
        try:
            os.killpg(self._proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self._proc.wait()

    def stop(self, timeout_s: float = 60.0) -> None:
        """SIGTERM (a clean stop), then SIGKILL if it does not exit in time."""
        if self._proc is None or self._proc.poll() is not None:
            return
        self._proc.send_signal(signal.SIGTERM)
        try:
            self._proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def rss(self) -> int:
        return 0 if self._proc is None else rss_of_tree(self._proc.pid)

    def log_tail(self, offset: int = 0, limit: int = 2000) -> str:
        try:
            with self.log_path.open("rb") as f:
                f.seek(offset)
                text = f.read().decode(errors="replace")
        except OSError:
            return ""
        return text[-limit:]
