"""Seeds derived from a run's seed: every random choice of a stage is a pure function of (seed, what it is for)."""
from __future__ import annotations

import hashlib


def derive_seed(seed: int, *parts) -> int:
    """A 63-bit seed that is a pure function of (seed, *parts)."""
    digest = hashlib.blake2b(":".join(map(str, (seed, *parts))).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1
