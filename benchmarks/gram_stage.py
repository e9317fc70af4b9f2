"""Does the Gram stage do what DINOv3 §4 says on the synthetic benchmark? The same pretraining run is continued
for the same number of steps twice, with `stages/gram_tiny_cpu` and with the same recipe without the Gram term
(`losses.gram=null gram=null`), and the two teachers are compared:

- the mean cosine similarity between each patch token and the CLS token of its image (final-normed, on the dense
  validation scenes): DINOv3 reports that patch features drift towards the global one in long runs (Fig. 5–6)
  and that Gram anchoring keeps them apart, so expect it lower with Gram;
- the dense probes of the demo (segmentation, depth, correspondence) and k-NN / linear, each change with its 95 %
  paired-bootstrap interval over the validation items (`dinokit/eval/significance.py`).

Peer: the run without the Gram term, trained from the same start on the same batches.

    dinokit demo --output demo_out          # once: the synthetic set and the 300-step pretraining run
    PYTHONPATH=. python benchmarks/gram_stage.py demo_out [--steps 300] [--seed 0]

Writes `<demo_out>/gram_stage[_seedS]/{with_gram,without_gram}/` (the two runs; a finished run is reused) and
`results.json` beside them, and prints the table. `--seed` changes the continued runs' data order and training
randomness (both runs alike), to see how much of a difference is the run's luck.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F

from dinokit.config import load_train_config
from dinokit.data.images import decode_image
from dinokit.data.transforms import EvalTransform
from dinokit.demo import DemoConfig, compare, evaluate, table_rows
from dinokit.eval.significance import Scores, beyond_noise, mean_over_items, paired_bootstrap
from dinokit.models import load_backbone
from dinokit.train.loop import train


def continue_run(demo: Path, out: Path, steps: int, gram: bool, size: int, seed: int) -> Path:
    """The demo's run continued `steps` steps with the Gram stage's recipe, with or without its Gram term."""
    overrides = [f"init.run={demo / 'run'}", f"output_dir={out}", f"train.steps={steps}", f"seed={seed}",
                 "data.num_workers=0",
                 "train.log_every=10", "checkpoint.every=100", "eval.every=0", "eval.knn.train=null",
                 "eval.knn.val=null", f"gram.teacher_crop_size={2 * size}"]  # fmt: skip
    if not gram:
        overrides += ["losses.gram=null", "gram=null"]
    return Path(train(load_train_config("stages/gram_tiny_cpu", overrides)))


@torch.inference_mode()
def patch_cls_cosine(model, images: list[Path], size: int) -> Scores:
    """Mean over images of the mean cosine similarity between the patch tokens and the CLS token."""
    transform = EvalTransform.for_model(model, size=size)
    per_image = []
    for path in images:
        out = model.forward_features(transform(decode_image(path))[None])
        cos = F.cosine_similarity(out.patches, out.cls[:, None], dim=-1)  # [1, h·w]
        per_image.append(cos.mean())
    stats = mean_over_items(torch.stack(per_image))
    return Scores({"patch_cls_cos": stats.value()}, {"patch_cls_cos": stats})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("demo", type=Path, help="a `dinokit demo` output folder (data/ and run/)")
    p.add_argument("--steps", type=int, default=300, help="steps of each continued run")
    p.add_argument("--seed", type=int, default=0, help="seed of the continued runs")
    args = p.parse_args()
    config = DemoConfig()
    data, out = args.demo / "data", args.demo / ("gram_stage" if args.seed == 0 else f"gram_stage_seed{args.seed}")
    runs = {name: continue_run(args.demo, out / name, args.steps, name == "with_gram", config.size, args.seed)
            for name in ("without_gram", "with_gram")}  # fmt: skip
    scenes = sorted((data / "seg/images/validation").glob("*.png"))
    models = {"start": load_backbone(args.demo / "run" / "teacher_backbone")}
    models.update({name: load_backbone(run / "teacher_backbone") for name, run in runs.items()})
    cosine = {name: patch_cls_cosine(m.eval(), scenes, config.size) for name, m in models.items()}
    results = {}
    for name in ("without_gram", "with_gram"):
        torch.manual_seed(0)
        results[name] = evaluate(models[name].eval(), data, config)
        results[name].update(cosine[name])
        results[name].per_item.update(cosine[name].per_item)
    pair = {"random": results["without_gram"], "trained": results["with_gram"]}
    comparison = compare(pair, config.thresholds)
    low, high = paired_bootstrap(cosine["without_gram"].per_item["patch_cls_cos"],
                                 cosine["with_gram"].per_item["patch_cls_cos"])  # fmt: skip
    a, b = cosine["without_gram"]["patch_cls_cos"], cosine["with_gram"]["patch_cls_cos"]
    comparison.insert(0, dict(key="patch_cls_cos", protocol="patch–CLS cosine", metric="mean cos", chance=None,
                              random=a, trained=b, change=b - a, interval=[low, high], higher_is_better=False,
                              better_beyond_noise=beyond_noise((low, high), higher_is_better=False)))  # fmt: skip
    print(f"{args.steps} steps (seed {args.seed}) from {args.demo / 'run'} (patch–CLS cosine of that start: "
          f"{cosine['start']['patch_cls_cos']:.3f}); 'better' = with Gram better than without")  # fmt: skip
    print("| protocol | metric | without Gram | with Gram | change [95 % interval] | better beyond noise |")
    print("|---|---|---|---|---|---|")
    for row in table_rows(comparison):
        print("| " + " | ".join(row[:2] + row[3:]) + " |")
    summary = {"steps": args.steps, "seed": args.seed, "start_patch_cls_cos": cosine["start"]["patch_cls_cos"],
               "comparison": comparison}  # fmt: skip
    (out / "results.json").write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
