"""Fuzz the image path with a thousand or more mutated files (`tests/data/fuzz_corpus.py`: byte flips,
truncations, empty and zero-filled files, wrong extensions, odd modes, EXIF rotations, extreme aspect ratios,
decompression-bomb headers) through the dataset code, `dinokit extract` and a short `dinokit train`.

The peer is an independent oracle (`fuzz_corpus.usable`: plain Pillow open + load and the size rule of
`dinokit.data.images`), run on the same files in the same process. Printed: files fuzzed by kind, crashes, hangs
(files over `--per-file` seconds), each job's skip count against the oracle's and the files they disagree on, the
slowest file, and the decoding time per file against the oracle's. Exit status 1 when any of these is off.

Command: `PYTHONPATH=. python benchmarks/fuzz_images.py [--files 1000] [--seed 0]` (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import collections
import io
import logging
import math
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

from dinokit.data.datasets import ImageDataset, ImageList
from dinokit.data.images import MAX_PIXELS, decode_image
from tests.data.fuzz_corpus import declare_size, usable, write_corpus

TINY_CPU = Path(__file__).parents[1] / "configs" / "pretrain" / "tiny_cpu.yaml"


class Hang(Exception):
    pass


def _alarm(signum, frame):
    raise Hang


def dataset_pass(paths: list[Path], per_file: float) -> tuple[set[str], list[str], list[str], list[float]]:
    """Every file through `ImageDataset` in this process → (skipped, crashes, hangs, seconds per file)."""
    dataset = ImageDataset(ImageList(paths))
    crashes, hangs, seconds = [], [], []
    signal.signal(signal.SIGALRM, _alarm)
    for i, path in enumerate(paths):
        start = time.perf_counter()
        signal.setitimer(signal.ITIMER_REAL, per_file)  # a hang is counted, and the run goes on
        try:
            dataset[i]
        except Hang:
            hangs.append(str(path))
        except Exception as e:  # noqa: BLE001 — a crash is what this run looks for
            crashes.append(f"{path}: {type(e).__name__}: {e}")
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        seconds.append(time.perf_counter() - start)
    return set(dataset.skipped), crashes, hangs, seconds


def costliest_admitted(folder: Path) -> tuple[str, float]:
    """The file the size rule lets cost most: a PNG of a few bytes declaring a square of `MAX_PIXELS` (decoded as
    truncated, i.e. blank) → (what it is, seconds to decode)."""
    side = math.isqrt(MAX_PIXELS)
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, "PNG")
    path = folder / "at_the_limit.png"
    path.write_bytes(declare_size(buf.getvalue(), "PNG", side, side))
    start = time.perf_counter()
    decode_image(path)
    return f"{path.stat().st_size} bytes declaring {side} × {side} px", time.perf_counter() - start


def run_cli(args: list[str], timeout: float) -> tuple[int | str, float, str]:
    """`dinokit ARGS` in a fresh process → (exit status or "hang", seconds, stderr)."""
    start = time.perf_counter()
    try:
        done = subprocess.run([sys.executable, "-m", "dinokit.cli", *args], capture_output=True, text=True,
                              timeout=timeout)  # fmt: skip
        return done.returncode, time.perf_counter() - start, done.stderr
    except subprocess.TimeoutExpired as e:
        return "hang", time.perf_counter() - start, (e.stderr or b"").decode(errors="replace")


def compare(name: str, skipped: set[str], unusable: set[str]) -> bool:
    extra, missed = sorted(skipped - unusable), sorted(unusable - skipped)
    print(f"  {name}: skipped {len(skipped)}, oracle {len(unusable)}; skipped but usable {len(extra)}, "
          f"used but unusable {len(missed)}")  # fmt: skip
    for path in (extra + missed)[:5]:
        print(f"    disagree: {path}")
    return not extra and not missed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--per-file", type=float, default=10.0, help="seconds after which one file is a hang")
    parser.add_argument("--job-timeout", type=float, default=600.0, help="seconds after which a CLI job is a hang")
    parser.add_argument("--size", type=int, default=64, help="extract --size (the issue's was 64)")
    parser.add_argument("--batch", type=int, default=20, help="training batch size")
    parser.add_argument("--workers", type=int, default=2, help="loader workers of extract and train")
    parser.add_argument("--folder", default=None, help="write the corpus here and keep it (default: a temp folder)")
    args = parser.parse_args()
    logging.getLogger("dinokit.data").setLevel(logging.ERROR)  # the per-file skip lines: the figures say it all

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.folder or tmp).resolve()
        folder = root / "corpus"
        cases = write_corpus(folder, args.files, args.seed)
        paths = [folder / c.name for c in cases]
        start = time.perf_counter()
        unusable = {str(p) for p in paths if not usable(p)}
        oracle_s = time.perf_counter() - start
        kinds = collections.Counter(c.kind for c in cases)
        print(f"files fuzzed: {len(cases)} (seed {args.seed}): " + ", ".join(f"{k} {n}" for k, n in kinds.items()))
        print(f"oracle: {len(unusable)} unusable, {len(cases) - len(unusable)} usable")
        ok = True

        print("dataset (dinokit.data.datasets.ImageDataset, in this process):")
        skipped, crashes, hangs, seconds = dataset_pass(paths, args.per_file)
        slowest = max(range(len(paths)), key=seconds.__getitem__)
        print(f"  crashes {len(crashes)}, hangs {len(hangs)} (over {args.per_file:g} s); slowest file "
              f"{seconds[slowest]:.2f} s ({cases[slowest].note}); decoding {sum(seconds) / len(paths) * 1e3:.1f} "
              f"ms/file vs the oracle's {oracle_s / len(paths) * 1e3:.1f} (Pillow open + load)")  # fmt: skip
        for line in (crashes + hangs)[:10]:
            print(f"    {line}")
        what, secs = costliest_admitted(root)
        print(f"  the costliest file the size rule admits ({what}): {secs:.1f} s")
        ok &= not crashes and not hangs and secs < args.per_file
        ok &= compare("skip count", skipped, unusable)

        out = root / "extract"
        rc, secs, err = run_cli(["extract", str(folder), "--backbone", "random:dinov3_test", "--output", str(out),
                                 "--size", str(args.size), "--workers", str(args.workers), "--batch-size", "16"],
                                args.job_timeout)  # fmt: skip
        print(f"dinokit extract --size {args.size} --workers {args.workers}: exit {rc} in {secs:.1f} s "
              f"({secs / len(paths) * 1e3:.0f} ms/file)")  # fmt: skip
        listed = (out / "skipped.txt").read_text().splitlines() if (out / "skipped.txt").exists() else []
        ok &= rc == 0 and compare("skip count", set(listed), unusable)
        if rc != 0:
            print(err[-2000:])

        steps = -(-len(paths) // args.batch)  # one pass at least: every file is read
        rc, secs, err = run_cli(["train", str(TINY_CPU), f"data.path={folder}", f"output_dir={root / 'run'}",
                                 "model.backbone=dinov3_test", "crops.local_number=2", "checkpoint.every=0",
                                 f"train.batch_size={args.batch}", f"train.steps={steps}",
                                 f"data.num_workers={args.workers}"], args.job_timeout)  # fmt: skip
        found = re.search(r"(\d+) unreadable file\(s\) skipped", err)
        print(f"dinokit train (tiny, {steps} steps of {args.batch}, {args.workers} workers): exit {rc} in {secs:.1f} s")
        count = int(found.group(1)) if found else 0
        print(f"  skip count: {count} distinct files, oracle {len(unusable)}")
        ok &= rc == 0 and count == len(unusable)
        if rc != 0:
            print(err[-2000:])
    print("all figures agree" if ok else "FIGURES DISAGREE")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
