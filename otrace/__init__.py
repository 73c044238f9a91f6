"""otrace: an OpenTelemetry-compatible oblivious tracing backend.

This package is the shared core (settings, errors, CLI). It imports nothing
heavy at module load so that `oram_store`, `query`, `tee` and `collector` can
use `otrace.errors` without pulling in the CLI.
"""

from otrace.errors import OTraceError

__all__ = ["OTraceError", "__version__"]

__version__ = "0.1.0"
