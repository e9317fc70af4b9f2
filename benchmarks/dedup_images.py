"""Near-duplicate detection on planted image copies: precision and recall of `near_duplicate_groups` against the
cosine threshold, per kind of edit, for one backbone.

What it measures. N distinct originals (rendered by dinokit's synthetic-scene generator: three object images — one
card of one of ten materials filling the frame, class-balanced — to one cluttered scene, so many originals look
alike, the hard case; or N images of `--images-dir`). A seeded subset of them (`--copied`, default half) gets one
planted copy per edit kind:
- `resize`: downscaled by 0.5–0.8 (bicubic), then half of the time scaled back to the original size;
- `jpeg`: re-encoded as JPEG at quality 30–90;
- `crop`: 5–15 % of each side length cut off (split at random between the two sides), resized back;
- `colour`: brightness and contrast × 0.8–1.2, saturation × 0.7–1.3, hue shifted by ± 0.05 turn;
- `all`: colour, then crop, then resize, then JPEG.
Every image is embedded with `dinokit.curate.embed.embed` (the twin of `dinokit curate embed`: CLS token, shorter
side `--size`, L2-normalised), and for each threshold of the sweep `near_duplicate_groups(embeddings, t, k=--k)`
groups the pool. A pair of images is a true duplicate pair when both come from the same original (an original and
its copy, or two copies of one original); a predicted pair is two images in one group. Precision and recall are
over pairs, overall and per edit kind (recall of the planted original–copy pairs of that kind; precision of the
predicted pairs that involve a copy of that kind). `false_merges` counts the groups holding images of more than one
original. Beside the sweep: the cosine similarity of every planted pair, against that of each image's nearest
non-duplicate (the most similar image of another original), as quantiles. For reference, the embedding-level case:
the originals' embeddings with Gaussian noise of relative norm r added and renormalised (cosine ≈ 1/√(1+r²)),
swept the same way on a pool of originals plus noisy copies.

    PYTHONPATH=. OMP_NUM_THREADS=1 python benchmarks/dedup_images.py --backbone runs/tiny/step_00002000.pt \
        --work /tmp/dedup_bench [--images 200] [--size 64] [--seed 0] [--copied 100] [--k 64] \
        [--images-dir photos/] [--thresholds 0.5 0.6 ...]

Writes under --work: `images-<...>/` (originals, copies and `manifest.json`: which file copies which, with the
edit's parameters), `emb-<backbone>/` (the `embed` output), and `dedup_<backbone>.{json,md,png}` (the sweep,
the similarity quantiles and the thresholds found; the PNG only where matplotlib is installed). The markdown is
also printed.

What it does not claim. The synthetic scenes are not photographs, the edits are modest ones of a fixed kind
(no overlays, flips, screenshots, heavy crops or re-photographing), and a few hundred images make every
non-duplicate neighbour a near one only within this small pool: at the scale of a real pool (millions of images)
the nearest non-duplicate is closer, so precision falls at a threshold this benchmark calls safe. The threshold it
finds belongs to the backbone, the image size and the data it was run with; measure it again for another.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

KINDS = ("resize", "jpeg", "crop", "colour", "all")
NOISE = (0.1, 0.3, 0.5)  # relative norms of the embedding-level noise
EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")


# ------------------------------------------------------------------------------------------------ images
def render_originals(out: Path, n: int, size: int, seed: int) -> list[Path]:
    """N synthetic originals: three object images (materials in turn: class-balanced) to one cluttered scene."""
    from dinokit.data.synthetic import MATERIALS, dense_scene, object_scene

    paths = []
    for i in range(n):
        rng = np.random.default_rng([seed, 7, i])
        if i % 4 == 3:
            image = dense_scene(rng, size, size, float(size), cards=(4, 8)).image
        else:
            image = object_scene(rng, size, (i - i // 4) % len(MATERIALS)).image
        image = (np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8)  # [size, size, 3]
        paths.append(out / f"{i:05d}.png")
        Image.fromarray(image).save(paths[-1], compress_level=1)
    return paths


def copy_originals(out: Path, source: Path, n: int, seed: int) -> list[Path]:
    """N images of `source` (a seeded choice, in name order), written as RGB PNGs."""
    files = sorted(p for p in source.rglob("*") if p.suffix.lower() in EXTENSIONS)
    if len(files) < n:
        raise SystemExit(f"{source}: {len(files)} images, fewer than --images {n}")
    chosen = sorted(np.random.default_rng([seed, 8]).choice(len(files), n, replace=False).tolist())
    paths = []
    for i, j in enumerate(chosen):
        paths.append(out / f"{i:05d}.png")
        with Image.open(files[j]) as im:
            im.convert("RGB").save(paths[-1], compress_level=1)
    return paths


def _colour(im: Image.Image, rng: np.random.Generator) -> tuple[Image.Image, dict]:
    p = {"brightness": rng.uniform(0.8, 1.2), "contrast": rng.uniform(0.8, 1.2),
         "saturation": rng.uniform(0.7, 1.3), "hue": rng.uniform(-0.05, 0.05)}  # fmt: skip
    im = ImageEnhance.Brightness(im).enhance(p["brightness"])
    im = ImageEnhance.Contrast(im).enhance(p["contrast"])
    im = ImageEnhance.Color(im).enhance(p["saturation"])
    hsv = np.array(im.convert("HSV"), dtype=np.int16)  # [H, W, 3], hue in 0..255
    hsv[..., 0] = (hsv[..., 0] + round(p["hue"] * 256)) % 256
    im = Image.fromarray(hsv.astype(np.uint8), "HSV").convert("RGB")
    return im, p


def _crop(im: Image.Image, rng: np.random.Generator) -> tuple[Image.Image, dict]:
    w, h = im.size
    f = rng.uniform(0.05, 0.15, 2)  # fraction of the width, of the height cut off
    a = rng.uniform(0, 1, 2)  # the share of that cut taken from the left, the top
    box = (round(f[0] * w * a[0]), round(f[1] * h * a[1]))
    box = (*box, box[0] + w - round(f[0] * w), box[1] + h - round(f[1] * h))
    return im.crop(box).resize((w, h), Image.BICUBIC), {"cut": f.tolist(), "box": list(box)}


def _resize(im: Image.Image, rng: np.random.Generator) -> tuple[Image.Image, dict]:
    w, h = im.size
    s, back = rng.uniform(0.5, 0.8), bool(rng.integers(2))
    small = im.resize((max(1, round(w * s)), max(1, round(h * s))), Image.BICUBIC)
    return (small.resize((w, h), Image.BICUBIC) if back else small), {"scale": s, "back": back}


def _jpeg(im: Image.Image, rng: np.random.Generator) -> tuple[Image.Image, dict]:
    return im, {"quality": int(rng.integers(30, 91))}  # the encoding is the file's: saved once, at this quality


def edit(im: Image.Image, kind: str, rng: np.random.Generator) -> tuple[Image.Image, dict, str]:
    """The copy of `im` made by edit `kind`, its parameters and the file suffix to write it with."""
    if kind == "all":
        params = {}
        for step in (_colour, _crop, _resize):
            im, p = step(im, rng)
            params.update(p)
        im, p = _jpeg(im, rng)
        return im, {**params, **p}, ".jpg"
    im, p = {"resize": _resize, "jpeg": _jpeg, "crop": _crop, "colour": _colour}[kind](im, rng)
    return im, p, ".jpg" if kind == "jpeg" else ".png"


def _jsonable(v):
    return float(v) if isinstance(v, np.floating) else v


def plant(root: Path, n: int, copied: int, size: int, seed: int, images_dir: Path | None) -> dict:
    """Originals and their copies under `root` with `manifest.json`; reused when a finished one is there."""
    settings = {"images": n, "copied": copied, "size": size, "seed": seed,
                "images_dir": str(images_dir) if images_dir else None}  # fmt: skip
    manifest_file = root / "manifest.json"
    if manifest_file.is_file():
        manifest = json.loads(manifest_file.read_text())
        if manifest["settings"] == settings:
            return manifest
        raise SystemExit(f"{root} holds images planted with other settings; remove it")
    (root / "originals").mkdir(parents=True, exist_ok=True)
    (root / "copies").mkdir(exist_ok=True)
    if images_dir is None:
        originals = render_originals(root / "originals", n, size, seed)
    else:
        originals = copy_originals(root / "originals", images_dir, n, seed)
    which = sorted(np.random.default_rng([seed, 9]).choice(n, copied, replace=False).tolist())
    copies = []
    for i in which:
        with Image.open(originals[i]) as im:
            im = im.convert("RGB")
            for kind in KINDS:
                rng = np.random.default_rng([seed, 10, i, KINDS.index(kind)])
                out, params, suffix = edit(im, kind, rng)
                path = root / "copies" / f"{i:05d}_{kind}{suffix}"
                if suffix == ".jpg":
                    out.convert("RGB").save(path, quality=params["quality"])
                else:
                    out.convert("RGB").save(path, compress_level=1)
                params = {k: _jsonable(v) for k, v in params.items()}
                copies.append({"copy": str(path.relative_to(root)), "original": i, "kind": kind, "params": params})
    manifest = {"settings": settings, "originals": [str(p.relative_to(root)) for p in originals], "copies": copies}
    manifest_file.write_text(json.dumps(manifest, indent=1) + "\n")  # last: marks a finished plant
    return manifest


# ----------------------------------------------------------------------------------------------- metrics
def _pairs(counts: np.ndarray) -> int:
    counts = counts.astype(np.int64)
    return int((counts * (counts - 1) // 2).sum())


def evaluate(labels: np.ndarray, family: np.ndarray, kind: np.ndarray, kinds) -> dict:
    """Pair precision and recall of the grouping `labels` [M] against the truth `family` [M] (the original each
    row comes from); per kind in `kinds`, over the rows whose `kind` [M] it is (-1: an original)."""
    m = len(labels)
    _, g_of = np.unique(labels, return_inverse=True)  # [M] group index
    n_g = np.bincount(g_of)  # [G] group sizes
    gf, gf_of = np.unique(g_of * m + family, return_inverse=True)  # [M] (group, family) cell index
    n_gf = np.bincount(gf_of)  # [C] cell sizes
    predicted, correct = _pairs(n_g), _pairs(n_gf)
    truth = _pairs(np.bincount(family))
    fams_per_group = np.bincount(gf // m)  # [G] families in each group
    out = {"precision": correct / predicted if predicted else 1.0, "recall": correct / truth if truth else 1.0,
           "groups": int((n_g > 1).sum()), "false_merges": int((fams_per_group > 1).sum())}  # fmt: skip
    orig_group = {int(f): int(g) for f, g, k in zip(family, g_of, kind) if k < 0}  # original's family → group
    for ki, name in enumerate(kinds):
        rows = np.flatnonzero(kind == ki)
        found = np.array([g_of[r] == orig_group[int(family[r])] for r in rows])
        pred = (n_g[g_of[rows]] - 1).sum()  # predicted pairs involving these copies
        good = (n_gf[gf_of[rows]] - 1).sum()
        out[name] = {"precision": float(good / pred) if pred else 1.0, "recall": float(found.mean())}
    return out


def nearest_other(x: np.ndarray, family: np.ndarray, block: int = 2048) -> np.ndarray:
    """Per row of the unit rows `x` [M, D]: the cosine of its most similar row of another family [M]."""
    best = np.full(len(x), -np.inf, dtype=np.float32)  # [M]
    for s in range(0, len(x), block):
        sims = x[s : s + block] @ x.T  # [b, M]
        sims[family[s : s + block, None] == family[None, :]] = -np.inf
        best[s : s + block] = sims.max(axis=1)
    return best


def quantiles(v: np.ndarray) -> dict:
    q = np.quantile(v, [0, 0.01, 0.05, 0.5, 0.95, 0.99, 1]) if len(v) else [float("nan")] * 7
    return dict(zip(["min", "p1", "p5", "median", "p95", "p99", "max"], (round(float(a), 6) for a in q)))


def sweep(x: np.ndarray, family: np.ndarray, kind: np.ndarray, kinds, thresholds, k: int) -> list[dict]:
    from dinokit.curate.dedup import near_duplicate_groups

    rows = []
    for t in thresholds:
        labels = near_duplicate_groups(x, float(t), k=k, index="exact")  # [M] component ids
        rows.append({"threshold": float(t), **evaluate(labels, family, kind, kinds)})
    return rows


def good_thresholds(rows: list[dict], kinds, floor: float = 0.99) -> dict:
    """The thresholds where overall P and R ≥ floor, those where every kind's are too, and the best-F1 one."""

    def ok(r, names):
        return all(r[n]["precision"] >= floor and r[n]["recall"] >= floor for n in names) and (
            r["precision"] >= floor and r["recall"] >= floor
        )

    f1 = [2 * r["precision"] * r["recall"] / max(r["precision"] + r["recall"], 1e-12) for r in rows]
    best = int(np.argmax(f1))
    return {
        "overall": [r["threshold"] for r in rows if ok(r, [])],
        "every_kind": [r["threshold"] for r in rows if ok(r, kinds)],
        "best_f1": {"threshold": rows[best]["threshold"], "f1": round(f1[best], 4),
                    "precision": round(rows[best]["precision"], 4), "recall": round(rows[best]["recall"], 4)},
    }  # fmt: skip


# ------------------------------------------------------------------------------------------------ report
def _span(ts: list[float]) -> str:
    return f"{min(ts):.2f}–{max(ts):.2f} ({len(ts)} of the sweep)" if ts else "none"


def markdown(result: dict, every: float = 0.05) -> str:
    kinds, noise = result["kinds"], result["noise_kinds"]
    pool = result["pool"]
    lines = [f"## Planted near-duplicates: {result['backbone']} ({result['source']}), {pool['originals']} originals, "
             f"{pool['copies']} copies, size {result['size']}, k {result['k']}", ""]  # fmt: skip
    head = "| threshold | P | R | false merges | " + " | ".join(f"R {n} | P {n}" for n in kinds) + " |"
    lines += [head, "|" + " --- |" * (4 + 2 * len(kinds))]
    marked = {round(result["thresholds"]["best_f1"]["threshold"], 4)}
    for r in result["sweep"]:
        t = r["threshold"]
        if len(result["sweep"]) > 25 and abs(t / every - round(t / every)) > 1e-6 and round(t, 4) not in marked:
            continue
        cells = [f"{t:.3f}", f"{r['precision']:.3f}", f"{r['recall']:.3f}", str(r["false_merges"])]
        cells += [f"{r[n]['recall']:.3f} | {r[n]['precision']:.3f}" for n in kinds]
        lines.append("| " + " | ".join(cells) + " |")
    th = result["thresholds"]
    lines += ["", f"Overall P and R ≥ 0.99 at: {_span(th['overall'])}; every kind too: {_span(th['every_kind'])}; "
              f"best F1 {th['best_f1']['f1']} at {th['best_f1']['threshold']:.2f} "
              f"(P {th['best_f1']['precision']}, R {th['best_f1']['recall']}).", ""]  # fmt: skip
    lines += ["Cosine similarity of planted pairs (original, copy) and of each image's nearest non-duplicate:", "",
              "| pairs | min | p1 | p5 | median | p95 | max |", "|" + " --- |" * 7]  # fmt: skip
    for name, q in result["similarity"].items():
        lines.append(f"| {name} | " + " | ".join(f"{q[c]:.4f}" for c in ("min", "p1", "p5", "median", "p95", "max"))
                     + " |")  # fmt: skip
    lines += ["", "Embedding-level reference (Gaussian noise of relative norm r on the originals' embeddings):", "",
              "| threshold | P | R | " + " | ".join(f"R {n}" for n in noise) + " |",
              "|" + " --- |" * (3 + len(noise))]  # fmt: skip
    for r in result["noise_sweep"]:
        t = r["threshold"]
        if len(result["noise_sweep"]) > 25 and abs(t / every - round(t / every)) > 1e-6:
            continue
        lines.append(f"| {t:.3f} | {r['precision']:.3f} | {r['recall']:.3f} | "
                     + " | ".join(f"{r[n]['recall']:.3f}" for n in noise) + " |")  # fmt: skip
    nt = result["noise_thresholds"]
    lines += ["", f"Noise: overall P and R ≥ 0.99 at {_span(nt['overall'])}; every r too: {_span(nt['every_kind'])}."]
    return "\n".join(lines) + "\n"


def plot(result: dict, path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot", file=sys.stderr)
        return False
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, metric in zip(axes, ("precision", "recall")):
        for rows, names, style in ((result["sweep"], result["kinds"], "-"), (result["noise_sweep"],
                                   result["noise_kinds"], ":")):  # fmt: skip
            t = [r["threshold"] for r in rows]  # [T]
            for n in names:
                ax.plot(t, [r[n][metric] for r in rows], style, label=n)
            ax.plot(t, [r[metric] for r in rows], style, color="k", lw=2,
                    label="overall" if style == "-" else "overall (noise)")  # fmt: skip
        ax.axhline(0.99, color="grey", lw=0.5)
        ax.set_xlabel("cosine threshold")
        ax.set_title(metric)
    axes[0].set_ylabel("pair " + "precision / recall")
    axes[1].legend(fontsize=7, loc="lower left")
    fig.suptitle(f"near_duplicate_groups on planted duplicates: {result['backbone']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


# -------------------------------------------------------------------------------------------------- main
def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backbone", required=True, help="checkpoint path, run folder, official:… or random:<preset>")
    ap.add_argument("--work", required=True, type=Path)
    ap.add_argument("--images", type=int, default=200, help="distinct originals")
    ap.add_argument("--copied", type=int, default=None, help="originals given copies (default: half)")
    ap.add_argument("--size", type=int, default=64, help="image side rendered and embedding size (shorter side)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--k", type=int, default=64, help="neighbours per row in near_duplicate_groups")
    ap.add_argument("--images-dir", type=Path, default=None, help="take originals from here instead of rendering")
    ap.add_argument("--thresholds", type=float, nargs="+", default=None, help="default 0.50, 0.51, … 0.99")
    ap.add_argument("--source", choices=("cls", "patches"), default="cls", help="embed's token: CLS or mean patch")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--device", default=None)
    args = ap.parse_args(argv)
    copied = args.images // 2 if args.copied is None else args.copied
    if not 0 < copied <= args.images:
        ap.error("--copied must be in 1..--images")
    thresholds = args.thresholds or np.round(np.arange(0.50, 0.995, 0.01), 2).tolist()
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", args.backbone.strip("/")).strip("_")[-80:]
    tag = f"n{args.images}-c{copied}-s{args.size}-seed{args.seed}" + ("-dir" if args.images_dir else "")
    root = args.work / f"images-{tag}"
    started = time.perf_counter()

    manifest = plant(root, args.images, copied, args.size, args.seed, args.images_dir)
    planted = time.perf_counter()
    from dinokit.curate.embed import embed

    paths = [root / p for p in manifest["originals"]] + [root / c["copy"] for c in manifest["copies"]]
    family = np.array(list(range(args.images)) + [c["original"] for c in manifest["copies"]])  # [M]
    kind = np.array([-1] * args.images + [KINDS.index(c["kind"]) for c in manifest["copies"]])  # [M], -1: original
    listing = root / "all.txt"
    listing.write_text("".join(f"{p.resolve()}\n" for p in paths))
    slug += "" if args.source == "cls" else f"-{args.source}"
    emb_dir = root / f"emb-{slug}"
    summary = embed([listing], args.backbone, emb_dir, size=args.size, store_dtype="float32", device=args.device,
                    batch_size=args.batch_size, source=args.source, progress=False)  # fmt: skip
    names = (emb_dir / "embeddings.names.txt").read_text().splitlines()
    vectors = np.load(emb_dir / "embeddings.npy").astype(np.float32)  # [M', D] unit rows, extraction order
    row = {n: i for i, n in enumerate(names)}
    missing = [str(p) for p in paths if str(p.resolve()) not in row]
    if missing:
        raise SystemExit(f"{len(missing)} images were not embedded, e.g. {missing[0]}")
    x = vectors[[row[str(p.resolve())] for p in paths]]  # [M, D], manifest order
    embedded = time.perf_counter()

    rows = sweep(x, family, kind, KINDS, thresholds, args.k)
    near = nearest_other(x, family)  # [M]
    n = args.images
    similarity = {}
    for ki, name in enumerate(KINDS):
        sel = np.flatnonzero(kind == ki)
        similarity[f"planted {name}"] = quantiles(np.einsum("md,md->m", x[sel], x[family[sel]]))  # [m] cosines
    similarity["nearest non-duplicate (originals)"] = quantiles(near[:n])
    similarity["nearest non-duplicate (all)"] = quantiles(near)

    # the embedding-level reference: noisy copies of the copied originals' embeddings
    rng = np.random.default_rng([args.seed, 12])
    which = np.array(sorted({c["original"] for c in manifest["copies"]}))  # [c]
    noise_kinds = [f"noise r={r}" for r in NOISE]
    noisy = [x[:n]]
    for r in NOISE:
        e = x[which] + r * rng.standard_normal((len(which), x.shape[1])).astype(np.float32) / np.sqrt(x.shape[1])
        noisy.append(e / np.linalg.norm(e, axis=1, keepdims=True))  # [c, D]
    xn = np.concatenate(noisy)  # [n + 3c, D]
    fam_n = np.concatenate([np.arange(n)] + [which] * len(NOISE))  # [n + 3c]
    kind_n = np.concatenate([np.full(n, -1)] + [np.full(len(which), i) for i in range(len(NOISE))])
    noise_rows = sweep(xn, fam_n, kind_n, noise_kinds, thresholds, args.k)
    for i, name in enumerate(noise_kinds):
        sel = np.flatnonzero(kind_n == i)
        similarity[f"planted {name}"] = quantiles(np.einsum("md,md->m", xn[sel], xn[fam_n[sel]]))

    result = {
        "backbone": args.backbone, "source": args.source, "size": args.size, "seed": args.seed, "k": args.k,
        "kinds": list(KINDS),
        "noise_kinds": noise_kinds, "pool": {"originals": n, "copies": len(manifest["copies"]), "dim": x.shape[1],
                                             "images_dir": str(args.images_dir) if args.images_dir else None},
        "sweep": rows, "thresholds": good_thresholds(rows, KINDS), "similarity": similarity,
        "noise_sweep": noise_rows, "noise_thresholds": good_thresholds(noise_rows, noise_kinds),
        "seconds": {"plant": round(planted - started, 1), "embed": round(embedded - planted, 1),
                    "sweep": round(time.perf_counter() - embedded, 1)},
        "embed_reused": bool(summary.get("reused")),
    }  # fmt: skip
    out = args.work / f"dedup_{slug}"
    Path(f"{out}.json").write_text(json.dumps(result, indent=1) + "\n")
    text = markdown(result)
    Path(f"{out}.md").write_text(text)
    print(text)
    if plot(result, Path(f"{out}.png")):
        print(f"plot: {out}.png")
    print(f"json: {out}.json  seconds: {result['seconds']}")
    return result


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
