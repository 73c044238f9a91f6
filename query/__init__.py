"""Searchable-encryption index, query executor and query API (see docs/ARCHITECTURE.md)."""

__all__: list[str] = []
