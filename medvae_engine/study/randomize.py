"""Seeded randomisation: per-reader hanging lists, neutral item numbering and blinded sides.

Every draw comes from a generator seeded by a hash of the study seed and a purpose string, so the
same reader always gets the same order, different readers get different orders, and nothing depends
on Python's per-process hash randomisation.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np


def seeded_rng(study_seed: int, purpose: str) -> np.random.Generator:
    """A generator determined by the study seed and a purpose such as 'order:reader1'."""
    digest = hashlib.sha256(f"{int(study_seed)}\x00{purpose}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:16], "little"))


def reader_order(item_ids: Sequence[str], study_seed: int, reader_id: str) -> list[str]:
    """The reader's hanging list: every item exactly once, in an order fixed by study and reader."""
    ids = sorted(item_ids)
    if len(set(ids)) != len(ids):
        raise ValueError("item ids must be unique")
    permutation = seeded_rng(study_seed, f"order:{reader_id}").permutation(len(ids))
    return [ids[i] for i in permutation]


def shuffled(values: Sequence, study_seed: int, purpose: str) -> list:
    """The values in a seeded random order (used to number items so names reveal nothing)."""
    permutation = seeded_rng(study_seed, purpose).permutation(len(values))
    return [values[i] for i in permutation]


def original_sides(n: int, study_seed: int, purpose: str = "sides") -> list[int]:
    """For blinded A/B display: per item 0 when the original is A (left), 1 when it is B; as many
    0s as 1s (+-1 when n is odd) in a seeded random order. Call once per method to balance each."""
    rng = seeded_rng(study_seed, purpose)
    sides = [i % 2 for i in range(n)]
    if n % 2:
        sides[-1] = int(rng.integers(0, 2))
    return [sides[i] for i in rng.permutation(n)]
