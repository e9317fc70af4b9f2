"""Does distillation do what DINOv2 §5 says, at small scale? On the synthetic benchmark, a `tiny_cpu` teacher is
distilled into a smaller ViT and a small ConvNeXt (`configs/distill/tiny_cpu.yaml`, one run, both students), and
each student is compared with:

- the teacher (k-NN accuracy of the student as a fraction of the teacher's);
- the same architecture trained from scratch with the DINOv2 recipe (`tiny_cpu`) for the same number of steps on
  the same images (the ConvNeXt without iBOT, which needs a mask token it lacks) — the peer of the paper's claim
  that a distilled small model beats one trained alone;
- the same students distilled from a heads-less copy of the teacher (its `teacher_backbone/` folder, what a
  released backbone file gives): feature distillation against distillation through the heads;
- the ConvNeXt distilled alone through the heads without the iBOT term (`terms: [dino, koleo]`, as the
  `distill/tiny_cpu` recipe trains it).

k-NN (k = 20 and 200) and the linear probe of the demo, each difference with its 95 % paired-bootstrap interval
over the validation images (`dinokit/eval/significance.py`).

    dinokit data synth data --size 96       # or the demo's folder
    dinokit train tiny_cpu data.path=data/pretrain output_dir=teacher train.steps=1200 crops.global_size=96 …
    PYTHONPATH=. python benchmarks/distill_learns.py --teacher teacher --data data --out distill_out [--steps 600]

Every run goes to `<out>/<name>/` (a finished run is reused, an interrupted one resumed); `results.json` and the
printed table beside them. `--ablation` instead trains the ViT student alone by feature distillation with
several sets of loss terms (`ABLATION`) and compares them: how the recipe's terms were chosen.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from dinokit.config import load_train_config
from dinokit.demo import DemoConfig
from dinokit.eval.features import extract_global_features
from dinokit.eval.knn import knn_features
from dinokit.eval.linear import linear_probe
from dinokit.eval.significance import Scores, beyond_noise, paired_bootstrap
from dinokit.models import create_backbone, load_backbone
from dinokit.train.loop import train

# the demo's 96 px crops and logging (its recipe overrides without the backbone)
CROPS = [o for o in DemoConfig().recipe_overrides]
STUDENTS = {  # name → (preset, options): a ViT of 2/3 the teacher's width and 3 of its 4 blocks; a small ConvNeXt
    "vit": ("dinov3_vitt16", {"embed_dim": 128, "num_heads": 2, "depth": 3, "layerscale_init": 0.1,
                              "drop_path_rate": 0.0}),
    "convnext": ("dinov3_convnext_tiny", {"depths": [1, 1, 2, 1], "dims": [32, 64, 128, 256],
                                          "layerscale_init": 0.1}),
}  # fmt: skip


def students_override() -> str:
    items = [{"name": n, "backbone": p, "backbone_options": o} for n, (p, o) in STUDENTS.items()]
    return "distill.students=" + json.dumps(items)


def run(out: Path, recipe: str, overrides: list[str]) -> Path:
    cfg = load_train_config(recipe, [f"output_dir={out}", *overrides])
    if not (out / "metrics.jsonl").exists() or not _finished(out, cfg.train.steps):
        train(cfg)
    return out


def _finished(out: Path, steps: int) -> bool:
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return bool(lines) and json.loads(lines[-1])["step"] >= steps


def scores(model, data: Path, size: int, seed: int = 0) -> Scores:
    torch.manual_seed(seed)
    train_f = extract_global_features(model, data / "classify/train", size=size, progress=False)
    val_f = extract_global_features(model, data / "classify/val", size=size, progress=False)
    result = Scores({}, {})
    knn = knn_features(train_f, val_f, ks=(20, 200))
    result.update({f"knn_{k}": v for k, v in knn.items()})
    result.per_item.update({f"knn_{k}": v for k, v in knn.per_item.items()})
    linear = linear_probe(train_f, val_f, epochs=100, batch_size=64, progress=False, seed=seed)
    result["linear_top1"] = linear["top1"]
    result.per_item["linear_top1"] = linear.per_item["top1"]
    return result


# feature distillation's loss terms, compared on the ViT student (`--ablation`); the recipe's choice is the last
ABLATION = {
    "cls": "losses={feature_cls: {}}",
    "cls+patches": "losses={feature_cls: {}, feature_patches: {}}",
    "cls+patches+relations": "losses={feature_cls: {}, feature_patches: {}, feature_relations: {}}",
    "smooth_l1 cls+patches+relations": "losses={feature_cls: {distance: smooth_l1}, feature_patches: "
    "{distance: smooth_l1}, feature_relations: {}}",
    "cls+patches+relations+koleo": "losses={feature_cls: {}, feature_patches: {}, feature_relations: {}, "
    "koleo: {weight: 0.1}}",
}


def ablation(args, common: list[str]) -> None:
    """The feature-distillation terms: each set trains the ViT student alone for `--ablation-steps`."""
    preset, options = STUDENTS["vit"]
    student = "distill.students=" + json.dumps([{"name": "vit", "backbone": preset, "backbone_options": options}])
    common = [*common, f"train.steps={args.ablation_steps}", f"distill.teacher={args.teacher / 'teacher_backbone'}"]
    results = {}
    for name, losses in ABLATION.items():
        folder = run(args.out / "ablation" / name.replace(" ", "_").replace("+", "_"), "distill/tiny_cpu",
                     [*common, student, losses])  # fmt: skip
        results[name] = scores(load_backbone(folder / "students" / "vit" / "backbone"), args.data, args.size)
    base = results[next(iter(ABLATION))]
    out = {}
    print(f"{'feature losses':34s} {'k-NN k=20':>10s} {'linear':>8s}   k-NN vs '{next(iter(ABLATION))}'")
    for name, r in results.items():
        low, high = paired_bootstrap(base.per_item["knn_top1_k20"], r.per_item["knn_top1_k20"])
        out[name] = {**r, "knn_k20_vs_first": [low, high]}
        print(f"{name:34s} {r['knn_top1_k20']:10.1f} {r['linear_top1']:8.1f}   [{low:+.1f}, {high:+.1f}]")
    (args.out / "ablation" / "results.json").write_text(json.dumps(out, indent=2))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--teacher", type=Path, required=True, help="a tiny_cpu run folder (with heads)")
    p.add_argument("--data", type=Path, required=True, help="the synthetic set (dinokit data synth)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--size", type=int, default=96)
    p.add_argument("--ablation", action="store_true", help="compare feature-distillation loss sets instead")
    p.add_argument("--ablation-steps", type=int, default=300)
    args = p.parse_args()
    common = [f"data.path={args.data / 'pretrain'}", f"train.steps={args.steps}", *CROPS, "checkpoint.every=100"]
    if args.ablation:
        return ablation(args, common)
    runs = {
        "heads": run(args.out / "distill_heads", "distill/tiny_cpu",
                     [*common, f"distill.teacher={args.teacher}", students_override()]),
        "features": run(args.out / "distill_features", "distill/tiny_cpu",
                        [*common, f"distill.teacher={args.teacher / 'teacher_backbone'}", students_override()]),
    }  # fmt: skip
    # the ConvNeXt alone through the heads without iBOT (what `distill/tiny_cpu` gives it: `terms`)
    preset, options = STUDENTS["convnext"]
    alone = [{"name": "convnext", "backbone": preset, "backbone_options": options, "terms": ["dino", "koleo"]}]
    runs["heads_no_ibot"] = run(args.out / "distill_heads_convnext_no_ibot", "distill/tiny_cpu",
                                [*common, f"distill.teacher={args.teacher}", "distill.students=" + json.dumps(alone)])
    models = {"teacher": load_backbone(args.teacher / "teacher_backbone")}
    for name, (preset, options) in STUDENTS.items():
        losses = "losses={dino: {}, koleo: {weight: 0.1}}" if preset.startswith("dinov3_convnext") else None
        scratch = [*common, f"model.backbone={preset}", "model.backbone_options=" + json.dumps(options)]
        run(args.out / f"scratch_{name}", "tiny_cpu", [*scratch, *([losses] if losses else [])])
        models[f"{name}/scratch"] = load_backbone(args.out / f"scratch_{name}" / "teacher_backbone")
        torch.manual_seed(0)
        models[f"{name}/random"] = create_backbone(preset, **options).eval()
        for kind, folder in runs.items():
            if (folder / "students" / name).is_dir():
                models[f"{name}/{kind}"] = load_backbone(folder / "students" / name / "backbone")
    results = {name: scores(m, args.data, args.size) for name, m in models.items()}
    table = {name: dict(r) for name, r in results.items()}
    comparisons = []
    for name in STUDENTS:
        pairs = [("scratch", "heads"), ("scratch", "features"), ("features", "heads"), ("random", "heads")]
        if f"{name}/heads_no_ibot" in results:
            pairs += [("heads", "heads_no_ibot"), ("scratch", "heads_no_ibot"), ("features", "heads_no_ibot")]
        for a, b in pairs:
            for key in ("knn_top1_k20", "knn_top1_k200", "linear_top1"):
                before, after = results[f"{name}/{a}"], results[f"{name}/{b}"]
                low, high = paired_bootstrap(before.per_item[key], after.per_item[key])
                comparisons.append(dict(student=name, a=a, b=b, key=key, a_value=before[key], b_value=after[key],
                                        change=after[key] - before[key], interval=[low, high],
                                        beyond_noise=beyond_noise((low, high))))  # fmt: skip
    ratios = {name: {kind.split("/")[1]: r["knn_top1_k20"] / results["teacher"]["knn_top1_k20"]
                     for kind, r in results.items() if kind.startswith(f"{name}/")} for name in STUDENTS}  # fmt: skip
    (args.out / "results.json").write_text(json.dumps({"scores": table, "comparisons": comparisons,
                                                       "knn_k20_fraction_of_teacher": ratios}, indent=2))  # fmt: skip
    print(f"{'model':22s} {'k-NN k=20':>10s} {'k-NN k=200':>11s} {'linear':>8s}")
    for name, r in table.items():
        print(f"{name:22s} {r['knn_top1_k20']:10.1f} {r['knn_top1_k200']:11.1f} {r['linear_top1']:8.1f}")
    print("\nB − A with its 95 % paired-bootstrap interval:")
    for c in comparisons:
        low, high = c["interval"]
        pair = f"{c['student']:9s} {c['b']:>8s} − {c['a']:<8s} {c['key']:14s}"
        print(f"{pair} {c['change']:+6.1f} [{low:+.1f}, {high:+.1f}]{'  beyond noise' if c['beyond_noise'] else ''}")
    print("\nstudent k-NN (k = 20) as a fraction of the teacher's:", json.dumps(ratios))


if __name__ == "__main__":
    main()
