#!/usr/bin/env python3
"""Writes the seed corpus of the `evaluate` fuzz target into fuzz/seeds/.

Each seed is `config JSON + 0xFF + context JSON`: the `config` of each file in
testdata/evaluation/ joined with a few of the contexts of its cases (distinct ones, spread over
the file), and the same for fuzz/seed-configs/*.json (a `config` and a list of `contexts`). Each
config also gets a seed of its own, without a context. The corpus is kept small on purpose: the
fuzzer grows its own in fuzz/corpus/ (not committed). Run it from anywhere; it rewrites
fuzz/seeds/ from scratch.
"""

import hashlib
import json
import pathlib
import shutil

FUZZ = pathlib.Path(__file__).resolve().parent
ROOT = FUZZ.parent
OUT = FUZZ / "seeds"
# Contexts per configuration (besides the seed without one).
CONTEXTS_PER_CONFIG = 3


def compact(value):
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def main():
    sources = []
    for path in sorted((ROOT / "testdata" / "evaluation").glob("*.json")):
        doc = json.loads(path.read_text())
        contexts = [case.get("context", {}) for case in doc.get("cases", [])]
        sources.append((path.stem, doc["config"], contexts))
    for path in sorted((FUZZ / "seed-configs").glob("*.json")):
        doc = json.loads(path.read_text())
        sources.append((path.stem, doc["config"], doc.get("contexts", [])))
    stems = [stem for stem, _, _ in sources]
    assert len(stems) == len(set(stems)), f"two sources share a name: {stems}"

    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir()
    count = 0
    for stem, config, contexts in sources:
        config_bytes = compact(config)
        distinct = list(dict.fromkeys(compact(context) for context in contexts))
        step = max(1, len(distinct) // CONTEXTS_PER_CONFIG)
        chosen = distinct[::step][:CONTEXTS_PER_CONFIG]
        seeds = [config_bytes] + [config_bytes + b"\xff" + context for context in chosen]
        for i, seed in enumerate(seeds):
            digest = hashlib.sha1(seed).hexdigest()[:8]
            (OUT / f"{stem}-{i:02}-{digest}").write_bytes(seed)
            count += 1
    print(f"wrote {count} seeds to {OUT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
