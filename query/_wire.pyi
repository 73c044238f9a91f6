# Types of the C extension built from query/_wire.c.
from typing import TypeVar

R = TypeVar("R")

def split_request(
    body: bytes, skip: frozenset[str], max_value: int, record: type[R]
) -> list[R] | None: ...
def valid_spans(
    body: bytes,
    max_attributes: int,
    max_attribute_bytes: int,
    max_span_bytes: int,
    max_name_bytes: int,
) -> int | None: ...
