"""Does curation pay at small scale? Pretrain `configs/pretrain/tiny_cpu.yaml` on (a) a random subset and (b) a
curated subset of the same size of one long-tailed pool with planted near-duplicates, for the same steps, and
compare k-NN on a class-balanced validation set, with the paired-bootstrap interval of (b) − (a).

The pool: `dinokit data synth --long-tail 1.5 --duplicates 0.2` at 64 px (dinokit/data/synthetic.py):
object-centric images of ten materials whose frequencies follow a Zipf law (the first about half the pool, the
last under 2 %), a fifth of them edited copies (crop, resize, colour, JPEG) of earlier ones, recorded in
pretrain.json. Labels are never used for training or curation; they only score the result.

(a) M images drawn uniformly at random from the pool (seeded), pretrained for S steps.
(b) The whole pool embedded (`dinokit curate embed`, CLS, at the training size) with the teacher of run (a):
    DINOv2 embedded its pool with a model trained earlier; here the model trained on the random subset at the same
    budget plays that role. Then `curate dedup` (threshold chosen on the planted duplicates of pretrain.json: the
    one with the best pair F1 on a grid, so the dedup precision/recall reported are in-sample), `curate cluster`
    (hierarchical k-means, `--levels`) of the deduplicated pool and `curate sample --size M` (balanced, random
    within leaves); then the same config, seed and S steps from scratch on that keep.txt.
k-NN (the released protocol: CLS, cosine, k = 20, T = 0.07; dinokit/eval/knn.py `run_knn`) trained on
classify/train and evaluated on the class-balanced classify/val, for the random initialisation (the same seeded
initialisation both runs start from), (a) and (b). Also reported: the material histogram of both subsets, the
planted duplicates each holds, and dedup precision/recall on the planted pairs (pairs of images of one planted
family — an original and its copies — that land in one dedup group).

    PYTHONPATH=. OMP_NUM_THREADS=1 python benchmarks/curation_gain.py [--work /tmp/curation_gain] [--pool 3000]
        [--subset 1000] [--steps 300] [--levels 100,10] [--size 64] [--seed 0]

Everything is cached under --work (the synthetic set, both run folders, the curation folders): a rerun reuses the
finished stages and an interrupted training resumes from its last checkpoint. The table is printed as markdown and
everything lands in WORK/results.json.

What it does not claim: one seed, one pool, one short run per arm. The interval covers only the choice of
validation images, not training noise (a rerun of either arm with another seed moves k-NN by an amount this
benchmark does not measure), nor the choice of pool. The embedding model of (b) has itself been trained on the pool
(on a third of it), which (a) has not benefited from; and the dedup threshold is tuned on the planted labels.
A synthetic world of ten textures says little about web images.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs/pretrain/tiny_cpu.yaml"
METRIC = "top1_k20"


def dinokit(*args: str) -> None:
    """Run a `dinokit` command line in a subprocess (its own output shows in the log)."""
    cmd = [sys.executable, "-m", "dinokit", *args]
    print("$ dinokit " + " ".join(args), flush=True)
    subprocess.run(cmd, check=True, env={**os.environ, "PYTHONPATH": str(ROOT)})


def synth(work: Path, args) -> Path:
    from dinokit.data.synthetic import SynthConfig, write_synthetic

    config = SynthConfig(size=args.size, pretrain=args.pool, train_per_class=args.train_per_class,
                         val_per_class=args.val_per_class, dense_train=1, dense_val=1, pairs=1, landmarks=1, views=2,
                         distractors=1, long_tail=args.long_tail, duplicates=args.duplicates)  # fmt: skip
    return write_synthetic(work / "synth", seed=args.seed, config=config, workers=args.workers)


def write_list(path: Path, names: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(f"{n}\n" for n in names)
    if not path.exists() or path.read_text() != text:
        path.write_text(text)
    return path


def read_list(path: Path) -> list[str]:
    return [line for line in path.read_text().splitlines() if line and not line.startswith("#")]


def pretrain(run: Path, data: Path, args) -> Path:
    """`dinokit train tiny_cpu` on the list `data` into `run` (skipped when the run has finished)."""
    digest = hashlib.sha256(data.read_bytes()).hexdigest()  # the image list the run trained on
    if (run / "teacher_backbone").is_dir() and (run / "done.json").is_file():
        if json.loads((run / "done.json").read_text()).get("data_sha256") != digest:
            raise SystemExit(f"{run} was trained on another image list than {data}: remove it or use another --work")
        print(f"reusing {run}", flush=True)
        return run
    t0 = time.perf_counter()
    dinokit("train", str(CONFIG), f"data.path={data}", f"output_dir={run}", f"train.steps={args.steps}",
            f"seed={args.seed}", f"crops.global_size={args.crop}", f"checkpoint.every={max(1, args.steps // 3)}",
            *args.overrides)  # fmt: skip
    done = {"steps": args.steps, "seconds": time.perf_counter() - t0, "data": str(data), "data_sha256": digest}
    (run / "done.json").write_text(json.dumps(done))
    return run


def families(pool: dict) -> dict[str, str]:
    """Image name → the name of its planted family's original (itself for an original)."""
    return {it["name"]: it.get("copy_of", it["name"]) for it in pool["items"]}


def family_pairs(groups: list[list[str]]) -> set[tuple[str, str]]:
    return {(a, b) for g in groups for i, a in enumerate(sorted(g)) for b in sorted(g)[i + 1 :]}


def components(n: int, edges: np.ndarray) -> np.ndarray:
    """Connected-component label per node of an undirected graph given as `[E, 2]` row pairs (union-find)."""
    parent = np.arange(n)

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in edges:
        ra, rb = find(int(a)), find(int(b))
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    return np.array([find(i) for i in range(n)])


def precision_recall(predicted: set, truth: set) -> tuple[float, float]:
    hit = len(predicted & truth)
    return (hit / len(predicted) if predicted else 1.0), (hit / len(truth) if truth else 1.0)


def choose_threshold(vectors: np.ndarray, names: list[str], family: dict[str, str], k: int) -> dict:
    """The dedup threshold with the best pair F1 against the planted families, on a grid, mimicking `curate dedup`
    (each image joined to those of its k nearest neighbours at or above the threshold, connected components)."""
    x = torch.from_numpy(vectors.astype(np.float32))
    sims = x @ x.T
    sims.fill_diagonal_(-2.0)
    top, idx = sims.topk(min(k, len(names) - 1), dim=1)
    top, idx = top.numpy(), idx.numpy()
    short = [Path(n).name for n in names]
    truth_groups: dict[str, list[str]] = {}
    for n in short:
        truth_groups.setdefault(family[n], []).append(n)
    truth = family_pairs([g for g in truth_groups.values() if len(g) > 1])
    pos = {short.index(n): short.index(family[n]) for n in short if family[n] != n}
    planted_sims = [float(sims[i, j]) for i, j in pos.items()]
    best = None
    grid = np.concatenate([np.arange(0.5, 0.9, 0.02), np.arange(0.9, 0.9995, 0.0025)])
    for t in np.round(grid, 4):
        rows, cols = np.nonzero(top >= t)
        label = components(len(short), np.stack([rows, idx[rows, cols]], 1))
        groups: dict[int, list[str]] = {}
        for n, lab in zip(short, label):
            groups.setdefault(int(lab), []).append(n)
        p, r = precision_recall(family_pairs([g for g in groups.values() if len(g) > 1]), truth)
        f1 = 2 * p * r / (p + r) if p + r else 0.0
        if best is None or f1 > best["f1"]:
            best = {"threshold": float(t), "f1": f1, "precision": p, "recall": r}
    q = np.quantile(planted_sims, [0.05, 0.5]) if planted_sims else [float("nan")] * 2
    uncopied = [i for i, n in enumerate(short) if len(truth_groups.get(n, [])) == 1]  # originals without copies
    nearest_other = [float(top[i, 0]) for i in uncopied]
    return {**best, "planted_pairs": len(truth), "planted_sim_p5": float(q[0]), "planted_sim_median": float(q[1]),
            "unplanted_nearest_sim_median": float(np.median(nearest_other)) if nearest_other else None}  # fmt: skip


def subset_stats(names: list[str], pool: dict) -> dict:
    """Material histogram and planted duplicates of a subset (names: image paths)."""
    items = {it["name"]: it for it in pool["items"]}
    short = [Path(n).name for n in names]
    family = families(pool)
    members = Counter(family[n] for n in short)
    from dinokit.data.synthetic import MATERIALS

    hist = Counter(items[n]["material"] for n in short)
    return {
        "images": len(short),
        "materials": {m: hist.get(m, 0) for m in MATERIALS},
        "copies": sum("copy_of" in items[n] for n in short),  # planted copies in the subset
        "redundant": sum(c - 1 for c in members.values()),  # images whose planted family is already in it
        "families_with_2+": sum(c > 1 for c in members.values()),
    }


def knn(model, data: Path, size: int):
    from dinokit.eval.knn import run_knn

    return run_knn(model.eval(), data / "classify" / "train", data / "classify" / "val", size=size, batch_size=64)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", default="/tmp/curation_gain", help="cache and output folder")
    p.add_argument("--pool", type=int, default=3000, help="pretraining pool size")
    p.add_argument("--subset", type=int, default=None, help="M, images per arm (default pool / 3)")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--levels", default="100,10", help="`curate cluster --levels`")
    p.add_argument("--size", type=int, default=64, help="image side of the synthetic set")
    p.add_argument("--crop", type=int, default=64, help="crops.global_size of training and the k-NN/embed size")
    p.add_argument("--long-tail", type=float, default=1.5)
    p.add_argument("--duplicates", type=float, default=0.2)
    p.add_argument("--train-per-class", type=int, default=60)
    p.add_argument("--val-per-class", type=int, default=50)
    p.add_argument("--dedup-k", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=2, help="processes for the synthetic set")
    p.add_argument("overrides", nargs="*", help="extra training overrides for both arms, e.g. data.num_workers=1")
    args = p.parse_args()
    args.subset = args.subset or args.pool // 3
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    times: dict[str, float] = {}
    t_all = time.perf_counter()

    t0 = time.perf_counter()
    data = synth(work, args)
    times["synth"] = time.perf_counter() - t0
    pool = json.loads((data / "pretrain.json").read_text())
    pool_names = [str(data / "pretrain" / it["name"]) for it in pool["items"]]

    # (a) random subset
    rng = np.random.default_rng(args.seed)
    random_names = [pool_names[i] for i in sorted(rng.choice(len(pool_names), args.subset, replace=False))]
    keep_a = write_list(work / "random" / "keep.txt", random_names)
    t0 = time.perf_counter()
    run_a = pretrain(work / "run_random", keep_a, args)
    times["train_a"] = time.perf_counter() - t0

    # (b) curated subset: embed with (a)'s teacher, dedup, cluster, balanced sample
    t0 = time.perf_counter()
    emb = work / "emb"
    dinokit("curate", "embed", str(data / "pretrain"), "--backbone", str(run_a / "teacher_backbone"), "--output",
            str(emb), "--size", str(args.crop), "--store-dtype", "float32", "--batch-size", "64")  # fmt: skip
    from dinokit.curate.embeddings import open_embeddings

    pooled = open_embeddings(str(emb))
    names, vectors = list(pooled.names), np.asarray(pooled.vectors, np.float32)
    chosen = choose_threshold(vectors, names, families(pool), args.dedup_k)
    t = chosen["threshold"]
    dedup_dir = work / f"dedup_{t:g}"
    dinokit("curate", "dedup", str(emb), "--threshold", f"{t:g}", "--k", str(args.dedup_k), "--index", "exact",
            "--output", str(dedup_dir))  # fmt: skip
    groups = json.loads((dedup_dir / "groups.json").read_text())
    predicted = family_pairs([[Path(n).name for n in members] for members in groups.values()])
    family = families(pool)
    truth_groups: dict[str, list[str]] = {}
    for n in family:
        truth_groups.setdefault(family[n], []).append(n)
    truth = family_pairs([g for g in truth_groups.values() if len(g) > 1])
    precision, recall = precision_recall(predicted, truth)
    dedup_summary = json.loads((dedup_dir / "summary.json").read_text())
    tree = work / f"tree_{t:g}_{args.levels.replace(',', '-')}"
    dinokit("curate", "cluster", str(emb), "--levels", args.levels, "--subset", str(dedup_dir / "keep.txt"),
            "--seed", str(args.seed), "--output", str(tree))  # fmt: skip
    sample_dir = work / f"sample_{tree.name}_{args.subset}"
    dinokit("curate", "sample", str(tree), "--size", str(args.subset), "--seed", str(args.seed), "--output",
            str(sample_dir))  # fmt: skip
    curated_names = read_list(sample_dir / "keep.txt")
    times["curate"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    run_b = pretrain(work / f"run_curated_{sample_dir.name}", sample_dir / "keep.txt", args)
    times["train_b"] = time.perf_counter() - t0

    # k-NN of the random initialisation, (a) and (b)
    t0 = time.perf_counter()
    from dinokit.config import PretrainConfig, load_config
    from dinokit.eval.significance import paired_bootstrap
    from dinokit.models import load_backbone
    from dinokit.train.build import build_backbone

    cfg = load_config(PretrainConfig, CONFIG, [f"data.path={keep_a}", f"seed={args.seed}",
                                               f"crops.global_size={args.crop}", *args.overrides])  # fmt: skip
    torch.manual_seed(cfg.seed)  # the initialisation both runs start from (train() seeds the same way)
    scores = {"random_init": knn(build_backbone(cfg), data, args.crop)}
    scores["random_subset"] = knn(load_backbone(run_a / "teacher_backbone"), data, args.crop)
    scores["curated_subset"] = knn(load_backbone(run_b / "teacher_backbone"), data, args.crop)
    times["knn"] = time.perf_counter() - t0
    runs = {"random": run_a, "curated": run_b}

    def interval(a: str, b: str) -> list[float]:
        return list(paired_bootstrap(scores[a].per_item[METRIC], scores[b].per_item[METRIC]))

    dedup_counts = {k: dedup_summary.get(k) for k in ("kept", "removed", "groups")}
    train_seconds = {name: json.loads((r / "done.json").read_text())["seconds"] for name, r in runs.items()}
    n_val = int(scores["random_init"].per_item[METRIC].stats.shape[0])
    results = {
        "settings": {k: v for k, v in vars(args).items()},
        "run_random": str(run_a),
        "backbone_random": str(run_a / "teacher_backbone"),
        "run_curated": str(run_b),
        "knn": {name: dict(s) for name, s in scores.items()},
        "val_images": n_val,
        "interval_curated_minus_random": interval("random_subset", "curated_subset"),
        "interval_random_minus_init": interval("random_init", "random_subset"),
        "interval_curated_minus_init": interval("random_init", "curated_subset"),
        "subset_random": subset_stats(random_names, pool),
        "subset_curated": subset_stats(curated_names, pool),
        "pool": subset_stats(pool_names, pool),
        "dedup": {**chosen, "cli_precision": precision, "cli_recall": recall, **dedup_counts},
        "seconds": {**times, "total_this_invocation": time.perf_counter() - t_all},
        "train_seconds": train_seconds,
    }
    (work / "results.json").write_text(json.dumps(results, indent=2))
    print(table(results))
    print(f"wrote {work / 'results.json'}")


def table(r: dict) -> str:
    s = r["settings"]
    k = r["knn"]
    lo, hi = r["interval_curated_minus_random"]
    gain = k["curated_subset"][METRIC] - k["random_subset"][METRIC]
    lines = [
        f"pool {s['pool']} images ({s['size']} px, Zipf {s['long_tail']:g}, {s['duplicates']:.0%} planted copies); "
        f"M = {s['subset']} per arm; {s['steps']} steps of tiny_cpu (seed {s['seed']}); k-NN k = 20 on "
        f"{r['val_images']} class-balanced val images",
        "",
        "| model | k-NN top-1 (k=20) % | k=10 % | Δ vs random init, 95 % CI |",
        "|---|---|---|---|",
        f"| random init | {k['random_init'][METRIC]:.1f} | {k['random_init']['top1_k10']:.1f} | — |",
    ]
    for name, label, key in (("random_subset", "(a) random subset", "interval_random_minus_init"),
                             ("curated_subset", "(b) curated subset", "interval_curated_minus_init")):  # fmt: skip
        a, b = r[key]
        lines.append(f"| {label} | {k[name][METRIC]:.1f} | {k[name]['top1_k10']:.1f} | [{a:+.1f}, {b:+.1f}] |")
    lines += ["", f"(b) − (a): {gain:+.1f} points, paired-bootstrap 95 % interval [{lo:+.1f}, {hi:+.1f}]", ""]
    mats = list(r["pool"]["materials"])
    lines += ["| materials | " + " | ".join(mats) + " | copies | redundant |", "|---" * (len(mats) + 3) + "|"]
    for name in ("pool", "subset_random", "subset_curated"):
        st = r[name]
        lines.append(f"| {name} | " + " | ".join(str(st["materials"][m]) for m in mats)
                     + f" | {st['copies']} | {st['redundant']} |")  # fmt: skip
    d = r["dedup"]
    lines += ["", f"dedup threshold {d['threshold']:g} (best pair F1 on the planted families, in-sample): precision "
              f"{d['cli_precision']:.3f}, recall {d['cli_recall']:.3f} over {d['planted_pairs']} planted pairs; "
              f"kept {d['kept']}, removed {d['removed']}; planted-pair cosine p5 {d['planted_sim_p5']:.3f} / median "
              f"{d['planted_sim_median']:.3f}, nearest neighbour of an uncopied original: median "
              f"{d['unplanted_nearest_sim_median']:.3f}"]  # fmt: skip
    sec = r["train_seconds"]
    lines.append(f"training: (a) {sec['random']:.0f} s, (b) {sec['curated']:.0f} s")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
