# Types of the C extension built from query/_wire.c.
from typing import TypeVar

R = TypeVar("R")

def split_request(
    body: bytes, skip: frozenset[str], max_value: int, record: type[R]
) -> list[R] | None: ...
