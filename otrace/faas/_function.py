"""Chain functions: the user's code, its measurement, and what one invocation sees.

A function's measurement stands in for MRENCLAVE: SHA-256 over the label
`otrace/faas/v1/function`, then (each length-prefixed) the bytes of the source
module that defines the function, its qualified name, and the canonical CBOR of
its configuration. Changing one byte of the module or the configuration changes
the measurement, and the KMS then releases no key to it.
"""

from __future__ import annotations

import hashlib
import inspect
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from opentelemetry.trace import Tracer

from otrace.errors import ConfigError
from tee._encoding import encode_canonical

__all__ = [
    "GATEWAY",
    "ChainFunction",
    "FunctionBody",
    "Invocation",
    "chain_function",
    "check_function_name",
    "measure_source",
]

#: The reserved routing name of the gateway (receiver of a chain's last hop).
GATEWAY = "gateway"
_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")
_LABEL = b"otrace/faas/v1/function\x00"


def check_function_name(name: str) -> str:
    """`name` if it is a valid function (or chain) name, else `ConfigError`."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ConfigError(f"{name!r} is not a valid name (lowercase letters, digits, ._-)")
    return name


@dataclass(frozen=True, slots=True)
class Invocation:
    """What a function body sees besides its arguments."""

    request_id: bytes
    chain_id: str
    step: int
    tracer: Tracer
    baggage: Mapping[str, str] = field(default_factory=dict)


FunctionBody = Callable[[Any, Invocation], Any]


@dataclass(frozen=True, slots=True)
class ChainFunction:
    """A named, measured function body: what `@chain_function` makes."""

    name: str
    body: FunctionBody = field(repr=False)
    measurement: bytes

    def __call__(self, args: Any, invocation: Invocation) -> Any:
        return self.body(args, invocation)


def chain_function(
    name: str, *, config: Mapping[str, object] | None = None
) -> Callable[[FunctionBody], ChainFunction]:
    """Decorator: make `body(args, invocation) -> result` a chain function called `name`.

    `config` is the function's security-relevant configuration; it is measured.
    """
    if check_function_name(name) == GATEWAY:
        raise ConfigError(f"{GATEWAY!r} is reserved for the chain's gateway")

    def wrap(body: FunctionBody) -> ChainFunction:
        return ChainFunction(name, body, measure_source(body, config))

    return wrap


def measure_source(obj: object, config: Mapping[str, object] | None = None) -> bytes:
    """SHA-256 over the label, `obj`'s source module, its qualified name and `config`."""
    source = inspect.getsourcefile(obj)  # type: ignore[arg-type]
    if source is None:
        raise ConfigError(f"cannot measure {obj!r}: its source file is unknown")
    digest = hashlib.sha256(_LABEL)
    qualname = getattr(obj, "__qualname__", type(obj).__qualname__)
    for item in (
        Path(source).read_bytes(),
        qualname.encode(),
        encode_canonical(dict(config or {})),
    ):
        digest.update(len(item).to_bytes(8, "big"))
        digest.update(item)
    return digest.digest()
