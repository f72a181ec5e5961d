"""The one way to derive a seed: every random stream of a run comes from ``derive_seed``.

A run has one user-facing ``seed``; each consumer (an epoch's shuffling and augmentation, the
batches a score sees, a method's own draws) takes an independent stream named by a purpose and
indices. Hashing the whole tuple keeps streams apart: no two (purpose, indices) collide the way
linear formulas such as ``seed * P + level * Q + epoch`` can.
"""

from __future__ import annotations

import hashlib


def derive_seed(seed: int, purpose: str, *indices: int) -> int:
    """A 63-bit seed for ``purpose`` at ``indices`` (for example ``("epoch", level, epoch)``)."""
    key = ":".join([str(int(seed)), purpose, *(str(int(i)) for i in indices)])
    digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1
