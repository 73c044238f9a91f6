"""The epoch thread: drains the journal into the block device, inside the enclave.

A single node runs one for its whole life. A replica runs one per term it
leads: `stop()` ends it, and a `FencingError` from a commit (the term was lost)
ends it too, after telling `on_fenced`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from collector._ingest import IngestEngine
from otrace.errors import FencingError, OTraceError

__all__ = ["EpochThread"]

_MAINTENANCE_S = 10.0
log = logging.getLogger("otrace.enclave")


class EpochThread(threading.Thread):
    """Drains the journal every epoch; wakes early when ingest has filled a batch."""

    def __init__(
        self,
        engine: IngestEngine,
        period: float,
        *,
        on_fenced: Callable[[FencingError], None] | None = None,
    ) -> None:
        super().__init__(name="otrace-epochs", daemon=True)
        self.engine = engine
        self.period = period
        self.wake = threading.Event()
        self.last_error = ""
        self.epoch_seconds: list[float] = []
        self._stopped = threading.Event()
        self._on_fenced = on_fenced

    def stop(self, wait_s: float = 0.0) -> None:
        """Ends the thread after the epoch in progress, waiting up to `wait_s` for it."""
        self._stopped.set()
        self.wake.set()
        if wait_s > 0 and self.is_alive() and threading.current_thread() is not self:
            self.join(wait_s)

    def run(self) -> None:
        last_maintenance = time.monotonic()
        while not self._stopped.is_set():
            self.wake.wait(self.period)
            self.wake.clear()
            try:
                while not self._stopped.is_set() and (report := self.engine.drain_once()):
                    self.epoch_seconds.append(report.seconds)
                # Epochs maintain the index after each write; an idle node still has to
                # drop segments as they pass the retention.
                if time.monotonic() - last_maintenance > _MAINTENANCE_S:
                    self.engine.maintain()
                    last_maintenance = time.monotonic()
                self.last_error = ""
            except FencingError as exc:
                # Another writer holds the term now: nothing of this epoch committed.
                self.last_error = str(exc)
                log.warning("epoch refused, this writer was deposed: %s", exc)
                if self._on_fenced is not None:
                    self._on_fenced(exc)
                return
            except Exception as exc:
                # The journal still holds the spans: retry later. Only otrace's own
                # messages are kept; another exception's text might hold enclave data.
                self.last_error = str(exc) if isinstance(exc, OTraceError) else type(exc).__name__
                log.error("epoch failed, will retry: %s", self.last_error)
                self._stopped.wait(min(5.0, self.period * 5))
