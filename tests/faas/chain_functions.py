"""A three-function chain for the tests, with call counters (the "nothing executed" witness)."""

from __future__ import annotations

from collections import Counter
from typing import Any

from otrace.faas import Invocation, chain_function

CALLS: Counter[str] = Counter()


@chain_function("validate")
def validate(args: dict[str, Any], invocation: Invocation) -> dict[str, Any]:
    CALLS["validate"] += 1
    with invocation.tracer.start_as_current_span("validate.check"):
        return {**args, "valid": bool(args["items"])}


@chain_function("price", config={"currency": "EUR"})
def price(args: dict[str, Any], invocation: Invocation) -> dict[str, Any]:
    CALLS["price"] += 1
    return {**args, "total": sum(args["items"]), "tenant": invocation.baggage.get("tenant", "")}


@chain_function("notify")
def notify(args: dict[str, Any], invocation: Invocation) -> dict[str, Any]:
    CALLS["notify"] += 1
    return {"total": args["total"], "tenant": args["tenant"], "step": invocation.step}


# The same name as a chain member, other configuration: another measurement.
@chain_function("price", config={"currency": "USD"})
def tampered_price(args: dict[str, Any], invocation: Invocation) -> dict[str, Any]:
    CALLS["tampered_price"] += 1
    return args


# A function from outside the chain.
@chain_function("refund")
def refund(args: dict[str, Any], invocation: Invocation) -> dict[str, Any]:
    CALLS["refund"] += 1
    return args


CHAIN = (validate, price, notify)
