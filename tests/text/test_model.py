"""dino.txt model: parity with the released forward pass, strict loading, overrides, shapes, `dinokit info`."""

from __future__ import annotations

import pytest
import torch

import dinokit
from dinokit.cli import main
from dinokit.errors import CheckpointError, ConfigError, UserError
from dinokit.text import load_dinotxt

from .helpers import BACKBONE, DIM, released_layout, token_ids
from .release import GOLDEN, ReplayBackbone, backbone_tokens, released_model

IMAGES = torch.zeros(2, 3, 48, 64)  # the replay backbone ignores pixels


@pytest.fixture(scope="module")
def golden():
    return torch.load(GOLDEN, weights_only=True)


def _replay(golden, **overrides):
    return load_dinotxt(released_layout(), backbone=ReplayBackbone(golden["backbone_tokens"]), **overrides)


@torch.no_grad()
def test_matches_the_released_forward_pass_golden(golden):
    """Outputs saved from the released DINOTxt (tests/text/release.py) on the same weights and backbone tokens."""
    model = _replay(golden)
    assert torch.allclose(model.encode_image(IMAGES), golden["image"], atol=1e-5)
    assert torch.allclose(model.encode_patches(IMAGES).flatten(1, 2), golden["patches"], atol=1e-5)
    assert torch.allclose(model.encode_text(golden["ids"]), golden["text"], atol=1e-5)
    assert torch.equal(model.logit_scale.data, golden["logit_scale"])


@torch.no_grad()
def test_matches_the_released_code_live():
    """With DINOV3_SRC set: the released classes and dinokit on the same random weights."""
    tokens, ids, sd = backbone_tokens(seed=7), token_ids(seed=8), released_layout(seed=9)
    ref = released_model(sd, ReplayBackbone(tokens))
    model = load_dinotxt(sd, backbone=ReplayBackbone(tokens))
    ref_image, ref_patches, _ = ref.encode_image_with_patch_tokens(IMAGES)
    assert (model.encode_image(IMAGES) - ref_image).abs().max() < 1e-4
    assert (model.encode_patches(IMAGES).flatten(1, 2) - ref_patches).abs().max() < 1e-4
    assert (model.encode_text(ids, normalize=True) - ref.encode_text(ids, normalize=True)).abs().max() < 1e-4


@torch.no_grad()
def test_head_reads_the_tokens_the_released_tower_reads():
    """The released VisionTower on a dinokit backbone (it calls get_intermediate_layers itself) with an untied CLS
    norm: dinokit's choice of tokens (forward_features: normed CLS, registers, patches) is the same."""
    torch.manual_seed(0)
    backbone = dinokit.create_backbone("dinov3_test", cls_norm=True).eval()
    backbone.cls_norm.weight.data.uniform_(0.5, 1.5)  # unlike the patch norm, so a wrong choice shows
    backbone.n_storage_tokens, backbone.num_heads = backbone.num_registers, 2  # attributes the release reads
    sd = released_layout(seed=4)
    ref = released_model(sd, backbone)
    model = load_dinotxt(sd, backbone=backbone)
    images = torch.randn(2, 3, 48, 64)
    ref_image, ref_patches, _ = ref.encode_image_with_patch_tokens(images)
    assert (model.encode_image(images) - ref_image).abs().max() < 1e-4
    assert (model.encode_patches(images).flatten(1, 2) - ref_patches).abs().max() < 1e-4


@torch.no_grad()
def test_shapes_normalize_and_a_real_backbone():
    model = load_dinotxt(released_layout(), backbone=BACKBONE)
    images = torch.randn(2, 3, 48, 64)
    image = model.encode_image(images)
    assert image.shape == (2, 2 * DIM)
    assert not torch.allclose(image.norm(dim=-1), torch.ones(2))
    assert torch.allclose(model.encode_image(images, normalize=True), image / image.norm(dim=-1, keepdim=True))
    patches = model.encode_patches(images)
    assert patches.shape == (2, 3, 4, DIM)
    # the image embedding's second half is the mean of the patch tokens
    assert torch.allclose(image[:, DIM:], patches.mean(dim=(1, 2)), atol=1e-5)
    text = model.encode_text(token_ids(), normalize=True)
    assert text.shape == (3, 2 * DIM) and torch.allclose(text.norm(dim=-1), torch.ones(3))
    assert not any(p.requires_grad for p in model.visual_model.backbone.parameters())


@torch.no_grad()
def test_text_pooling_is_at_the_end_token_and_causal():
    model = load_dinotxt(released_layout(), backbone=BACKBONE)
    ids = token_ids(n=2)
    changed = ids.clone()
    changed[:, -1] = 7  # a token after every end token: invisible under causal attention at the end token
    assert torch.allclose(model.encode_text(ids), model.encode_text(changed), atol=1e-6)
    bidirectional = load_dinotxt(released_layout(), backbone=BACKBONE, causal=False)
    assert not torch.allclose(bidirectional.encode_text(ids), bidirectional.encode_text(changed), atol=1e-4)
    last = load_dinotxt(released_layout(), backbone=BACKBONE, text_pool="last")
    assert not torch.allclose(last.encode_text(ids), model.encode_text(ids), atol=1e-4)


@torch.no_grad()
def test_overrides(golden):
    base, two_heads = _replay(golden), _replay(golden, text_heads=2)
    ids = golden["ids"]
    assert two_heads.text_model.backbone.blocks[0].attention.num_heads == 2
    assert not torch.allclose(base.encode_text(ids), two_heads.encode_text(ids), atol=1e-4)
    one_head = _replay(golden, vision_heads=1)
    assert not torch.allclose(one_head.encode_image(IMAGES), base.encode_image(IMAGES), atol=1e-4)
    maxed = _replay(golden, patch_pool="max")
    assert torch.allclose(maxed.encode_image(IMAGES)[:, DIM:], base.encode_patches(IMAGES).amax(dim=(1, 2)))
    with pytest.raises(ConfigError, match="text_heads=3"):
        _replay(golden, text_heads=3)
    with pytest.raises(ConfigError, match="unknown dino.txt option"):
        _replay(golden, num_heads=4)
    with pytest.raises(ConfigError, match="patch_pool"):
        _replay(golden, patch_pool="median")


def test_strict_loading_names_the_keys():
    sd = released_layout()
    missing = {k: v for k, v in sd.items() if k != "visual_model.head.blocks.1.ls2.gamma"}
    with pytest.raises(CheckpointError, match=r"missing \(1\): visual_model.head.blocks.1.ls2.gamma"):
        load_dinotxt(missing, backbone=BACKBONE)
    with pytest.raises(CheckpointError, match=r"missing \(1\): logit_scale"):
        load_dinotxt({k: v for k, v in sd.items() if k != "logit_scale"}, backbone=BACKBONE)
    extra = sd | {"text_model.head.extra.weight": torch.zeros(3)}
    with pytest.raises(CheckpointError, match=r"unexpected \(1\): text_model.head.extra.weight"):
        load_dinotxt(extra, backbone=BACKBONE)
    shaped = sd | {"visual_model.head.blocks.0.attn.proj.bias": torch.zeros(DIM + 1)}
    with pytest.raises(CheckpointError, match=r"mis-shaped \(1\): visual_model.head.blocks.0.attn.proj.bias"):
        load_dinotxt(shaped, backbone=BACKBONE)
    with pytest.raises(CheckpointError, match="width 128, but the backbone gives 384"):
        load_dinotxt(sd, backbone="random:dinov3_vits16")
    with pytest.raises(UserError, match="pass backbone="):
        load_dinotxt(sd)
    with pytest.raises(CheckpointError, match="not a dino.txt checkpoint"):
        load_dinotxt({"cls_token": torch.zeros(1, 1, 4)}, backbone=BACKBONE)


def test_reads_files_and_exports(tmp_path):
    torch.save(released_layout(), tmp_path / "dinotxt.pth")
    assert dinokit.load_dinotxt is load_dinotxt
    model = dinokit.load_dinotxt(tmp_path / "dinotxt.pth", backbone=BACKBONE)
    assert model.context_length == 77 and model.embed_dim == 2 * DIM
    with pytest.raises(CheckpointError, match="no dino.txt checkpoint"):
        load_dinotxt(tmp_path / "missing.pth", backbone=BACKBONE)
    with pytest.raises(UserError, match="no tokenizer"):
        model.tokenize(["a dog"])


def test_info_recognises_a_dinotxt_file(tmp_path, capsys):
    torch.save(released_layout(), tmp_path / "dinotxt.pth")
    assert main(["info", str(tmp_path / "dinotxt.pth")]) == 0
    out = capsys.readouterr().out
    assert "dino.txt" in out and "width 64 / depth 2" in out and "2 blocks of width 128" in out
    assert "14.28 (exp of 2.6592)" in out


class _MetaBackbone(torch.nn.Module):
    embed_dim, num_heads, n_storage_tokens = 1024, 16, 4
    config = type("Config", (), {"num_heads": 16})()

    def forward_features(self, images):
        raise NotImplementedError


def test_the_released_full_size_layout_loads_strictly():
    """The released DINOTxt at the released sizes (hub/dinotxt.py), on the meta device: its state dict (the keys
    and shapes of the released file) gives back the released sizes and loads with every key used."""
    import importlib
    import math

    from .release import release_source

    release_source()
    module = importlib.import_module("dinov3.eval.text.dinotxt_model")
    TextTransformer = importlib.import_module("dinov3.eval.text.text_transformer").TextTransformer
    with torch.device("meta"):
        config = module.DINOTxtConfig(
            embed_dim=2048, vision_model_use_patch_tokens=True, vision_model_num_head_blocks=2,
            text_model_tokens_pooler_type="argmax", text_model_use_linear_projection=True,
            init_logit_scale=math.log(1 / 0.07),
        )  # fmt: skip
        text = TextTransformer(context_length=77, vocab_size=49408, dim=1280, num_heads=20, num_layers=24,
                               ffn_ratio=4, is_causal=True, ls_init_value=None, dropout_prob=0.0)  # fmt: skip
        sd = module.DINOTxt(model_config=config, vision_backbone=_MetaBackbone(), text_backbone=text).state_dict()
        model = load_dinotxt(sd, backbone=_MetaBackbone())
    assert model.embed_dim == 2048 and model.context_length == 77
    assert model.text_model.backbone.blocks[0].attention.num_heads == 20 and len(model.text_model.backbone.blocks) == 24
    assert model.visual_model.head.blocks[0].mlp.w1.out_features == 2752  # int(4096·2/3) rounded up to 64
    assert model.visual_model.head.blocks[0].attn.num_heads == 16


@pytest.mark.filterwarnings("ignore:ftfy is not installed")
def test_tokenize_with_a_vocabulary(tmp_path):
    import gzip

    from .test_tokenizer import MERGES

    (tmp_path / "bpe.txt.gz").write_bytes(gzip.compress(("#version\n" + "\n".join(MERGES)).encode()))
    model = load_dinotxt(released_layout(vocab=520), backbone=BACKBONE, vocab=tmp_path / "bpe.txt.gz")
    ids = model.tokenize(["hello dog", "dog"])
    assert ids.shape == (2, 77) and model.encode_text(ids).shape == (2, 2 * DIM)
    with pytest.raises(UserError, match="has 520 tokens, the text encoder 300"):
        load_dinotxt(released_layout(), backbone=BACKBONE, vocab=tmp_path / "bpe.txt.gz")
