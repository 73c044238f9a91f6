"""The enclave boundary: trusted code in its own OS process behind declared ecalls.

The host starts an `Enclave` from an entry point `"package.module:function"`;
the function runs *inside* the enclave process, receives the init bytes and
returns the ecall table (name -> handler taking and returning bytes). That table
is the whole interface: the enclave process refuses any other name, so the host
can call nothing else.

Frames travel over a `multiprocessing` pipe (spawn start method, so the child
shares no memory with the host), each length-prefixed by the pipe:

    host -> enclave   canonical CBOR [name, payload]
    enclave -> host   [0, result] | [1, error class, message] | ["ready", [names]]

Like an SGX enclave with several thread control structures, the enclave can
serve `threads` ecalls at once: each is a pipe of its own, served by its own
thread inside the enclave, and the host hands a call to whichever pipe is free.
With the default of one, ecalls run strictly one after another.

An optional audit hook sees every frame in both directions, exactly as it
crossed, so tests can assert that no plaintext or key ever leaves the enclave.
Errors raised inside the enclave come back as the same `OTraceError` subclass;
any other exception is reported by type only, because its message might hold
enclave data.
"""

from __future__ import annotations

import importlib
import multiprocessing
import queue
import signal
import threading
from collections.abc import Callable, Mapping
from multiprocessing.connection import Connection
from types import TracebackType
from typing import Any, Literal

from otrace import errors
from otrace.errors import InvalidRequest, OTraceError, UnavailableError
from tee._encoding import decode_canonical, encode_canonical

__all__ = ["AuditHook", "Ecall", "EcallTable", "Enclave"]

Ecall = Callable[[bytes], bytes]
EcallTable = Mapping[str, Ecall]
AuditHook = Callable[[Literal["to_enclave", "from_enclave"], bytes], None]


class Enclave:
    """Trusted code behind declared ecalls in a separate process. Use as a context manager."""

    def __init__(
        self,
        entry: str,
        init: bytes = b"",
        *,
        audit: AuditHook | None = None,
        timeout: float = 30.0,
        threads: int = 1,
    ) -> None:
        module, _, function = entry.partition(":")
        if not module or not function:
            raise InvalidRequest(
                f"enclave entry {entry!r} must look like 'package.module:function'"
            )
        if threads < 1:
            raise InvalidRequest("an enclave needs at least one thread")
        self._entry = entry
        self._init = init
        self._audit = audit
        self._timeout = timeout
        self._threads = threads
        self._free: queue.Queue[Connection] = queue.Queue()
        self._conns: list[Connection] = []
        self._process: multiprocessing.process.BaseProcess | None = None
        self._ecalls: frozenset[str] = frozenset()

    def __repr__(self) -> str:
        return f"Enclave(entry={self._entry!r}, pid={self.pid})"

    def __enter__(self) -> Enclave:
        self.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    @property
    def pid(self) -> int | None:
        """The enclave process id (None before `start`)."""
        return None if self._process is None else self._process.pid

    @property
    def ecalls(self) -> frozenset[str]:
        """The ecall names the enclave declared."""
        return self._ecalls

    def start(self) -> None:
        """Spawn the enclave process and wait until it declared its ecalls."""
        context = multiprocessing.get_context("spawn")
        pipes = [context.Pipe(duplex=True) for _ in range(self._threads)]
        process = context.Process(
            target=_enclave_main,
            args=([e for _, e in pipes], self._entry, self._init),
            daemon=True,
        )
        process.start()
        for _, enclave_end in pipes:
            enclave_end.close()
        self._conns, self._process = [h for h, _ in pipes], process
        reply = self._receive(self._conns[0], "startup")
        if not (isinstance(reply, list) and reply[:1] == ["ready"] and len(reply) == 2):
            self.close()
            raise _error_from(reply, "startup")
        self._ecalls = frozenset(reply[1])
        for conn in self._conns:
            self._free.put(conn)

    def call(self, name: str, payload: bytes = b"") -> bytes:
        """Run ecall `name` inside the enclave; errors come back as `OTraceError`s."""
        if not self._conns:
            raise UnavailableError("the enclave is not running; call start() first")
        try:
            conn = self._free.get(timeout=self._timeout)
        except queue.Empty:
            raise UnavailableError(
                f"no enclave thread became free for {name!r} in {self._timeout}s"
            ) from None
        try:
            self._send(conn, encode_canonical([name, payload]))
            reply = self._receive(conn, name)
        except UnavailableError:
            # A late reply could still arrive on this pipe and answer the wrong call.
            conn.close()
            raise
        self._free.put(conn)
        if isinstance(reply, list) and len(reply) == 2 and reply[0] == 0:
            if isinstance(reply[1], bytes):
                return reply[1]
        raise _error_from(reply, name)

    def close(self) -> None:
        """Stop the enclave process (closing the pipes ends its loops)."""
        conns, self._conns = self._conns, []
        for conn in conns:
            conn.close()
        if self._process is not None:
            self._process.join(timeout=5)
            if self._process.is_alive():
                self._process.terminate()
                self._process.join(timeout=5)

    def _send(self, conn: Connection, frame: bytes) -> None:
        if self._audit is not None:
            self._audit("to_enclave", frame)
        try:
            conn.send_bytes(frame)
        except (OSError, ValueError) as exc:
            raise UnavailableError(f"the enclave process is gone: {exc}") from None

    def _receive(self, conn: Connection, what: str) -> Any:
        try:
            if not conn.poll(self._timeout):
                raise UnavailableError(f"the enclave did not answer {what!r} in {self._timeout}s")
            frame = conn.recv_bytes()
        except (EOFError, OSError):
            code = None if self._process is None else self._process.exitcode
            raise UnavailableError(f"the enclave process exited (exit code {code})") from None
        if self._audit is not None:
            self._audit("from_enclave", frame)
        try:
            return decode_canonical(frame)
        except ValueError:
            raise UnavailableError(f"the enclave sent a malformed frame for {what!r}") from None


def _error_from(reply: Any, what: str) -> OTraceError:
    if isinstance(reply, list) and len(reply) == 3 and reply[0] == 1:
        cls = getattr(errors, str(reply[1]), None)
        if isinstance(cls, type) and issubclass(cls, OTraceError):
            return cls(str(reply[2]))
    return UnavailableError(f"the enclave sent an unexpected reply to {what!r}")


def _enclave_main(conns: list[Connection], entry: str, init: bytes) -> None:
    """The enclave process: build the ecall table, then serve each pipe until it closes."""
    # A terminal's Ctrl-C reaches the host's whole process group; the host stops the
    # enclave in order (it closes the pipes), so the signal is not this process's.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    first = conns[0]
    try:
        table = _load_table(entry, init)
    except Exception as exc:
        first.send_bytes(encode_canonical(_failure(exc, "startup")))
        return
    first.send_bytes(encode_canonical(["ready", sorted(table)]))
    for conn in conns[1:]:
        threading.Thread(target=_serve, args=(conn, table), daemon=True).start()
    _serve(first, table)


def _serve(conn: Connection, table: Mapping[str, Ecall]) -> None:
    while True:
        try:
            frame = conn.recv_bytes()
        except (EOFError, OSError):
            return
        conn.send_bytes(encode_canonical(_dispatch(table, frame)))


def _load_table(entry: str, init: bytes) -> dict[str, Ecall]:
    module_name, _, function_name = entry.partition(":")
    factory = getattr(importlib.import_module(module_name), function_name)
    table = dict(factory(init))
    if not all(isinstance(name, str) and callable(h) for name, h in table.items()):
        raise InvalidRequest(f"enclave entry {entry!r} must return a mapping of name -> callable")
    return table


def _dispatch(table: Mapping[str, Ecall], frame: bytes) -> list[object]:
    try:
        request = decode_canonical(frame)
    except ValueError:
        return [1, "InvalidRequest", "malformed ecall frame"]
    if not (isinstance(request, list) and len(request) == 2 and isinstance(request[1], bytes)):
        return [1, "InvalidRequest", "malformed ecall frame"]
    name, payload = request
    handler = table.get(name) if isinstance(name, str) else None
    if handler is None:
        declared = ", ".join(sorted(table))
        return [1, "InvalidRequest", f"no ecall named {name!r}; the enclave declares: {declared}"]
    try:
        result = handler(payload)
    except Exception as exc:
        return _failure(exc, name)
    if not isinstance(result, bytes):
        return [
            1,
            "UnavailableError",
            f"ecall {name!r} returned {type(result).__name__}, not bytes",
        ]
    return [0, result]


def _failure(exc: Exception, what: str) -> list[object]:
    if isinstance(exc, OTraceError):
        return [1, type(exc).__name__, str(exc)]
    # Only the type: an arbitrary exception's message may carry enclave data.
    return [1, "UnavailableError", f"{what!r} failed inside the enclave ({type(exc).__name__})"]
