"""The ecall boundary: a separate process, declared ecalls only, every byte audited."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator

import pytest

from otrace.errors import IntegrityError, InvalidRequest, UnavailableError
from tee import Enclave, Sealer

KEY = b"\x42" * 32
ENTRY = "tests.tee.enclave_app:ecalls"


@pytest.fixture(scope="module")
def audited() -> Iterator[tuple[Enclave, list[tuple[str, bytes]]]]:
    frames: list[tuple[str, bytes]] = []
    with Enclave(ENTRY, KEY, audit=lambda direction, frame: frames.append((direction, frame))) as e:
        yield e, frames


def test_enclave_runs_in_a_separate_process(audited) -> None:
    enclave, _ = audited
    child = int(enclave.call("pid"))
    assert child == enclave.pid
    assert child != os.getpid()


def test_declared_ecalls_work(audited) -> None:
    enclave, _ = audited
    assert enclave.ecalls == {"echo", "pid", "seal", "fail_plainly", "fail_integrity", "sleep"}
    assert enclave.call("echo", b"hello") == b"hello"


def test_unknown_ecall_is_refused_by_the_enclave(audited) -> None:
    enclave, frames = audited
    with pytest.raises(
        InvalidRequest,
        match=r"^no ecall named 'read_memory'; the enclave declares: echo, fail_integrity, ",
    ):
        enclave.call("read_memory", b"")
    assert frames[-2][0] == "to_enclave" and b"read_memory" in frames[-2][1]
    assert enclave.call("echo", b"still here") == b"still here"


def test_audit_hook_sees_every_byte_and_no_key(audited) -> None:
    enclave, frames = audited
    frames.clear()
    blob = enclave.call("seal", b"plaintext span")
    assert [direction for direction, _ in frames] == ["to_enclave", "from_enclave"]
    assert b"plaintext span" in frames[0][1]
    assert blob in frames[1][1]
    assert KEY not in b"".join(frame for _, frame in frames[1:])
    assert Sealer.from_key(KEY).unseal(blob, b"boundary-test") == b"plaintext span"


def test_otrace_errors_keep_their_class(audited) -> None:
    enclave, _ = audited
    with pytest.raises(IntegrityError, match=r"^bucket 7 failed authentication$"):
        enclave.call("fail_integrity")


def test_other_errors_are_reported_by_type_only(audited) -> None:
    enclave, _ = audited
    with pytest.raises(
        UnavailableError, match=r"^'fail_plainly' failed inside the enclave \(ValueError\)$"
    ):
        enclave.call("fail_plainly")


def test_failed_startup_is_reported() -> None:
    with pytest.raises(IntegrityError, match=r"^sealed state failed authentication$"):
        Enclave("tests.tee.enclave_app:broken").start()


def test_calls_after_close_are_refused() -> None:
    enclave = Enclave(ENTRY, KEY)
    enclave.start()
    enclave.close()
    with pytest.raises(UnavailableError, match=r"not running"):
        enclave.call("echo", b"x")


def test_dead_enclave_is_reported() -> None:
    with Enclave(ENTRY, KEY) as enclave:
        assert enclave._process is not None
        enclave._process.kill()
        enclave._process.join()
        with pytest.raises(UnavailableError, match=r"enclave process"):
            enclave.call("echo", b"x")


def test_bad_entry_point_is_refused() -> None:
    with pytest.raises(InvalidRequest, match=r"must look like 'package.module:function'"):
        Enclave("no_colon_here")


def test_one_thread_serialises_ecalls_and_two_serve_them_side_by_side() -> None:
    def time_two_sleeps(threads: int) -> float:
        with Enclave(ENTRY, KEY, threads=threads) as enclave:
            slow = threading.Thread(target=enclave.call, args=("sleep", b"0.5"))
            started = time.monotonic()
            slow.start()
            time.sleep(0.05)
            assert enclave.call("echo", b"quick") == b"quick"
            waited = time.monotonic() - started
            slow.join()
            return waited

    assert time_two_sleeps(1) >= 0.45  # the quick call waited for the slow one
    assert time_two_sleeps(2) < 0.4  # a second thread answered it at once


def test_an_enclave_needs_a_thread() -> None:
    with pytest.raises(InvalidRequest, match="at least one thread"):
        Enclave(ENTRY, KEY, threads=0)
