"""Draw the pictures of docs/tools.md and the README's tools section from the sample photos dinokit ships.

    PYTHONPATH=. python docs/make_tool_pictures.py [--backbone random:dinov3_vits16] [--out docs/images]

No weights can be downloaded on the development machines, so the committed pictures come from a randomly
initialised ViT-S/16 (LayerScale gammas set to 0.5 so the blocks act); pass a released checkpoint to see
the real thing.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch
import torch.nn.functional as F

from dinokit.data.transforms import normalize, resize, to_float
from dinokit.demo_photo import sample_photo
from dinokit.models import backbone_from_spec
from dinokit.tools.extract import Preprocess, features_of_image
from dinokit.tools.matching import describe, match_keypoints, project_points, warp_image
from dinokit.tools.prototypes import Prototypes, apply_prototypes, render_result
from dinokit.tools.viz import render_attention, render_matches, render_pca, render_similarity, save_png


def photo(name: str) -> torch.Tensor:
    return sample_photo(name)[0]  # uint8 [3, H, W]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--backbone", default="random:dinov3_vits16")
    ap.add_argument("--out", default="docs/images")
    args = ap.parse_args()
    out = Path(args.out)
    model = backbone_from_spec(args.backbone)
    if args.backbone.startswith("random:"):
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith("gamma"):
                    p.fill_(0.5)
    astronaut, coffee, cat = photo("astronaut"), photo("coffee"), photo("chelsea")
    save_png(render_pca(model, [astronaut, coffee], size=224), out / "tools_pca.png")
    save_png(render_similarity(model, [astronaut, coffee], query=(120, 250), size=224), out / "tools_similarity.png")
    save_png(render_attention(model, [astronaut], size=160), out / "tools_attention.png")

    # matching: the photo and a copy warped by a known homography
    img = resize(to_float(astronaut), (224, 224))
    c, angle, s = 112.0, math.radians(10), 1.1
    H = torch.tensor([[1, 0, c + 8], [0, 1, c - 6], [0, 0, 1.0]]) @ torch.tensor(
        [[s * math.cos(angle), -s * math.sin(angle), 0], [s * math.sin(angle), s * math.cos(angle), 0], [2e-4, 0, 1]]
    ) @ torch.tensor([[1, 0, -c], [0, 1, -c], [0, 0, 1.0]])
    warped = warp_image(img, H)
    kp_a, da = describe(model, normalize(img))
    kp_b, db = describe(model, normalize(warped))
    pairs, _ = match_keypoints(da, db, ratio=0.9)
    err = project_points(H, kp_a)[pairs[:, 0]] - kp_b[pairs[:, 1]]
    correct = err.norm(dim=-1) < 16
    as_u8 = lambda t: (t.clamp(0, 1) * 255 + 0.5).to(torch.uint8).permute(1, 2, 0).numpy()  # noqa: E731
    save_png(render_matches(as_u8(img), as_u8(warped), kp_a, kp_b, pairs, correct), out / "tools_matches.png")
    print(f"matches: {len(pairs)}, precision@16px {correct.float().mean():.2f}")

    # prototypes: the astronaut photo is the known world; a cat pasted into it is the unknown object
    protos = Prototypes(model.embed_dim, per_class=16)  # one "known" class with many looks

    protos.add("scene", features_of_image(model, Preprocess(model.patch_size, 224)(astronaut))["patches"])
    protos.calibrate(0.99)
    protos.meta = {"size": 224}
    scene = astronaut.clone()
    scene[:, 300:460, 40:220] = F.interpolate(cat[None].float(), size=(160, 180), mode="bilinear")[0].byte()
    result = apply_prototypes(model, protos, scene)
    save_png(render_result(result, num_classes=1), out / "tools_ood.png")
    print(f"OOD: {result['ood_mask'].float().mean():.1%} of patches flagged (threshold {protos.threshold:.3f})")


if __name__ == "__main__":
    main()
