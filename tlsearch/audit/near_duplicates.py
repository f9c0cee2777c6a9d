"""Near-duplicates across splits: rows of a later split that are almost, but not exactly, a row of an
earlier one (docs/audit.md explains the thresholds).

- Texts: the set of word pairs (2-word shingles) of each normalised text; MinHash LSH (datasketch)
  proposes candidate pairs, and the exact Jaccard similarity of the two shingle sets confirms them.
  A text of n words with k words replaced here and there keeps about (n - 1 - 2k) / (n - 1 + 2k) of
  its word pairs in common: 0.66 for 30 words and 3 replaced, above the default threshold of 0.5.
- Images: the perceptual hash (imagehash's pHash, 64 bits) proposes pairs that differ in few bits;
  the correlation of the two images' 32x32 grayscale pixels confirms them. The hash alone is not
  enough for small grayscale sets: on MNIST thousands of distinct digits share their hash's bits.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tlsearch.audit.checks import Matches, SplitRows

NUM_PERM = 128  # MinHash permutations: the Jaccard estimate's standard error is about 0.04
SHINGLE_WORDS = 2
# LSH proposes candidates from a lower threshold than the one that confirms them: the MinHash
# estimate of a pair just above the threshold falls below it about half the time.
LSH_MARGIN = 0.15
_CHUNK = 1024  # rows of the earlier split compared at once (images): bounds the distance matrix


def shingles(text: str) -> set[str]:
    words = text.split()
    if len(words) < SHINGLE_WORDS:
        return {" ".join(words)}
    return {" ".join(words[i : i + SHINGLE_WORDS]) for i in range(len(words) - SHINGLE_WORDS + 1)}


def jaccard(a: set[str], b: set[str]) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


class TextIndex:
    """The shingle sets and MinHash LSH index of one split's texts, built once and queried by every
    later split."""

    def __init__(self, rows: SplitRows, threshold: float, seed: int = 1):
        from datasketch import MinHashLSH

        self.threshold = threshold
        self.rows = [i for i, text in enumerate(rows.texts) if text is not None]
        self.sets = {i: shingles(rows.texts[i] or "") for i in self.rows}
        self._seed = seed
        self._lsh = MinHashLSH(threshold=max(0.05, threshold - LSH_MARGIN), num_perm=NUM_PERM)
        self._hashes = self.minhashes([self.sets[i] for i in self.rows])
        with self._lsh.insertion_session() as session:
            for i, minhash in zip(self.rows, self._hashes, strict=True):
                session.insert(i, minhash)

    def minhashes(self, sets: list[set[str]]) -> list[Any]:
        from datasketch import LeanMinHash, MinHash

        hashed = MinHash.bulk(
            [[s.encode() for s in shingle_set] for shingle_set in sets], num_perm=NUM_PERM, seed=self._seed
        )
        return [LeanMinHash(h) for h in hashed]

    def matches(self, later: SplitRows, exact: Matches) -> Matches:
        """Rows of `later` whose text is near one of this split's, leaving out those that have an
        exact duplicate here."""
        exact_later = {j for _, j in exact.pairs}
        rows = [j for j, text in enumerate(later.texts) if text is not None and j not in exact_later]
        sets = [shingles(later.texts[j] or "") for j in rows]
        pairs: list[tuple[int, int]] = []
        earlier_rows: set[int] = set()
        for j, shingle_set, minhash in zip(rows, sets, self.minhashes(sets), strict=True):
            confirmed = sorted(
                i for i in self._lsh.query(minhash) if jaccard(self.sets[i], shingle_set) >= self.threshold
            )
            if confirmed:
                pairs.append((confirmed[0], j))
                earlier_rows.update(confirmed)
        return Matches(pairs, earlier_rows)


def image_matches(
    earlier: SplitRows, later: SplitRows, exact: Matches, *, hash_bits: int, pixel_distance: float
) -> Matches:
    """Rows of `later` whose image is near one of `earlier`'s: pHash within `hash_bits` bits, and
    1 - the correlation of their thumbnails at most `pixel_distance`; exact duplicates left out."""
    assert earlier.phashes is not None and earlier.thumbnails is not None
    assert later.phashes is not None and later.thumbnails is not None
    exact_later = {j for _, j in exact.pairs}
    a = np.asarray([i for i in range(earlier.rows) if earlier.usable(i)], dtype=np.int64)
    b = np.asarray([j for j in range(later.rows) if later.usable(j) and j not in exact_later], dtype=np.int64)
    found: dict[int, list[int]] = {}
    if len(a) and len(b):
        later_hashes = later.phashes[b]
        for start in range(0, len(a), _CHUNK):
            rows = a[start : start + _CHUNK]
            bits = np.bitwise_count(earlier.phashes[rows][:, None] ^ later_hashes[None, :])
            for ai, bj in np.argwhere(bits <= hash_bits):
                i, j = int(rows[ai]), int(b[bj])
                correlation = float(earlier.thumbnails[i] @ later.thumbnails[j])
                if 1.0 - correlation <= pixel_distance:
                    found.setdefault(j, []).append(i)
    pairs = [(min(found[j]), j) for j in sorted(found)]
    return Matches(pairs, {i for matched in found.values() for i in matched})
