"""OTLP receivers, ingest pipeline and cluster leadership (see docs/ARCHITECTURE.md)."""

__all__: list[str] = []
