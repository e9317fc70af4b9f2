"""Zero-shot classification with dino.txt: class embeddings from prompt templates, top-1 / top-5 (percent).

The protocol of the release (`notebooks/dinotxt_inference.ipynb`: `zeroshot_classifier`, `accuracy`):
- each class name is written into every prompt template (the 80 ImageNet templates of OpenAI's CLIP, shipped as
  `prompts/imagenet_templates.txt`), the texts are embedded, each embedding L2-normalised, averaged over the
  templates and normalised again: one unit vector per class (`zeroshot_classifier`, `[C, E]`; the notebook
  stacks the transpose);
- images are resized (shorter side 512, bicubic), centre-cropped to 512 and ImageNet-normalised
  (`make_classification_eval_transform(resize_size=512, crop_size=512)`), embedded with `encode_image`
  ([head CLS ‖ mean of head patches]) and L2-normalised;
- ImageNet class names: the release's CLIP names (`imagenet_clip_class_names`), shipped as
  `prompts/imagenet_classnames.txt` and chosen with `classnames="imagenet"` (also `"ade20k"`, `"cityscapes"`:
  the names of the release's segmentation notebook);
- logits are `100 · image · classᵀ`; an image counts for top-k when its class is among the k largest logits.
  With fewer than k classes top-k is capped at the number of classes (the release assumes ≥ 5 classes).

The same class embeddings restricted to the patch half of the text embedding are the classifier of
open-vocabulary segmentation (`openseg.py`): `class_embeddings(..., part="patch")`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from importlib import resources
from pathlib import Path

import torch
import torch.nn.functional as F

from ..errors import UserError
from .significance import Scores, percent_of

TEMPLATES_FILE = "imagenet_templates.txt"
# `--classnames imagenet|ade20k|cityscapes`: the class names the release uses on these datasets (shipped)
SHIPPED_NAMES = {name: f"{name}_classnames.txt" for name in ("imagenet", "ade20k", "cityscapes")}
SCALE = 100.0  # the notebook's logit scale for zero-shot scoring (not the model's learnt one; ranks are the same)
Template = str | Callable[[str], str]


def read_templates(path: str | os.PathLike | Sequence[Template] | None = None) -> list[Template]:
    """Prompt templates, one per line with `{}` for the class name (`#` lines and blank lines skipped); the
    shipped ImageNet list when `path` is None; a sequence of templates (strings or callables) is taken as it is."""
    if not isinstance(path, str | os.PathLike | type(None)):
        return list(path)
    if path is None:
        text = resources.files("dinokit.eval").joinpath("prompts", TEMPLATES_FILE).read_text(encoding="utf-8")
        where = TEMPLATES_FILE
    else:
        p = Path(path).expanduser()
        if not p.is_file():
            raise UserError(f"--templates {path}: no such file (one template per line, with {{}} for the class)")
        text, where = p.read_text(encoding="utf-8"), str(p)
    templates = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    if not templates:
        raise UserError(f"{where}: no templates (one per line, with {{}} for the class name)")
    for t in templates:
        _fill(t, "x")  # a template without a placeholder, or with a stray brace, fails here, before any model work
    return templates


def _fill(template: Template, name: str) -> str:
    if callable(template):
        return template(name)
    try:
        filled, empty = template.format(name), template.format("")
    except (IndexError, KeyError, ValueError):
        raise UserError(f"prompt template {template!r}: use {{}} once for the class name (braces otherwise "
                        "doubled: {{ }})") from None  # fmt: skip
    if filled == empty:
        raise UserError(f"prompt template {template!r} has no {{}} for the class name")
    return filled


def read_classnames(path: str | os.PathLike, folders: Sequence[str] | None = None) -> list[str]:
    """Class names from a file: one per line (in the order of the class folders, i.e. sorted), a JSON list, or a
    JSON object mapping folder name → class name (e.g. ImageNet synsets → names; needs `folders`). The words
    `imagenet` (the 1000 ImageNet-1k names in synset order), `ade20k` and `cityscapes` (when no such file exists)
    are the names the release uses on these datasets."""
    p = Path(path).expanduser()
    if str(path) in SHIPPED_NAMES and not p.exists():
        p = Path(str(resources.files("dinokit.eval").joinpath("prompts", SHIPPED_NAMES[str(path)])))
    if not p.is_file():
        raise UserError(f"--classnames {path}: no such file")
    text = p.read_text(encoding="utf-8")
    names: list[str]
    if p.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise UserError(f"{p}: not valid JSON ({e})") from None
        if isinstance(data, dict):
            if folders is None:
                raise UserError(f"{p}: a folder → name mapping needs class folders to map")
            missing = [f for f in folders if f not in data]
            if missing:
                raise UserError(f"{p}: no name for class folder(s) {', '.join(missing[:5])}")
            names = [str(data[f]) for f in folders]
        elif isinstance(data, list) and all(isinstance(n, str) for n in data):
            names = data
        else:
            raise UserError(f"{p}: expected a JSON list of class names or an object folder → name")
    else:
        names = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]
    if not names:
        raise UserError(f"{p}: no class names")
    if folders is not None and len(names) != len(folders):
        raise UserError(f"{p} names {len(names)} classes but there are {len(folders)} class folders; give one name "
                        "per folder, in sorted folder order")  # fmt: skip
    return names


def folder_classnames(folders: Sequence[str]) -> list[str]:
    """Default class names: the folder names with underscores as spaces (`pool_table` → `pool table`)."""
    return [f.replace("_", " ") for f in folders]


@torch.no_grad()
def class_embeddings(
    model, classnames: Sequence[str], templates: Sequence[Template] | None = None, part: str = "full",
    batch_size: int = 256,
) -> torch.Tensor:  # fmt: skip
    """One unit vector per class: the L2-normalised mean of the L2-normalised text embeddings of the class name
    in every template → `[C, E]` (`part="full"`, zero-shot classification) or `[C, E/2]` (`part="patch"`, the
    half aligned with patch tokens, for segmentation; each half is normalised on its own, as released).
    `templates` default to the shipped ImageNet list; they are strings with `{}` or callables."""
    if part not in ("full", "patch"):
        raise ValueError(f"part must be 'full' or 'patch', got {part!r}")
    if not classnames:
        raise UserError("no class names to embed")
    templates = read_templates() if templates is None else list(templates)
    if not templates:
        raise UserError("no prompt templates")
    texts = [_fill(t, name) for name in classnames for t in templates]  # class-major: [C·T]
    ids = model.tokenize(texts)  # [C·T, context]
    feats = torch.cat([model.encode_text(ids[i : i + batch_size]) for i in range(0, len(ids), batch_size)])
    if part == "patch":
        feats = feats[:, feats.shape[1] // 2 :]
    feats = F.normalize(feats.float(), dim=-1).reshape(len(classnames), len(templates), -1)  # [C, T, E]
    return F.normalize(feats.mean(dim=1), dim=-1)  # [C, E]


def zeroshot_classifier(model, classnames: Sequence[str], templates: Sequence[Template] | None = None) -> torch.Tensor:
    """The zero-shot classifier `[C, E]` of the release: per class, the normalised mean of the normalised text
    embeddings of its prompts (see `class_embeddings`)."""
    return class_embeddings(model, classnames, templates, part="full")


def zeroshot_eval(
    image_embeddings: torch.Tensor, labels: torch.Tensor, classifier: torch.Tensor, ks: Sequence[int] = (1, 5)
) -> Scores:
    """Top-k accuracy (percent) of images `[N, E]` (normalised here) with integer labels `[N]` against a
    classifier `[C, E]` of unit class vectors: `{"top1": …, "top5": …}`; `.per_item` holds each image's hit
    (`significance.py`). A k above C counts as C."""
    if image_embeddings.shape[0] == 0:
        raise ValueError("zero-shot evaluation needs at least one image")
    if image_embeddings.shape[1] != classifier.shape[1]:
        raise ValueError(f"image embeddings have width {image_embeddings.shape[1]}, the classifier "
                         f"{classifier.shape[1]}")  # fmt: skip
    logits = SCALE * F.normalize(image_embeddings.float(), dim=-1) @ classifier.float().T  # [N, C]
    labels = labels.long().reshape(-1, 1)
    ranked = logits.topk(min(max(ks), logits.shape[1]), dim=1).indices  # [N, kmax], best first
    results, items = {}, {}
    for k in ks:
        hits = (ranked[:, :k] == labels).any(dim=1)  # [N]
        items[f"top{k}"] = percent_of(hits)
        results[f"top{k}"] = items[f"top{k}"].value()
    return Scores(results, items)


def zeroshot_transform(model, size: int = 512):
    """The release's zero-shot preprocessing: shorter side → `size` (bicubic), centre crop `size` (rounded to the
    patch size), the backbone's mean/std."""
    from ..data.transforms import EvalTransform, model_mean_std, round_to_patch

    backbone = model.visual_model.backbone
    crop = round_to_patch(size, backbone.patch_size)
    mean, std = model_mean_std(backbone)
    return EvalTransform(resize=crop, crop=crop, mean=mean, std=std, mode="bicubic")


@torch.no_grad()
def encode_images(
    model, images, size: int = 512, batch_size: int = 64, num_workers: int = 0, device=None, desc: str = "images"
) -> tuple[torch.Tensor, torch.Tensor]:
    """`encode_image` of every readable image of an `ImageList` → (embeddings `[N, E]` float32 CPU, labels `[N]`)."""
    from torch.utils.data import DataLoader
    from tqdm.auto import tqdm

    from ..data.datasets import ImageDataset, collate_skip_none
    from .features import default_device

    device = torch.device(device) if device is not None else default_device()
    model = model.eval().to(device)
    loader = DataLoader(ImageDataset(images, zeroshot_transform(model, size)), batch_size=batch_size,
                        num_workers=num_workers, collate_fn=collate_skip_none)  # fmt: skip
    feats, labels = [], []
    for batch in tqdm(loader, desc=desc, unit="batch", leave=False):
        if batch is None:
            continue
        x, y, _ = batch
        feats.append(model.encode_image(x.to(device)).float().cpu())
        labels.append(torch.as_tensor(y).long())
    if not feats:
        raise UserError(f"{images.source}: none of the {len(images)} images could be read")
    return torch.cat(feats), torch.cat(labels)


def run_zeroshot(
    model, val: str | os.PathLike, classnames: Sequence[str] | str | os.PathLike | None = None,
    templates: Sequence[Template] | str | os.PathLike | None = None, size: int = 512, batch_size: int = 64,
    num_workers: int = 0, device=None,
) -> Scores:  # fmt: skip
    """The whole protocol on a labelled image folder (class sub-folders) or `path,label` list: `{"top1", "top5"}`.

    `model`: a `DinoTxt` with a tokenizer (`load_dinotxt(..., vocab=...)`). `classnames`: names in the order of
    the sorted class folders, or a file (`read_classnames`); default: the folder names with `_` → space.
    `templates`: a list, a file (`read_templates`) or None for the shipped ImageNet templates."""
    from ..data.datasets import ImageList

    images = ImageList.from_source(val)
    if images.labels is None:
        raise UserError(f"{val}: zero-shot evaluation needs labelled images (one sub-folder per class, or a "
                        "path,label list)")  # fmt: skip
    if classnames is None:
        names = folder_classnames(images.classes)
    elif isinstance(classnames, str | os.PathLike):
        names = read_classnames(classnames, images.classes)
    else:
        names = list(classnames)
        if len(names) != len(images.classes):
            raise UserError(f"{len(names)} class names for {len(images.classes)} classes")
    templates = read_templates(templates)
    from .features import default_device

    device = torch.device(device) if device is not None else default_device()
    model = model.eval().to(device)
    classifier = zeroshot_classifier(model, names, templates)  # before the images: a tokenizer error comes first
    feats, labels = encode_images(model, images, size, batch_size, num_workers, device, desc="zero-shot images")
    return zeroshot_eval(feats, labels, classifier.to(feats.device))
