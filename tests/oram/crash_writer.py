"""Child process for the crash test: writes batches forever, reporting each before and after.

Usage: python -m tests.oram.crash_writer STORE_URL SEED
Prints `B <block>:<value> ...` before a batch and `C` after it commits.
"""

from __future__ import annotations

import random
import sys

from oram_store import SqlBucketStore, Write
from tests.oram.helpers import KEY, STATE_KEY, block


def main() -> None:
    from oram_store import PathOram
    from tee import Sealer

    url, seed = sys.argv[1], int(sys.argv[2])
    rnd = random.Random(seed)
    store = SqlBucketStore(url)
    oram = PathOram.open(store, "t", key=KEY, sealer=Sealer.from_key(STATE_KEY), cache_levels=2)
    value = seed * 1_000_000
    while True:
        batch = {rnd.randrange(oram.params.blocks): (value := value + 1) for _ in range(3)}
        print("B " + " ".join(f"{b}:{v}" for b, v in batch.items()), flush=True)
        oram.access_batch([Write(b, block(v)) for b, v in batch.items()])
        print("C", flush=True)


if __name__ == "__main__":
    main()
