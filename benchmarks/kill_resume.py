"""Does a job killed with SIGKILL at random moments, then rerun, end exactly where an uninterrupted job ends?

Training: `dinokit train` (the tiny_cpu recipe on a tiny ViT, a checkpoint every step, two data-loading
workers) is killed `--kills` times, each a random number of seconds (`--delays`) after it started, and each
time started again with the same command; the final checkpoint (student, teacher, target centres, optimiser
state, step) and the logged metrics are compared bit for bit with a run that was never interrupted. A kill
lands during a step, while batches are loaded or while a checkpoint is written (a checkpoint's temporary file
exists at that moment): every third kill waits for a checkpoint write, and the script reports how many hit
one. Extraction: `dinokit extract` into shards of a few images, killed the same way (every third kill during a
shard write); every image's stored features must equal the uninterrupted extraction's, with no image lost or
stored twice.

Peer: the same command, never interrupted.

    PYTHONPATH=. python benchmarks/kill_resume.py [--kills 10] [--seed 0] [--only train|extract] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

TINY = ["model.backbone=dinov3_test", "crops.global_size=64", "crops.local_size=32", "crops.local_number=2",
        "model.dino_head={n_prototypes: 64, hidden_dim: 64, bottleneck_dim: 32}",
        "model.ibot_head={n_prototypes: 48, hidden_dim: 64, bottleneck_dim: 32}", "train.batch_size=4",
        "train.log_every=1", "data.num_workers=2", "optim.warmup_steps=2", "eval.every=0", "eval.knn.train=null",
        "eval.knn.val=null", "checkpoint.every=1", "checkpoint.keep=2"]  # fmt: skip
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def images(folder: Path, n: int, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        h, w = rng.integers(48, 96, 2)
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(folder / f"{i:04d}.png")
    return folder


def run_killed(argv: list[str], kills: int, delays: tuple[float, float], rng: random.Random, watch: Path | None):
    """Run `argv` to completion, killing it `kills` times after random delays; every third kill waits, after its
    delay, for a save to be in progress (a temporary file in `watch`). Returns the moment each kill hit
    ("saving" when a temporary file existed, else "running"; "exited <status>" when the job ended first)."""
    hits = []
    for i in range(kills):
        proc = subprocess.Popen(argv, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + rng.uniform(*delays)
        while time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.005)
        if watch is not None and i % 3 == 2:
            until = time.monotonic() + 20
            while not any(watch.glob(".*.tmp")) and proc.poll() is None and time.monotonic() < until:
                time.sleep(0.0005)
        if proc.poll() is not None:  # ended before the kill: finished, or failed
            hits.append(f"exited {proc.returncode}")
            break
        saving = watch is not None and any(watch.glob(".*.tmp"))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        hits.append("saving" if saving else "running")
    final = subprocess.run(argv, env=ENV, capture_output=True, text=True)
    if final.returncode:
        sys.exit(f"the final, uninterrupted rerun failed ({final.returncode}):\n{final.stderr[-2000:]}")
    return hits


def train_case(out: Path, data: Path, kills: int, steps: int, delays, rng: random.Random) -> dict:
    def argv(run: Path) -> list[str]:
        return ["dinokit", "train", "configs/pretrain/tiny_cpu.yaml", f"data.path={data}", f"output_dir={run}",
                f"train.steps={steps}", *TINY]  # fmt: skip

    t0 = time.monotonic()
    subprocess.run(argv(out / "train_reference"), env=ENV, check=True, capture_output=True)
    one_run = time.monotonic() - t0
    hits = run_killed(argv(out / "train_killed"), kills, delays, rng, out / "train_killed" / "checkpoints")
    a, b = (torch.load(sorted((out / r / "checkpoints").glob("step_*.pt"))[-1], weights_only=True)
            for r in ("train_reference", "train_killed"))  # fmt: skip
    differing = [f"{key}.{name}" for key in ("student", "teacher", "terms") for name, v in a[key].items()
                 if not torch.equal(v, b[key][name])]  # fmt: skip
    for i, moments in a["optimizer"]["state"].items():
        theirs = b["optimizer"]["state"][i]
        differing += [f"optimizer.{i}.{k}" for k, v in moments.items() if not torch.equal(v, theirs[k])]

    def metrics(run: str) -> list[dict]:
        rows = [json.loads(line) for line in (out / run / "metrics.jsonl").read_text().splitlines() if line.strip()
                and line.rstrip().endswith("}")]  # fmt: skip
        last = {r["step"]: {k: v for k, v in r.items() if k not in ("images_per_s", "time")} for r in rows}
        return [last[s] for s in sorted(last)]  # a rerun logs the steps after its checkpoint again

    return {"kills": hits.count("running") + hits.count("saving"), "during_checkpoint_write": hits.count("saving"),
            "ended_before_a_kill": [h for h in hits if h.startswith("exited")],
            "step": b["step"], "same_step": a["step"] == b["step"], "tensors_differing": len(differing),
            "metrics_equal": metrics("train_reference") == metrics("train_killed"),
            "uninterrupted_run_s": round(one_run, 1)}  # fmt: skip


def extract_case(out: Path, data: Path, kills: int, delays, rng: random.Random) -> dict:
    def argv(folder: Path) -> list[str]:
        return ["dinokit", "extract", str(data), "--backbone", "random:dinov3_test", "--output", str(folder),
                "--size", "64", "--shard-size", "8", "--batch-size", "4", "--workers", "1", "--device", "cpu"]

    t0 = time.monotonic()
    subprocess.run(argv(out / "extract_reference"), env=ENV, check=True, capture_output=True)
    one_run = time.monotonic() - t0
    hits = run_killed(argv(out / "extract_killed"), kills, delays, rng, out / "extract_killed")
    from dinokit.tools.extract import read_features

    a, b = read_features(out / "extract_reference"), read_features(out / "extract_killed")
    index = [json.loads(line)["path"] for line in (out / "extract_killed" / "index.jsonl").read_text().splitlines()]
    differing = [p for p in a if p not in b or any(not np.array_equal(v, b[p][k]) for k, v in a[p].items())]
    return {"kills": hits.count("running") + hits.count("saving"), "during_shard_write": hits.count("saving"),
            "ended_before_a_kill": [h for h in hits if h.startswith("exited")], "images": len(a), "stored": len(b),
            "stored_twice": len(index) - len(set(index)), "images_differing": len(differing),
            "uninterrupted_run_s": round(one_run, 1)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--steps", type=int, default=300, help="training steps of each run")
    parser.add_argument("--images", type=int, default=6000, help="images to extract (and train on)")
    parser.add_argument("--delays", type=float, nargs=2, default=(2.5, 8.0), help="seconds before a kill: range")
    parser.add_argument("--extract-delays", type=float, nargs=2, default=(2.0, 4.0), help="the same for extract")
    parser.add_argument("--only", choices=("train", "extract"), default=None, help="run one of the two cases")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("/tmp/kill_resume"))
    args = parser.parse_args()
    shutil.rmtree(args.out, ignore_errors=True)
    rng = random.Random(args.seed)
    data = images(args.out / "images", args.images, args.seed)
    results, ok = {}, True
    if args.only in (None, "train"):
        r = results["train"] = train_case(args.out, data, args.kills, args.steps, args.delays, rng)
        ok &= r["same_step"] and not r["tensors_differing"] and r["metrics_equal"]
    if args.only in (None, "extract"):
        r = results["extract"] = extract_case(args.out, data, args.kills, args.extract_delays, rng)
        ok &= r["stored"] == r["images"] and not r["stored_twice"] and not r["images_differing"]
    print(json.dumps(results, indent=2))
    (args.out / "results.json").write_text(json.dumps(results, indent=2))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
