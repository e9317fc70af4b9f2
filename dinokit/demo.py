"""`dinokit demo` (what `make demo` runs): show on any machine, offline and in minutes, that training learns.

1. Write the synthetic benchmark (`dinokit/data/synthetic.py`) at 96 px.
2. Pretrain a tiny ViT on its unlabelled images with the DINOv2 objective (`dinokit train`: DINO + iBOT +
   KoLeo, EMA teacher, multi-crop), logging k-NN on the labelled split every 100 steps; a few minutes on two
   CPU cores.
3. Evaluate a randomly initialised backbone of the same architecture and the trained teacher with k-NN, the
   linear probe, dense linear segmentation and depth, and keypoint correspondence.
4. Write `report.md` and `report.html` (results table, loss and k-NN curves, PCA maps of patch features,
   similarity maps from a query patch, random and trained side by side), `results.json`, and print the table.
   Each row shows the chance level beside the two models (`eval/chance.py`: the score of a guess that never
   looks at the image), so that a tie at the floor reads as one. Each change comes with its 95 %
   paired-bootstrap interval over the validation items (`eval/significance.py`); "better beyond noise" means
   the whole interval favours the trained model. That is a statement about the validation sample, not about
   the size of the gain (a +0.15 mIoU change at the majority-class floor can pass it), and it leaves out the
   spread between training runs.

Settings and how they were chosen:
- Backbone: ViT-Ti width (192, 3 heads) with 4 blocks, patch 16, RoPE and 4 registers (`dinov3_vitt16`,
  depth 4), LayerScale starting at 0.1. Images 96 px (6×6 patches), global crops 96 and 4 local crops of 48 px,
  batch 32, 300 steps: what fits the ten-minute budget on the slowest two-core machine it was timed on (1.1–1.3
  s per step there; 450–520 s for the demo, 40 s more from a fresh clone with the set-up). On the
  object-centric classification images k-NN peaks early (58 % at step 100, 54 % at 300 in one run; a
  1500-step run peaked at step 100 too and ended at 42 %), so more steps would buy nothing here.
- The short-run recipe of configs/pretrain/tiny_cpu.yaml (256 prototypes, Sinkhorn-Knopp, teacher temperature
  0.04, peak LR 2e-3 cosine-decayed over the run, a fast teacher; its header gives the reasons). With the
  released 1024+ prototypes, centering and the 0.04 → 0.07 warm-up the DINO targets stayed uniform for the
  whole run here.
- Crop scales 0.5–1 (global) and 0.15–0.5 (local) instead of the released 0.32–1 and 0.05–0.32: the one
  setting picked by comparing runs (k-NN after 200 steps 22.5 % against 15.5 % with the released scales, one
  run each, on the earlier scene-style classification images). That evidence is weak: runs that differ only
  in float round-off were seen 7 points apart at 300 steps. The reason to keep it: at 96 px the released
  smallest local crops show about one period of a pattern, too little to tell the materials apart.
- Protocols at the pretraining resolution with the papers' settings where they apply (k ∈ {10, 20, 100, 200},
  T = 0.07; the linear grid, here 100 epochs of batches of 64 over the small training split; BatchNorm + 1×1
  heads trained with AdamW 1e-3 for 500 iterations instead of 40k, because the training sets are small).
"""

from __future__ import annotations

import json
import textwrap
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .atomic import atomic_write_text
from .data.images import decode_image
from .data.synthetic import SEG_CLASSES, SynthConfig, write_synthetic
from .errors import UserError
from .eval.chance import classification_chance, correspondence_chance, depth_chance, segmentation_chance
from .eval.correspondence import run_correspondence
from .eval.dense import find_pairs
from .eval.depth import run_depth
from .eval.features import extract_global_features
from .eval.knn import knn_features
from .eval.linear import linear_probe
from .eval.report import Report, image_grid, line_plot
from .eval.segmentation import run_segmentation
from .eval.significance import Scores, beyond_noise, paired_bootstrap
from .models import VisionTransformer, create_backbone, load_backbone
from .ssl.losses import TERMS
from .tools.viz import colormap, pca_rgb, similarity_map, to_uint8


@dataclass(frozen=True)
class DemoConfig:
    size: int = 96
    backbone: str = "dinov3_vitt16"
    # the recipe's ViT-Ti/16 with 4 blocks, without its stochastic depth (the settings the demo was measured with)
    backbone_options: dict = field(default_factory=lambda: {"depth": 4, "layerscale_init": 0.1, "drop_path_rate": 0.0})
    data: SynthConfig = SynthConfig(
        size=96, pretrain=3000, train_per_class=100, val_per_class=30, dense_train=200, dense_val=100, pairs=80,
        landmarks=0, views=0, distractors=0,
    )  # fmt: skip
    steps: int = 300
    batch_size: int = 32
    knn_every: int = 100  # periodic k-NN of the teacher on the classification split, logged with the losses
    recipe: str = "tiny_cpu"  # the shipped recipe (configs/pretrain/tiny_cpu.yaml), whose header explains it
    # what the demo changes in it: 96 px images, crop scales for them (see the docstring), the logging rhythm, and
    # no loader processes (the data fits in memory and the two cores are busy training)
    recipe_overrides: tuple[str, ...] = (
        "crops.global_size=96",
        "crops.local_size=48",
        "crops.global_scale=[0.5, 1.0]",
        "crops.local_scale=[0.15, 0.5]",
        "train.log_every=10",
        "data.num_workers=0",
    )
    dense_iterations: int = 500
    linear_epochs: int = 100  # of batches of 64: the training split is small
    thresholds: tuple[float, ...] = (4, 8, 16)  # pixels at 96 px: a quarter, half and one patch
    figure_examples: int = 4

    def train_overrides(self, data: Path | None = None) -> list[str]:
        """The `dinokit train` overrides; with the synthetic set's folder, also the periodic k-NN on it."""
        knn = []
        if data is not None and self.knn_every:
            knn = [f"eval.every={self.knn_every}", f"eval.knn.train={data / 'classify/train'}",
                   f"eval.knn.val={data / 'classify/val'}", f"eval.knn.size={self.size}"]  # fmt: skip
        return [
            f"model.backbone={self.backbone}",
            "model.backbone_options=" + json.dumps(self.backbone_options),
            f"train.steps={self.steps}",
            f"train.batch_size={self.batch_size}",
            *self.recipe_overrides,
            *knn,
        ]

    def random_backbone(self, seed: int) -> VisionTransformer:
        torch.manual_seed(seed)
        return create_backbone(self.backbone, **self.backbone_options).eval()


# ------------------------------------------------------------------------------------------ the stages
def pretrain(images: Path, run_dir: Path, recipe: str, overrides: Sequence[str], seed: int) -> Path:
    """The training stage: `dinokit train RECIPE …` through its Python API. Returns the run folder (metrics.jsonl,
    teacher_backbone/); a finished run in `run_dir` is reused, an interrupted one resumed."""
    try:
        from .config import load_train_config
        from .train.loop import train
    except ImportError:
        raise UserError("the demo needs the trainer (`dinokit train`), which this installation lacks") from None
    config = load_train_config(recipe, [f"data.path={images}", f"output_dir={run_dir}", f"seed={seed}", *overrides])
    return Path(train(config))


def evaluate(model, data: Path, config: DemoConfig, seed: int = 0) -> Scores:
    """Every demo protocol on the synthetic benchmark → one flat dict (with the per-item statistics)."""
    size = config.size
    torch.manual_seed(seed)
    results = Scores({})

    def add(prefix: str, scores: Scores) -> None:
        results.update({f"{prefix}_{k}": v for k, v in scores.items()})
        results.per_item.update({f"{prefix}_{k}": v for k, v in scores.per_item.items()})

    train = extract_global_features(model, data / "classify/train", size=size, desc="train features")
    val = extract_global_features(model, data / "classify/val", size=size, desc="val features")
    add("knn", knn_features(train, val))
    linear = linear_probe(train, val, epochs=config.linear_epochs, batch_size=64, progress=False, seed=seed)
    add("linear", Scores({"top1": linear["top1"]}, linear.per_item))
    dense = dict(size=size, crop=size, iterations=config.dense_iterations, seed=seed)
    seg = run_segmentation(model, data / "seg/images/training", data / "seg/images/validation", **dense)
    add("seg", Scores({"miou": seg["miou"]}, seg.per_item))
    add("depth", run_depth(model, data / "depth/train/rgb", data / "depth/test/rgb", **dense))
    add("corr", run_correspondence(model, data / "pairs/pairs.json", size=size, thresholds=config.thresholds))
    return results


def chance_levels(data: Path, config: DemoConfig) -> dict[str, float]:
    """Each table row's score without looking at the images (`eval/chance.py`), on the same validation data."""
    top1 = classification_chance(data / "classify/train", data / "classify/val")
    seg = [find_pairs(data / f"seg/images/{s}", None, ("images", "annotations")) for s in ("training", "validation")]
    depth = [find_pairs(data / f"depth/{s}/rgb", None, ("rgb", "depth")) for s in ("train", "test")]
    levels = {"knn_top1_k20": top1, "knn_top1_k200": top1, "linear_top1": top1}
    levels["seg_miou"] = segmentation_chance(*seg, num_classes=len(SEG_CLASSES))
    levels.update({f"depth_{k}": v for k, v in depth_chance(*depth).items()})  # run_depth's default range
    corr = correspondence_chance(data / "pairs/pairs.json", config.thresholds)
    levels.update({f"corr_{k}": v for k, v in corr.items()})
    return levels


# (key, protocol, metric, higher is better)
TABLE = [
    ("knn_top1_k20", "k-NN (k = 20)", "top-1 %", True),
    ("knn_top1_k200", "k-NN (k = 200)", "top-1 %", True),
    ("linear_top1", "linear probe", "top-1 %", True),
    ("seg_miou", "segmentation", "mIoU %", True),
    ("depth_rmse", "depth", "RMSE m", False),
    ("depth_abs_rel", "depth", "AbsRel", False),
    ("depth_delta1", "depth", "δ<1.25 %", True),
]


def compare(results: dict[str, Scores], thresholds: Sequence[float], chance: dict[str, float] | None = None):
    """One entry per table row: the chance level (when given), both values, the change with its 95 %
    paired-bootstrap interval over the validation items (`eval/significance.py`), and whether the whole interval
    favours the trained model."""
    rows = list(TABLE) + [(f"corr_recall@{t:g}", "correspondence", f"recall@{t:g}px %", True) for t in thresholds]
    out = []
    for key, protocol, metric, higher in rows:
        before, after = results["random"], results["trained"]
        low, high = paired_bootstrap(before.per_item[key], after.per_item[key])
        out.append(dict(key=key, protocol=protocol, metric=metric, chance=(chance or {}).get(key),
                        random=before[key], trained=after[key],
                        change=after[key] - before[key], interval=[low, high], higher_is_better=higher,
                        better_beyond_noise=beyond_noise((low, high), higher)))  # fmt: skip
    return out


HEADER = ["protocol", "metric", "chance", "random", "trained", "change [95 % interval]", "better beyond noise"]


def table_rows(comparison: list[dict]) -> list[list[str]]:
    """The printed and reported table, one row per `compare` entry, in the order of `HEADER`."""
    out = []
    for c in comparison:
        low, high = c["interval"]
        verdict = "yes" if c["better_beyond_noise"] else ("no (within noise)" if low <= 0 <= high else "NO (worse)")
        change = f"{c['change']:+.3g} [{low:+.3g}, {high:+.3g}]"
        chance = "" if c.get("chance") is None else f"{c['chance']:.3g}"
        out.append([c["protocol"], c["metric"], chance, f"{c['random']:.3g}", f"{c['trained']:.3g}", change, verdict])
    return out


DENSE_PROTOCOLS = ("segmentation", "depth", "correspondence")  # the rows that read patch tokens


def shortfall_text(rows: list[list[str]]) -> str:
    """A sentence for the report naming the rows where training did not help beyond noise ("" when none), and
    where they all read patch tokens, why (measured in docs/training.md)."""
    missed = [r for r in rows if r[-1] != "yes"]
    if not missed:
        return ""
    text = "Not better beyond noise in this run: " + ", ".join(f"{r[0]} ({r[1]})" for r in missed) + "."
    if all(r[0] in DENSE_PROTOCOLS for r in missed):
        text += (" These rows read the patch tokens, and a run this short learns image-level features but hardly "
                 "any patch-level ones; docs/training.md ('What a short run does not learn') has the measurements, "
                 "and benchmarks/patch_features.py probes the patch tokens of this output folder.")  # fmt: skip
    return text


def print_table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [HEADER, *rows]) for i in range(len(HEADER))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in [HEADER, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------- figures
@torch.inference_mode()
def patch_grid(model, image: torch.Tensor, size: int) -> torch.Tensor:
    """Final-normed patch features `[h, w, D]` of a uint8 image resized to `size`."""
    from .data.transforms import model_mean_std, normalize, resize, to_float

    mean, std = model_mean_std(model)
    x = normalize(resize(to_float(image), (size, size), mode="bilinear"), mean, std)[None]
    out = model.forward_features(x)
    return out.patches[0].reshape(*out.grid, -1)


def query_patch(labels: np.ndarray, grid: tuple[int, int]) -> tuple[int, int]:
    """The patch nearest the image centre whose centre pixel lies on a card (a material), else the centre."""
    h, w = grid
    H, W = labels.shape
    best, best_d = (h // 2, w // 2), float("inf")
    for i in range(h):
        for j in range(w):
            y, x = int((i + 0.5) * H / h), int((j + 0.5) * W / w)
            d = (i + 0.5 - h / 2) ** 2 + (j + 0.5 - w / 2) ** 2
            if labels[y, x] < len(SEG_CLASSES) - 2 and d < best_d:
                best, best_d = (i, j), d
    return best


def make_figures(models: dict, data: Path, out: Path, config: DemoConfig) -> dict[str, Path]:
    """PCA maps and query-patch similarity maps of a few validation scenes, one column per model."""
    from PIL import Image

    images = sorted((data / "seg/images/validation").glob("*.png"))[: config.figure_examples]
    pictures = [decode_image(p) for p in images]
    labels = [np.array(Image.open(data / "seg/annotations/validation" / p.name)) for p in images]
    feats = {name: [patch_grid(m, img, config.size) for img in pictures] for name, m in models.items()}
    pca = {name: pca_rgb(f) for name, f in feats.items()}  # one PCA per model over all examples
    cell = 192
    pca_rows, sim_rows = [], []
    for k, img in enumerate(pictures):
        rgb = img.permute(1, 2, 0).numpy()
        h, w = feats["random"][k].shape[:2]
        qi, qj = query_patch(labels[k], (h, w))
        marked = rgb.copy()
        H, W = rgb.shape[:2]
        y0, y1, x0, x1 = int(qi * H / h), int((qi + 1) * H / h), int(qj * W / w), int((qj + 1) * W / w)
        marked[y0:y1, [x0, x1 - 1]] = marked[[y0, y1 - 1], x0:x1] = (255, 0, 0)
        pca_rows.append([rgb] + [(pca[n][k].numpy() * 255).round().astype(np.uint8) for n in models])
        sims = []
        for n in models:
            sim = similarity_map(feats[n][k], (qi, qj))  # [h, w] cosine similarity to the query patch
            smooth = F.interpolate(sim[None, None], size=(cell, cell), mode="bilinear", align_corners=False)[0, 0]
            sims.append(to_uint8(colormap(smooth, -1.0, 1.0)))
        sim_rows.append([marked] + sims)
    titles = ["image"] + [f"{n} backbone" for n in models]
    return {
        "pca": image_grid(pca_rows, out / "pca.png", titles, cell=cell),
        "similarity": image_grid(sim_rows, out / "similarity.png", titles, cell=cell),
    }


def training_figures(run: Path, out: Path) -> dict[str, Path]:
    """The losses per logged step and, when the run evaluated k-NN on the way, its accuracy per evaluation."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]

    def series(keys):
        return {k: ([r["step"] for r in rows if k in r], [float(r[k]) for r in rows if k in r]) for k in keys}

    losses = [k for k in ("loss", *TERMS) if any(k in r for r in rows)]
    figures = {"loss": line_plot(series(losses), out / "loss_curves.png", title="pretraining losses (student)")}
    knn = sorted({k for r in rows for k in r if k.startswith("knn/")}, key=lambda k: int(k.rsplit("k", 1)[1]))
    if knn:
        title = "k-NN top-1 % of the teacher on classify/ during pretraining"
        figures["knn"] = line_plot(series(knn), out / "knn_curve.png", title=title)
    return figures


# -------------------------------------------------------------------------------------------------- main
def run_demo(out: Path = Path("demo_out"), seed: int = 0, config: DemoConfig = DemoConfig()) -> dict:
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--output {out} is a file; the demo writes a folder (data, run, report)")
    out.mkdir(parents=True, exist_ok=True)
    start = time.time()
    timings: dict[str, float] = {}

    def stage(n: int, text: str) -> None:
        print(f"[{n}/5 · {time.time() - start:5.0f} s] {text}", flush=True)

    stage(1, f"synthetic benchmark → {out / 'data'}")
    t = time.time()
    data = write_synthetic(out / "data", seed, config.data)
    timings["data_s"] = time.time() - t

    stage(2, f"pretraining {config.backbone} {config.backbone_options} with the DINOv2 recipe → {out / 'run'}")
    t = time.time()
    run = pretrain(data / "pretrain", out / "run", config.recipe, config.train_overrides(data), seed)
    timings["train_s"] = time.time() - t
    models = {"random": config.random_backbone(seed), "trained": load_backbone(run / "teacher_backbone")}

    results = {}
    for name, model in models.items():
        stage(3, f"evaluating the {name} backbone: k-NN, linear, segmentation, depth, correspondence")
        t = time.time()
        results[name] = evaluate(model, data, config, seed)
        timings[f"eval_{name}_s"] = time.time() - t

    stage(4, "figures")
    figures = make_figures(models, data, out, config)
    figures.update(training_figures(run, out))

    stage(5, "report")
    timings["total_s"] = time.time() - start
    comparison = compare(results, config.thresholds, chance_levels(data, config))
    rows = table_rows(comparison)
    write_report(out, rows, figures, timings, config, seed)
    summary = {"results": results, "comparison": comparison, "timings": timings, "seed": seed}
    atomic_write_text(out / "results.json", json.dumps(summary, indent=2))
    printed = ["", print_table(rows)]
    if shortfall_text(rows):  # what the report says below the table
        printed += ["", textwrap.fill(shortfall_text(rows), 110)]
    printed += ["", f"report: {out / 'report.html'} (and report.md) · {timings['total_s']:.0f} s in all"]
    print("\n".join(printed))
    return {"results": results, "comparison": comparison, "timings": timings}


def write_report(out: Path, rows, figures: dict[str, Path], timings: dict, config: DemoConfig, seed: int) -> None:
    report = Report("dinokit demo: self-supervised pretraining on a synthetic benchmark")
    report.text(
        f"A {config.backbone} backbone ({config.backbone_options}) was pretrained with the DINOv2 recipe on "
        f"{config.data.pretrain} unlabelled synthetic images ({config.size} px), then evaluated with frozen "
        "features against a randomly initialised backbone of the same architecture. Seed "
        f"{seed}; {timings['total_s']:.0f} s in all (data {timings['data_s']:.0f} s, pretraining "
        f"{timings['train_s']:.0f} s)."
    )
    report.heading("Results")
    report.table(HEADER, rows)
    report.text(
        "k-NN: weighted votes exp(sim/0.07) of L2-normalised CLS features, 10 material classes. Linear: the best "
        "of a grid of learning rates × feature variants, chosen on a held-out split. Segmentation (12 classes) "
        "and depth: BatchNorm + 1×1 convolution on frozen patch features. Correspondence: nearest neighbour of "
        "bilinearly sampled patch features across a homography and a change of lighting. The benchmark "
        "(dinokit/data/synthetic.py) draws every colour independently of the class, so a network needs "
        "features of spatial structure to do better than chance. 'chance' is what a guess that never looks at "
        "the image scores on the same validation data (dinokit/eval/chance.py): the most frequent training class "
        "for every image or pixel, the median training depth everywhere, a uniformly random pixel of B for each "
        "keypoint. The interval after each change is the central "
        "95 % of the changes over 2000 resamplings of the validation images (the same resample for both models); "
        "'better beyond noise' means the whole interval favours the trained model; it says nothing of the size "
        "of the gain and does not include the spread between training runs."
    )
    shortfall = shortfall_text(rows)
    if shortfall:
        report.text(shortfall)
    report.heading("Figures")
    report.figure(figures["loss"].name, "Pretraining losses per step (DINO, iBOT, KoLeo and their weighted sum).")
    if "knn" in figures:
        report.figure(figures["knn"].name, "k-NN top-1 of the teacher's CLS on the classification split, "
                      f"evaluated every {config.knn_every} steps while it trained (`eval.knn.*`).")  # fmt: skip
    report.figure(figures["pca"].name, "First three principal components of the patch features as RGB (one PCA "
                  "per model over all four scenes): features that group patches by material paint each card in "
                  "one colour, whatever its scene.")  # fmt: skip
    report.figure(figures["similarity"].name, "Cosine similarity of every patch to the query patch (red box); "
                  "dark blue −1 … yellow +1.")  # fmt: skip
    report.heading("Reproduce")
    report.code("\n".join([
        f"dinokit data synth data --seed {seed} --size {config.size}   # (the demo writes a smaller set)",
        f"dinokit train {config.recipe} \\\n  " + " \\\n  ".join(config.train_overrides()),
        "dinokit eval knn --backbone run/teacher_backbone --train data/classify/train --val data/classify/val "
        f"--size {config.size}",
    ]))  # fmt: skip
    report.write(out)
