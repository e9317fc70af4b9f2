"""The supervised ceiling of `benchmarks/ssl_learns.py` (`--supervised backbone|cnn`): the plain CNN learns an easy
two-class task from the recipe's crops, and the backbone ceiling trains the recipe's own backbone from the
initialisation the benchmark scores. Without these the ceiling it reports would mean nothing."""

import importlib.util
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from dinokit.config import PretrainConfig, load_config
from dinokit.data.datasets import ImageList
from dinokit.train.build import build_backbone

ROOT = Path(__file__).resolve().parents[2]


def _module():
    spec = importlib.util.spec_from_file_location("ssl_learns", ROOT / "benchmarks" / "ssl_learns.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _stripes(mod, root: Path) -> ImageList:
    rng = np.random.default_rng(0)
    for cls, name in enumerate(("h_stripes", "v_stripes")):
        (root / name).mkdir(parents=True)
        for i in range(12):
            Image.fromarray(mod.texture(cls, 32, rng)).save(root / name / f"{i}.png")
    return ImageList.from_source(root)


def _cfg(tmp_path) -> PretrainConfig:
    return load_config(
        PretrainConfig,
        ROOT / "configs/pretrain/tiny_cpu.yaml",
        [f"data.path={tmp_path}", "crops.global_size=32", "train.batch_size=8", "optim.warmup_steps=5",
         "model.backbone_options={depth: 2, layerscale_init: 0.1}"],
    )  # fmt: skip


def test_the_plain_cnn_learns_horizontal_from_vertical_stripes(tmp_path):
    mod = _module()
    labelled = _stripes(mod, tmp_path / "labelled")
    trained = mod.supervised(_cfg(tmp_path), labelled, steps=40, model="cnn")  # k-NN at its init: 50 %
    assert mod.knn_accuracy(trained, labelled, size=32, k=5).mean() >= 0.9


def test_the_backbone_ceiling_trains_the_recipes_own_backbone(tmp_path):
    mod = _module()
    cfg = _cfg(tmp_path)
    torch.manual_seed(cfg.seed)
    initial = build_backbone(cfg)
    trained = mod.supervised(cfg, _stripes(mod, tmp_path / "labelled"), steps=3)
    assert trained.config == initial.config  # the recipe's architecture, from the same initialisation
    changed = [not torch.equal(a, b) for a, b in zip(initial.state_dict().values(), trained.state_dict().values())]
    assert sum(changed) > len(changed) // 2
