#!/usr/bin/env python3
"""Generate independent test vectors for Release Anchor's bucketing algorithm.

The vectors are computed with Python's ``mmh3`` package, entirely independently
of the Rust engine, so the Rust implementation can be checked against them.

Algorithm (must match the engine exactly):

* ``unit`` is a string (used as-is) or an integer (rendered in decimal).
* ``h`` = MurmurHash3 x86 32-bit, seed 0, unsigned, of the UTF-8 bytes of
  ``salt + ":" + unit``.
* ``W`` = sum(weights), 1 <= W <= 2**31 - 1; ``bucket = (h * W) >> 32``.
* The served variant is the index of the first weight whose running sum is
  greater than ``bucket``.
* An empty-string unit cannot be bucketed: ``hashed`` and ``h`` are still
  reported, but ``bucket`` and ``variant`` are null.

Requirements: python3 and ``pip install mmh3`` (stdlib otherwise).
The output is deterministic (no randomness).

Usage (from the repository root):

    python3 scripts/bucketing_vectors.py > testdata/bucketing-vectors.json
"""

import importlib.metadata
import json
import sys

import mmh3

MAX_TOTAL_WEIGHT = 2147483647


def render_unit(unit):
    if isinstance(unit, bool):
        raise TypeError("bool is not a valid unit")
    if isinstance(unit, int):
        return str(unit)
    if isinstance(unit, str):
        return unit
    raise TypeError(f"unsupported unit type: {type(unit).__name__}")


def murmur(data):
    return mmh3.hash(data, 0, signed=False)


def compute(salt, unit, weights):
    hashed = salt + ":" + render_unit(unit)
    h = murmur(hashed.encode("utf-8"))
    if isinstance(unit, str) and unit == "":
        return hashed, h, None, None
    total = sum(weights)
    if any(w < 0 for w in weights) or not (1 <= total <= MAX_TOTAL_WEIGHT):
        raise ValueError(f"invalid weights {weights!r}")
    bucket = (h * total) >> 32
    running = 0
    for index, weight in enumerate(weights):
        running += weight
        if running > bucket:
            return hashed, h, bucket, index
    raise AssertionError("unreachable: bucket < total weight")


def vector(salt, unit, weights):
    hashed, h, bucket, variant = compute(salt, unit, weights)
    return {
        "salt": salt,
        "unit": unit,
        "weights": list(weights),
        "hashed": hashed,
        "h": h,
        "bucket": bucket,
        "variant": variant,
    }


def reference_murmur3_x86_32(data, seed=0):
    """Plain-Python MurmurHash3 x86 32-bit, used only to cross-check mmh3."""
    c1, c2, mask = 0xCC9E2D51, 0x1B873593, 0xFFFFFFFF
    rotl = lambda x, r: ((x << r) | (x >> (32 - r))) & mask
    h = seed & mask
    nblocks = len(data) // 4
    for i in range(nblocks):
        k = int.from_bytes(data[4 * i:4 * i + 4], "little")
        k = rotl((k * c1) & mask, 15) * c2 & mask
        h = (rotl(h ^ k, 13) * 5 + 0xE6546B64) & mask
    tail = data[4 * nblocks:]
    if tail:
        k = int.from_bytes(tail, "little")
        k = rotl((k * c1) & mask, 15) * c2 & mask
        h ^= k
    h ^= len(data)
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & mask
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & mask
    h ^= h >> 16
    return h


def sanity_checks():
    assert murmur(b"") == 0
    assert mmh3.hash(b"Hello, world!", 0x9747B28C, signed=False) == 0x24884CBA
    assert compute("", "", [1])[0] == ":"
    assert compute("", "", [1])[2:] == (None, None)
    assert render_unit(-12) == "-12"
    assert reference_murmur3_x86_32(b"Hello, world!", 0x9747B28C) == 0x24884CBA


def find_bucket_hits(salt, weights, wanted, limit=100000):
    """Scan units u0..u<limit> for the first unit landing in each wanted bucket."""
    total = sum(weights)
    found = {}
    for i in range(limit + 1):
        unit = f"u{i}"
        h = murmur((salt + ":" + unit).encode("utf-8"))
        bucket = (h * total) >> 32
        if bucket in wanted and bucket not in found:
            found[bucket] = unit
            if len(found) == len(wanted):
                break
    return [found[b] for b in sorted(found)]


def build_vectors():
    out = []
    add = lambda salt, unit, weights: out.append(vector(salt, unit, weights))

    fifty = [50000, 50000]
    five = [1000, 4000, 20000, 25000, 50000]

    # The canonical example.
    add("new-checkout", "user-42", fifty)

    # Typical ids.
    for unit in [
        "user-000123-9f3a2b1c",
        "user-000124-0c7d11e2",
        "user-987654-ffffffff",
        "7f1c2e9a-4b3d-4e8f-9a21-6c5d0b8e3f47",
        "acct_1NQx3bLkdIwHu7ix",
        "device:ios:A1B2C3",
    ]:
        add("new-checkout", unit, fifty)
        add("pricing-v2", unit, five)

    # Non-ASCII units.
    for unit in [
        "é",
        "café",
        "cafe\u0301",  # combining acute accent (NFD form of café)
        "über-user",
        "日本語",
        "ユーザー-42",
        "🚀",
        "user-🚀-42",
        "пользователь-7",
        "Ω≈ç√",
        "👩‍💻",  # ZWJ sequence
    ]:
        add("new-checkout", unit, fifty)

    # Unit lengths 1..=9 exercise every MurmurHash3 tail length (data lengths vary too).
    alphabet = "abcdefghi"
    for n in range(1, 10):
        add("tail", alphabet[:n], [25000, 75000])
    for n in range(1, 10):
        add("", alphabet[:n], [1, 1])

    # Long units.
    add("new-checkout", "x" * 300, fifty)
    add("new-checkout", "user-" + "0123456789abcdef" * 20, five)
    add("new-checkout", "日本語" * 120, fifty)

    # Empty salt, odd salts.
    add("", "user-42", fifty)
    add("", "user-000123-9f3a2b1c", five)
    add("team:payments:checkout", "user-42", fifty)
    add(":", "user-42", fifty)
    add("a:b:", ":c", [1, 1])
    add("caféflag-日本", "user-42", fifty)
    add("flag-🚀", "user-000123-9f3a2b1c", [1, 1, 1])

    # Empty unit strings: hashed/h reported, bucket/variant null.
    add("", "", fifty)
    add("new-checkout", "", fifty)
    add("pricing-v2", "", [100000])

    # Integer units (rendered in decimal).
    for unit in [0, 7, -12, 9007199254740993, -9223372036854775808,
                 18446744073709551615]:
        add("new-checkout", unit, fifty)
    add("pricing-v2", 7, five)
    add("pricing-v2", -12, [1, 1, 1])
    add("", 0, [1, 1])
    # A string unit that renders the same as an integer unit hashes identically.
    add("new-checkout", "7", fifty)
    add("new-checkout", "-12", fifty)

    # Weight shapes.
    for weights in [
        [100000],
        [1, 99999],
        [99999, 1],
        [50000, 50000],
        [25000, 75000],
        [1000, 4000, 20000, 25000, 50000],
        [0, 100000],
        [100000, 0],
        [1, 1],
        [3, 0, 2],
        [0, 0, 1],
        [2147483647],
        [1073741823, 1073741824],
        [1073741824, 1073741823],
        [1, 2147483646],
        [33333, 33333, 33334],
        [10, 20, 30, 40],
        [1, 1, 1, 1, 1, 1, 1],
        [7, 0, 0, 5, 0, 3],
        [1],
    ]:
        for unit in ["user-42", "user-000123-9f3a2b1c", "u17"]:
            add("weights-matrix", unit, weights)

    # Boundary cases found by scanning units u0..u100000:
    # W=3 equal thirds, one unit per bucket 0, 1, 2.
    for unit in find_bucket_hits("boundary", [1, 1, 1], {0, 1, 2}):
        add("boundary", unit, [1, 1, 1])
    # W=2, bucket 0 (last of variant 0) and bucket 1 (first of variant 1).
    for unit in find_bucket_hits("boundary", [1, 1], {0, 1}):
        add("boundary", unit, [1, 1])
    # [3, 0, 2]: buckets 2 (last of variant 0) and 3 (first after the zero-weight variant).
    for unit in find_bucket_hits("boundary", [3, 0, 2], {2, 3}):
        add("boundary", unit, [3, 0, 2])
    # [50000, 50000]: bucket 49999 (last of variant 0) and 50000 (first of variant 1).
    for unit in find_bucket_hits("boundary", fifty, {49999, 50000}):
        add("boundary", unit, fifty)
    # Five-way split: buckets exactly on each running-sum boundary.
    for unit in find_bucket_hits("boundary", [1, 2, 3, 4, 5], {0, 1, 3, 6, 10}):
        add("boundary", unit, [1, 2, 3, 4, 5])

    return out


def main():
    sanity_checks()
    version = getattr(mmh3, "__version__", None)
    if version is None:
        try:
            version = importlib.metadata.version("mmh3")
        except importlib.metadata.PackageNotFoundError:
            version = "unknown"
    vectors = build_vectors()
    for v in vectors:  # cross-check every mmh3 result against the plain-Python version
        assert reference_murmur3_x86_32(v["hashed"].encode("utf-8")) == v["h"], v
    doc = {
        "description": (
            "Test vectors for Release Anchor's deterministic bucketing. "
            "Algorithm: h = MurmurHash3 x86 32-bit (seed 0, unsigned) of the UTF-8 bytes "
            "of salt + \":\" + unit (integer units rendered in decimal), "
            "bucket = (h * sum(weights)) >> 32, and the served variant is the index of the "
            "first weight whose running sum exceeds bucket; an empty-string unit is not "
            "bucketable, so its bucket and variant are null. "
            "Computed by scripts/bucketing_vectors.py with Python's mmh3 package version "
            f"{version}, independently of the Rust engine."
        ),
        "vectors": vectors,
    }
    sys.stdout.write(json.dumps(doc, indent=2, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
