"""Time and peak memory of the curation stages against pool size: dedup, k-means level 1, the upper levels of the
hierarchy and balanced sampling, per million embeddings, at D = 384 and 1024.

The pool is synthetic: a seeded long-tailed (Zipf) mixture of Gaussian clusters on the unit sphere, with a fraction
of rows replaced by noisy copies of others (planted near-duplicates), L2-normalised and stored as float16 in a
temporary `.npy` memmap, as `dinokit embed` writes it. Each stage runs in a fresh subprocess on that memmap, so its
peak memory is its own:
- `dedup-exact`, `dedup-ivf`: `near_duplicate_groups(pool, threshold, k, index=...)`; `dedup-disk`: ivf with its
  inverted lists on disk (`scratch_dir`);
- `kmeans`: `kmeans(pool, k, iters, init=...)` (level 1); the seeding and each Lloyd update are timed apart;
- `upper`: `hierarchical_kmeans` of the level-1 centroids into the upper levels (`--upper`);
- `sample`: `balanced_sample` of a quarter of the pool from that tree, "random" and "closest".
Peak memory: `VmHWM` of the stage's process (its peak resident set, counting the pool pages mapped from the page
cache; not `ru_maxrss`, which a child inherits across exec from the parent that wrote the pool) and the peak of its
anonymous resident memory (`RssAnon`, sampled every 20 ms: what the stage allocates; the mapped pool is not
in it), both with the figure after the imports, before the stage, beside them.

Peer: the same operations at the smallest pool size. The figure is the ratio of time per row at each size to the
smallest size's (1.0 everywhere = linear in N); exact dedup is quadratic by construction.

    PYTHONPATH=. OMP_NUM_THREADS=1 python benchmarks/curation.py [--sizes 12500 25000 50000 100000] [--dims 384 1024]
        [--k 256] [--iters 5] [--init auto] [--exact-max 50000] [--stages …] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

STAGES = ("dedup-exact", "dedup-ivf", "dedup-disk", "kmeans", "upper", "sample")


def make_pool(path: Path, n: int, d: int, seed: int, clusters: int = 1000, dup_frac: float = 0.01,
              block: int = 16384) -> int:  # fmt: skip
    """Write a float16 [n, d] memmap of unit rows; returns the number of planted duplicate rows."""
    rng = np.random.default_rng([seed, n, d])
    centres = rng.standard_normal((clusters, d)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    weights = 1.0 / np.arange(1, clusters + 1)  # Zipf: a long tail of small clusters
    weights /= weights.sum()
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=(n, d))
    sigma = 1.0 / np.sqrt(d)  # noise of norm ≈ 1: cosine ≈ 0.7 to the centre, ≈ 0.5 within a cluster
    for s in range(0, n, block):
        b = min(block, n - s)
        x = centres[rng.choice(clusters, b, p=weights)] + sigma * rng.standard_normal((b, d)).astype(np.float32)
        out[s : s + b] = x / np.linalg.norm(x, axis=1, keepdims=True)
    # planted near-duplicates: copies of earlier rows with noise of norm ≈ 0.05 (cosine ≈ 0.999)
    n_dup = int(dup_frac * n)
    dst = np.sort(rng.choice(np.arange(n // 2, n), n_dup, replace=False))
    src = rng.integers(0, n // 2, n_dup)
    for i in range(0, n_dup, block):
        x = out[src[i : i + block]].astype(np.float32)
        x += 0.05 * sigma * rng.standard_normal(x.shape).astype(np.float32)
        out[dst[i : i + block]] = x / np.linalg.norm(x, axis=1, keepdims=True)
    out.flush()
    del out
    return n_dup


def _status(field: str) -> int:
    """A field of /proc/self/status in bytes (0 where the kernel does not report it)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


class AnonPeak:
    """The peak of RssAnon over a block, sampled every 20 ms in a thread."""

    def __enter__(self):
        self.peak, self._stop = _status("RssAnon"), threading.Event()

        def watch():
            while not self._stop.wait(0.02):
                self.peak = max(self.peak, _status("RssAnon"))

        self._thread = threading.Thread(target=watch, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _status("RssAnon"))


def worker(a) -> dict:
    """Run one stage on the pool `a.pool` in this process; returns its timings and memory."""
    import torch

    from dinokit.curate.dedup import near_duplicate_groups
    from dinokit.curate.kmeans import Tree, hierarchical_kmeans, kmeans
    from dinokit.curate.sampling import balanced_sample

    pool = np.load(a.pool, mmap_mode="r")
    n = pool.shape[0]
    work = Path(a.work)
    out = {"stage": a.stage, "n": n, "d": pool.shape[1], "threads": torch.get_num_threads()}
    base_rss, base_anon = _status("VmHWM"), _status("RssAnon")
    with AnonPeak() as mem:
        t0 = time.perf_counter()
        if a.stage.startswith("dedup"):
            index = {"dedup-exact": "exact", "dedup-ivf": "ivf", "dedup-disk": "ivf"}[a.stage]
            scratch = work / "scratch" if a.stage == "dedup-disk" else None
            labels = near_duplicate_groups(pool, a.threshold, k=a.dedup_k, index=index, scratch_dir=scratch)
            out["removed"] = int(n - (labels.max() + 1))
        elif a.stage == "kmeans":
            ticks = []
            c, asg = kmeans(pool, a.k, a.iters, seed=0, on_iter=lambda: ticks.append(time.perf_counter()), init=a.init)
            end = time.perf_counter()
            steps = np.diff(ticks) if len(ticks) > 1 else np.array([ticks[0] - t0])
            out["per_iter_s"] = float(np.median(steps))
            # first tick = seeding + one update (with a single update the two cannot be told apart: both reported)
            out["seeding_s"] = float(ticks[0] - t0 - out["per_iter_s"]) if len(ticks) > 1 else float("nan")
            out["final_assign_s"] = float(end - ticks[-1])
            np.save(work / "c1.npy", c)
            np.save(work / "a1.npy", asg)
        elif a.stage == "upper":
            c1 = np.load(work / "c1.npy")
            tree = hierarchical_kmeans(c1, a.upper, iters=a.iters, seed=0)
            for i, (c, asg) in enumerate(zip(tree.centroids, tree.assignments), 2):
                np.save(work / f"c{i}.npy", c)
                np.save(work / f"a{i}.npy", asg)
        else:  # sample
            levels = range(1, len(a.upper) + 2)
            tree = Tree([np.load(work / f"c{i}.npy") for i in levels], [np.load(work / f"a{i}.npy") for i in levels])
            rows = balanced_sample(tree, n // 4, "random", seed=0)
            out["random_s"] = time.perf_counter() - t0
            t1 = time.perf_counter()
            rows_c = balanced_sample(tree, n // 4, "closest", seed=0, x=pool)
            out["closest_s"] = time.perf_counter() - t1
            out["sampled"] = [len(rows), len(rows_c)]
        out["time_s"] = time.perf_counter() - t0
    out["maxrss_mb"] = _status("VmHWM") / 2**20
    out["base_rss_mb"] = base_rss / 2**20
    out["anon_peak_mb"] = mem.peak / 2**20
    out["base_anon_mb"] = base_anon / 2**20
    return out


def run_stage(stage: str, pool: Path, work: Path, a) -> dict:
    argv = [sys.executable, __file__, "--worker", stage, "--pool", str(pool), "--work", str(work),
            "--k", str(a.k), "--iters", str(a.iters), "--threshold", str(a.threshold),
            "--dedup-k", str(a.dedup_k), "--init", a.init, "--upper", *map(str, a.upper)]  # fmt: skip
    res = subprocess.run(argv, capture_output=True, text=True, check=False)
    if res.returncode:
        raise SystemExit(f"{stage} failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[12500, 25000, 50000, 100000])
    p.add_argument("--dims", type=int, nargs="+", default=[384, 1024])
    p.add_argument("--k", type=int, default=256, help="level-1 clusters")
    p.add_argument("--upper", type=int, nargs="+", default=[32, 8], help="clusters of the levels above level 1")
    p.add_argument("--iters", type=int, default=5, help="Lloyd updates per k-means run")
    p.add_argument("--init", default="auto", choices=["auto", "k-means++", "k-means-parallel"], help="level-1 seeding")
    p.add_argument("--threshold", type=float, default=0.95, help="dedup cosine threshold")
    p.add_argument("--dedup-k", type=int, default=16)
    p.add_argument("--exact-max", type=int, default=50000, help="exact dedup (quadratic) only up to this N")
    p.add_argument("--stages", nargs="+", default=list(STAGES), choices=STAGES)
    p.add_argument("--json", type=Path, help="write every measurement here")
    p.add_argument("--worker", choices=STAGES, dest="stage", help=argparse.SUPPRESS)
    p.add_argument("--pool", help=argparse.SUPPRESS)
    p.add_argument("--work", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.stage:
        print(json.dumps(worker(a)))
        return

    results = []
    for d in a.dims:
        for n in sorted(a.sizes):
            with tempfile.TemporaryDirectory() as tmp:
                pool, work = Path(tmp) / "pool.npy", Path(tmp)
                t = time.perf_counter()
                planted = make_pool(pool, n, d, seed=0)
                print(f"D={d} N={n}: pool {pool.stat().st_size / 2**20:.0f} MiB written in "
                      f"{time.perf_counter() - t:.1f} s, {planted} planted duplicates", file=sys.stderr)  # fmt: skip
                for stage in a.stages:
                    if stage == "dedup-exact" and n > a.exact_max:
                        continue
                    if stage in ("upper", "sample") and "kmeans" not in a.stages:
                        continue
                    r = run_stage(stage, pool, work, a)
                    r["planted"] = planted
                    results.append(r)
                    print(f"  {stage:12s} {r['time_s']:8.2f} s  peak RSS {r['maxrss_mb']:6.0f} MB "
                          f"anon peak {r['anon_peak_mb']:6.0f} MB (base {r['base_anon_mb']:.0f})",
                          file=sys.stderr)  # fmt: skip

    print(f"\nk={a.k} (upper {a.upper}, init {a.init}), {a.iters} Lloyd updates per run, dedup k={a.dedup_k} at "
          f"cosine >= {a.threshold}, {results[0]['threads']} thread(s)\n")  # fmt: skip
    head = "| D | stage | N | time (s) | s per 1M rows | ratio to smallest N | peak RSS / anon (MB), base | notes |"
    print(head + "\n" + "|---" * 8 + "|")
    for d in a.dims:
        for stage in STAGES:
            rows = sorted((r for r in results if r["d"] == d and r["stage"] == stage), key=lambda r: r["n"])
            if not rows:
                continue
            per0 = rows[0]["time_s"] / rows[0]["n"]
            for r in rows:
                per = r["time_s"] / r["n"]
                note = ""
                if stage == "kmeans":
                    note = (f"seeding {r['seeding_s']:.2f} s, {r['per_iter_s']:.3f} s/update "
                            f"({r['per_iter_s'] / r['n'] * 1e6:.2f} s/update/1M)")  # fmt: skip
                elif stage.startswith("dedup"):
                    note = f"{r['removed']} rows removed ({r['planted']} planted)"
                elif stage == "sample":
                    note = f"random {r['random_s']:.2f} s, closest {r['closest_s']:.2f} s"
                print(f"| {d} | {stage} | {r['n']:,} | {r['time_s']:.2f} | {per * 1e6:.1f} | {per / per0:.2f} | "
                      f"{r['maxrss_mb']:.0f} / {r['anon_peak_mb']:.0f}, {r['base_rss_mb']:.0f} / "
                      f"{r['base_anon_mb']:.0f} | {note} |")  # fmt: skip
    if a.json:
        a.json.write_text(json.dumps({"args": {k: v for k, v in vars(a).items() if k != "json"}, "results": results},
                                     indent=1, default=str))  # fmt: skip


if __name__ == "__main__":
    main()
