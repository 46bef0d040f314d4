#!/usr/bin/env python3
"""Long-running mutation fuzz of the ONI decoder (``make fuzz``).

    python scripts/fuzz_decoder.py --seconds 300 --seed 1
    python scripts/fuzz_decoder.py --replay out/fuzz-crashes/*.frames

Starts from the golden messages (valid and bad, from scripts/make_golden.py) and mutates them at every level:
bits and bytes of any frame, whole frames (drop, duplicate, swap, splice from another message), and values
inside the msgpack body (replaced by random values of random types, deleted, added, nested deeply). Each
input goes through ``oni.codec.decode`` with a size limit and a shared-memory resolver, as a subscriber
decodes. The contract: a valid, JSON-ready message with finite floats, or a ``RejectedMessage``. Anything
else is a crash; crashing inputs are saved (a msgpack array of frames, like the golden ``.frames`` files,
plus a ``.txt`` traceback) and the exit status is 1. Inputs slower than ``--slow-ms`` are saved and reported.
The same properties run for a bounded number of examples in tests/oni/test_bad_input.py.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import random
import sys
import time
import traceback
from collections import Counter
from pathlib import Path
from typing import Any

import msgpack
import numpy as np

from oni import codec
from oni.errors import RejectedMessage
from oni.shm import ShmReader
from oni.tensor import DTYPES

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_golden  # noqa: E402  (a sibling script, not a package)

ROOT = Path(__file__).resolve().parent.parent
LIMITS = codec.DecodeLimits(max_message_bytes=4 * 1024 * 1024)
INTERESTING: list[Any] = [
    None, True, False, 0, 1, -1, 2, 255, 256, 65535, 1 << 31, (1 << 63) - 1, -(1 << 63), (1 << 64) - 1,
    0.0, -0.0, 1e-310, 1e308, float("nan"), float("inf"), float("-inf"), "", "1.0", "2.0", "1.1", "..", "x" * 300,
    "raw", "quantized", "png", "frame", "data", "shm", *sorted(DTYPES), b"", b"\x00" * 7, [], {}, [0], [1 << 40],
    [2147483647, 2147483647, 2147483647], {"segment": "..", "slot": 0, "gen": 0, "offset": 0},
]
KEYS = ["oni", "header", "data", "dtype", "shape", "encoding", "frame", "data", "shm", "scale", "zero_point", "qdtype"]


class Mutator:
    """Random mutations of ONI messages (lists of frames), driven by one ``random.Random``."""

    def __init__(self, rng: random.Random, seeds: list[list[bytes]]) -> None:
        self.rng = rng
        self.seeds = seeds

    def value(self, depth: int = 0) -> Any:
        """A random msgpack-able value of a random type."""
        r = self.rng
        kind = r.randrange(9 if depth < 3 else 6)
        if kind == 0:
            return r.choice(INTERESTING)
        if kind == 1:
            return r.randint(-(1 << 63), (1 << 64) - 1)
        if kind == 2:
            return r.choice([r.uniform(-1e3, 1e3), r.random() * 10.0 ** r.randint(-320, 308), float("nan")])
        if kind == 3:
            return "".join(r.choice("abc.xyz019_-\u00e9\u4e2d") for _ in range(r.randrange(12)))
        if kind == 4:
            return r.randbytes(r.randrange(40))
        if kind == 5:
            return r.choice([True, False, None])
        if kind == 6:
            return [self.value(depth + 1) for _ in range(r.randrange(5))]
        if kind == 7:
            return {r.choice(KEYS + ["x", "y"]): self.value(depth + 1) for _ in range(r.randrange(5))}
        nested: Any = self.value(depth + 1)
        for _ in range(r.randrange(1, 200)):
            nested = [nested]
        return nested

    def mutate(self, frames: list[bytes]) -> list[bytes]:
        """Apply one to four random mutations."""
        out = [bytearray(f) for f in frames]
        for _ in range(self.rng.randint(1, 4)):
            op = self.rng.choice([self._flip, self._bytes, self._cut, self._insert, self._frames, self._splice,
                                  self._body, self._body, self._body, self._body])
            out = op(out)
        return [bytes(f) for f in out]

    def _pick(self, frames: list[bytearray]) -> int:
        return self.rng.randrange(len(frames)) if frames else -1

    def _flip(self, frames: list[bytearray]) -> list[bytearray]:
        k = self._pick(frames)
        if k >= 0 and frames[k]:
            for _ in range(self.rng.randint(1, 8)):
                i = self.rng.randrange(len(frames[k]))
                frames[k][i] ^= 1 << self.rng.randrange(8)
        return frames

    def _bytes(self, frames: list[bytearray]) -> list[bytearray]:
        k = self._pick(frames)
        if k >= 0 and frames[k]:
            i = self.rng.randrange(len(frames[k]))
            frames[k][i] = self.rng.choice([0, 0xFF, 0x7F, 0x80, 0xC1, 0xDC, 0xDE, self.rng.randrange(256)])
        return frames

    def _cut(self, frames: list[bytearray]) -> list[bytearray]:
        k = self._pick(frames)
        if k >= 0:
            frames[k] = frames[k][: self.rng.randint(0, len(frames[k]))]
        return frames

    def _insert(self, frames: list[bytearray]) -> list[bytearray]:
        k = self._pick(frames)
        if k >= 0:
            i = self.rng.randint(0, len(frames[k]))
            frames[k][i:i] = self.rng.randbytes(self.rng.randint(1, 32))
        return frames

    def _frames(self, frames: list[bytearray]) -> list[bytearray]:
        k = self._pick(frames)
        op = self.rng.randrange(4)
        if op == 0 and k >= 0:
            del frames[k]
        elif op == 1 and k >= 0:
            frames.insert(k, bytearray(frames[k]))
        elif op == 2 and len(frames) >= 2:
            j = self._pick(frames)
            frames[k], frames[j] = frames[j], frames[k]
        else:
            size = self.rng.choice([0, 4, 8, 2048, 4096] * 50 + [LIMITS.max_message_bytes])  # rarely: too large
            frames.append(bytearray(self.rng.randbytes(size)))
        return frames

    def _splice(self, frames: list[bytearray]) -> list[bytearray]:
        other = self.rng.choice(self.seeds)
        k = self.rng.randrange(max(len(frames), 1))
        if other and frames:
            frames[k] = bytearray(other[min(k, len(other) - 1)])
        return frames

    def _body(self, frames: list[bytearray]) -> list[bytearray]:
        if len(frames) < 2:
            return frames
        try:
            body = msgpack.unpackb(bytes(frames[1]), strict_map_key=False)
        except (ValueError, TypeError):  # msgpack errors are ValueErrors; TypeError for unhashable map keys
            return frames
        containers = [p for p in _paths(body) if isinstance(_get(body, p), (dict, list))]
        leaves = [p for p in _paths(body) if p]
        op = self.rng.randrange(4)
        if op == 0 and containers:  # add a key or element
            node = _get(body, self.rng.choice(containers))
            if isinstance(node, dict):
                node[self.rng.choice(KEYS + ["extra", "ranges_m", "depth"])] = self.value()
            else:
                node.append(self.value())
        elif op == 1 and leaves:  # delete
            path = self.rng.choice(leaves)
            parent = _get(body, path[:-1])
            del parent[path[-1]]
        elif op == 2 and leaves:  # mutate a byte string in place (inline tensors, PNGs)
            blobs = [p for p in leaves if isinstance(_get(body, p), bytes)]
            if blobs:
                path = self.rng.choice(blobs)
                blob = [bytearray(_get(body, path))]
                blob = self.rng.choice([self._flip, self._cut, self._insert, self._bytes])(blob)
                _get(body, path[:-1])[path[-1]] = bytes(blob[0])
        elif leaves:  # replace with a random value of a random type
            path = self.rng.choice(leaves)
            _get(body, path[:-1])[path[-1]] = self.value()
        try:
            frames[1] = bytearray(msgpack.packb(body))
        except (ValueError, OverflowError, TypeError):
            pass  # e.g. nesting too deep for msgpack: keep the frames as they were
        return frames


def _paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    if isinstance(node, dict):
        for key, value in node.items():
            out += _paths(value, prefix + (key,))
    elif isinstance(node, list) and len(prefix) < 40:
        for i, value in enumerate(node):
            out += _paths(value, prefix + (i,))
    return out


def _get(node: Any, path: tuple) -> Any:
    for key in path:
        node = node[key]
    return node


def check(frames: list[bytes], shm: ShmReader) -> str:
    """Decode once; returns ``"ok"`` or the reject kind. Raises on a broken contract (a crash)."""
    try:
        msg = codec.decode(frames, limits=LIMITS, shm=shm.resolve)
    except RejectedMessage as exc:
        return exc.kind
    for key, value in msg.data.items():
        if isinstance(value, np.ndarray) and value.dtype.kind == "f" and not np.isfinite(value).all():
            raise AssertionError(f"accepted message has NaN/Inf in tensor {key!r}")
        if isinstance(value, float) and not math.isfinite(value):
            raise AssertionError(f"accepted message has non-finite field {key!r}")
    json.dumps(msg.to_json(), allow_nan=False)
    return "ok"


def seeds() -> list[list[bytes]]:
    """Every golden message, valid and bad, in wire form, plus each valid one's packed form."""
    files = make_golden.render()
    cases = json.loads(files["MANIFEST.json"])["cases"]
    out = [msgpack.unpackb(data) for name, data in files.items() if name.endswith(".frames")]
    out += [[case["topic"].encode(), files[f"{name}.bin"]] for name, case in cases.items()]
    return out


def save(crash_dir: Path, frames: list[bytes], note: str) -> Path:
    crash_dir.mkdir(parents=True, exist_ok=True)
    blob = msgpack.packb(frames)
    path = crash_dir / f"{hashlib.sha1(blob).hexdigest()[:16]}.frames"
    path.write_bytes(blob)
    path.with_suffix(".txt").write_text(note)
    return path


def run(seconds: float, seed: int, crash_dir: Path, slow_ms: float, max_cases: int | None) -> int:
    rng = random.Random(seed)
    np.seterr(all="ignore")  # overflow/invalid warnings on hostile values are expected, and would flood the output
    corpus = seeds()
    mutator = Mutator(rng, corpus)
    shm = ShmReader()
    outcomes: Counter[str] = Counter()
    crashes: Counter[str] = Counter()
    slow = 0
    start = time.monotonic()
    cases = 0
    while time.monotonic() - start < seconds and (max_cases is None or cases < max_cases):
        frames = mutator.mutate(rng.choice(corpus))
        cases += 1
        t0 = time.perf_counter()
        try:
            outcomes[check(frames, shm)] += 1
        except Exception as exc:  # the point of fuzzing: anything but RejectedMessage is a finding
            where = traceback.extract_tb(exc.__traceback__)[-1]
            signature = f"{type(exc).__name__} at {Path(where.filename).name}:{where.lineno}"
            if not crashes[signature]:
                path = save(crash_dir, frames, traceback.format_exc())
                print(f"CRASH {signature}: {exc!s:.200} -> {path}", flush=True)
            crashes[signature] += 1
        elapsed_ms = (time.perf_counter() - t0) * 1000.0
        if elapsed_ms > slow_ms:
            slow += 1
            path = save(crash_dir / "slow", frames, f"decode took {elapsed_ms:.0f} ms\n")
            print(f"SLOW {elapsed_ms:.0f} ms -> {path}", flush=True)
    shm.close()
    elapsed = time.monotonic() - start
    print(f"seed {seed}: {cases} cases in {elapsed:.1f} s ({cases / max(elapsed, 1e-9):.0f}/s), {len(corpus)} seeds")
    print(f"  accepted: {outcomes.pop('ok', 0)}")
    for kind, count in sorted(outcomes.items(), key=lambda kv: -kv[1]):
        print(f"  rejected {kind}: {count}")
    print(f"  slow (> {slow_ms:.0f} ms): {slow}")
    print(f"  crashes: {sum(crashes.values())}" + "".join(f"\n    {n} x {sig}" for sig, n in crashes.most_common()))
    return 1 if crashes else 0


def replay(paths: list[Path]) -> int:
    shm = ShmReader()
    failed = 0
    for path in paths:
        try:
            print(f"{path}: {check(msgpack.unpackb(path.read_bytes()), shm)}")
        except Exception:  # report every input, then fail
            failed += 1
            print(f"{path}: CRASH\n{traceback.format_exc()}")
    shm.close()
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="how long to fuzz (default 60)")
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: from the clock, printed)")
    parser.add_argument("--max-cases", type=int, default=None, help="stop after this many inputs")
    parser.add_argument("--crash-dir", type=Path, default=ROOT / "out" / "fuzz-crashes", help="where crashing inputs go")
    parser.add_argument("--slow-ms", type=float, default=2000.0, help="report inputs that take longer to decode")
    parser.add_argument("--replay", type=Path, nargs="+", help="decode saved inputs instead of fuzzing")
    args = parser.parse_args(argv)
    if args.replay:
        return replay(args.replay)
    seed = args.seed if args.seed is not None else time.time_ns() % (1 << 32)
    return run(args.seconds, seed, args.crash_dir, args.slow_ms, args.max_cases)


if __name__ == "__main__":
    sys.exit(main())
