"""DINOv3 ConvNeXt backbones: parity with HF transformers (live and golden), the released semantics of
`get_intermediate_layers`, checkpoint formats, the training protocol, presets and their parameter counts."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import dinokit
from dinokit.cli import main as cli_main
from dinokit.errors import ConfigError
from dinokit.models import CheckpointError
from dinokit.models.architectures import TrainableBackbone
from dinokit.models.convnext import CONVNEXT_PRESETS, CONVNEXT_RELEASED, ConvNeXt, ConvNeXtConfig
from dinokit.models.presets import match_preset
from dinokit.models.weights import dinokit_to_official, infer_config, official_to_dinokit
from tests.golden.make_golden import golden_input
from tests.golden.make_golden_convnext import DEPTHS, DIMS, GOLDEN, SIZES, reference_model, reference_outputs

TOL = 1e-4
SMALL = dict(depths=DEPTHS, dims=DIMS)  # the parity width: a forward in milliseconds


def _random(seed: int = 0, **kw) -> ConvNeXt:
    """A small ConvNeXt whose every part matters (γ 0.5 instead of 1e-6, perturbed norms)."""
    torch.manual_seed(seed)
    model = ConvNeXt(ConvNeXtConfig(**(SMALL | kw))).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.add_(torch.randn_like(p) * 0.05)
            if name.endswith("gamma"):
                p.fill_(0.5)
    return model


def _x(*size, batch: int = 2, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, 3, *size, generator=torch.Generator().manual_seed(seed))


def _errors(model: ConvNeXt, ref: dict[str, torch.Tensor], x: torch.Tensor) -> dict[str, float]:
    """Max abs differences to HF's outputs: final tokens, and every stage (raw, and the last one normed)."""
    with torch.inference_mode():
        out = model.forward_features(x)
        maps = model.get_intermediate_layers(x, n=4, norm=False, reshape=True)
        (last, last_cls) = model.get_intermediate_layers(x, n=1, return_class_token=True)[0]
    err = {k: (getattr(out, k) - ref[k]).abs().max().item() for k in ("cls", "patches", "prenorm")}
    err |= {f"stage{i}": (m - ref[f"stage{i}"]).abs().max().item() for i, m in enumerate(maps)}
    err["stage3_normed"] = max((last - ref["patches"]).abs().max().item(), (last_cls - ref["cls"]).abs().max().item())
    return err


# ---------------------------------------------------------------------------------------------- parity
def test_golden_parity_without_transformers():
    t = torch.load(GOLDEN, weights_only=True)
    config = ConvNeXtConfig.from_dict(json.loads(t["config"]))
    model = ConvNeXt(config).eval()
    model.load_state_dict({k[8:]: v for k, v in t.items() if k.startswith("weights.")}, strict=True)
    for i, size in enumerate(SIZES):
        x = golden_input(t[f"image.{i}"])
        assert tuple(x.shape[-2:]) == size
        ref = {k.split(".", 2)[2]: v for k, v in t.items() if k.startswith(f"output.{i}.")}
        errors = _errors(model, ref, x)
        assert max(errors.values()) <= TOL, (size, errors)
        assert ref["patches"].shape[1] == (size[0] // 32) * (size[1] // 32)


def test_hf_folder_parity(tmp_path):
    pytest.importorskip("transformers")
    ref_model = reference_model(seed=3)
    ref_model.save_pretrained(tmp_path / "hf")
    model = dinokit.load_backbone(tmp_path / "hf")
    assert isinstance(model, ConvNeXt) and model.config.replace(extra={}) == ConvNeXtConfig(**SMALL)
    for size in SIZES:
        x = _x(*size)
        errors = _errors(model, reference_outputs(ref_model, x), x)
        assert max(errors.values()) <= TOL, (size, errors)
    in_memory = ref_model.state_dict()  # transformers v5's names (`model.stages.…`), no config: shapes decide
    assert any(k.startswith("model.stages.") for k in in_memory)
    from_memory = dinokit.load_backbone(in_memory)
    assert torch.equal(from_memory(x), model(x))


def test_export_to_hf_loads_in_transformers(tmp_path):
    pytest.importorskip("transformers")
    from transformers import AutoModel

    model = _random()
    dinokit.save_backbone(model, tmp_path / "hf", format="hf")
    reloaded = AutoModel.from_pretrained(tmp_path / "hf").eval()
    assert type(reloaded).__name__ == "DINOv3ConvNextModel"
    x = _x(97, 131)
    errors = _errors(model, reference_outputs(reloaded, x), x)
    assert max(errors.values()) <= TOL, errors


# ------------------------------------------------------------------------------------------- semantics
def test_forward_features_layout():
    model = _random()
    x = _x(97, 131)  # 97 → 24 → 12 → 6 → 3; 131 → 32 → 16 → 8 → 4
    with torch.inference_mode():
        out = model.forward_features(x)
        (fmap,) = model.get_intermediate_layers(x, n=1, norm=False, reshape=True)
        tokens = fmap.flatten(2).transpose(1, 2)  # row-major
        normed, cls = model.norm(tokens), model(x)
    assert out.grid == (3, 4) == model.grid_size(97, 131)
    assert out.cls.shape == (2, 128) and out.registers.shape == (2, 0, 128) and out.patches.shape == (2, 12, 128)
    assert out.prenorm.shape == (2, 13, 128)
    torch.testing.assert_close(out.prenorm[:, 1:], tokens)
    torch.testing.assert_close(out.prenorm[:, 0], fmap.mean(dim=(-2, -1)))
    torch.testing.assert_close(out.patches, normed)
    torch.testing.assert_close(cls, out.cls)
    with pytest.raises(ValueError, match="32 px"):
        model(torch.randn(1, 3, 31, 64))


def test_get_intermediate_layers_released_semantics():
    model = _random()
    x = _x(160, 224)  # stage grids 40×56, 20×28, 10×14, 5×7
    grids = [(40, 56), (20, 28), (10, 14), (5, 7)]
    with torch.inference_mode():
        raw = model.get_intermediate_layers(x, n=4, norm=False, reshape=True)  # [B, C, h, w] maps
        out = model.forward_features(x)
        for i, m in enumerate(raw):
            assert m.shape == (2, DIMS[i], *grids[i])
        # int n: the last n stages; norm only changes the last stage (the others have no norm, as released)
        normed = model.get_intermediate_layers(x, n=4, return_class_token=True)
        for i, (patches, cls) in enumerate(normed):
            assert patches.shape == (2, grids[i][0] * grids[i][1], DIMS[i]) and cls.shape == (2, DIMS[i])
            if i < 3:
                torch.testing.assert_close(patches, raw[i].flatten(2).transpose(1, 2), rtol=0, atol=0)
                torch.testing.assert_close(cls, raw[i].mean(dim=(-2, -1)), rtol=0, atol=0)
        torch.testing.assert_close(normed[3][0], out.patches)
        torch.testing.assert_close(normed[3][1], out.cls)
        assert not torch.allclose(normed[3][0], raw[3].flatten(2).transpose(1, 2))
        # n=2 is the same as [2, 3]; a list is returned in depth order; reshape gives maps; no class token → tensors
        two = model.get_intermediate_layers(x, n=2)
        assert all(torch.equal(a, b) for a, b in zip(two, model.get_intermediate_layers(x, n=[2, 3])))
        assert all(torch.equal(a, b) for a, b in zip(two, model.get_intermediate_layers(x, n=[3, 2])))
        maps = model.get_intermediate_layers(x, n=[0, 3], reshape=True)
        assert [tuple(m.shape) for m in maps] == [(2, 16, 40, 56), (2, 128, 5, 7)]
        torch.testing.assert_close(maps[1], out.patch_map())
        flat = model.get_intermediate_layers(x, n=[1], norm=False)[0]  # norm off, reshape off → tokens
        assert flat.shape == (2, 20 * 28, 32)
        _, _, regs = model.get_intermediate_layers(x, n=1, return_class_token=True, return_extra_tokens=True)[0]
        assert regs.shape == (2, 0, 128)
    for bad in (0, 5, [4], [-1], [1, 1], []):
        with pytest.raises(ValueError, match="stage indices"):
            model.get_intermediate_layers(x, n=bad)


def test_pseudo_patch_size_resizes_only_intermediate_maps():
    model = _random(pseudo_patch_size=16)
    x = _x(160, 224)
    with torch.inference_mode():
        layers = model.get_intermediate_layers(x, n=[0, 3], reshape=True, return_class_token=True)
        plain = _random().get_intermediate_layers(x, n=[0, 3], reshape=True, return_class_token=True)
        out = model.forward_features(x)
    for (patches, cls), (_, plain_cls) in zip(layers, plain):
        assert patches.shape[-2:] == (10, 14)  # (160 // 16, 224 // 16)
        torch.testing.assert_close(cls, plain_cls)  # the class token is pooled before the resize
    assert out.grid == (5, 7)  # forward_features never resizes


def test_masks_are_refused_unless_all_false():
    model = _random()
    x = _x(64, 96)
    ok = model.forward_features(x, masks=torch.zeros(2, 6, dtype=torch.bool))
    assert torch.equal(ok.cls, model.forward_features(x).cls)
    masks = torch.zeros(2, 6, dtype=torch.bool)
    masks[1, 3] = True
    with pytest.raises(ConfigError, match="cannot take iBOT masks.*distillation"):
        model.forward_features(x, masks=masks)
    with pytest.raises(ValueError, match=r"masks must be \[B, h·w\]"):
        model.forward_features(x, masks=torch.zeros(2, 7, dtype=torch.bool))


# --------------------------------------------------------------------------------------------- config
def test_config_lists_tuples_and_validation():
    c = ConvNeXtConfig.from_dict(json.loads(json.dumps(ConvNeXtConfig(**SMALL).to_dict())))
    assert c == ConvNeXtConfig(**SMALL) and c.depths == (1, 1, 2, 1) and isinstance(c.dims, tuple)
    assert c.kind == "convnext" and c.embed_dim == 128 and c.patch_size == 32 and c.num_registers == 0
    with pytest.raises(ConfigError, match="unknown backbone option"):
        c.replace(depth=3)
    for bad in (dict(depths=[1, 1, 1]), dict(dims=[16, 32, 0, 64]), dict(drop_path_rate=1.0), dict(depths="1111")):
        with pytest.raises(ConfigError, match="invalid ConvNeXt"):
            ConvNeXtConfig(**bad)


def test_create_backbone_with_overrides_and_init():
    model = dinokit.create_backbone("dinov3_convnext_tiny", depths=[1, 1, 1, 1], drop_path_rate=0.3)
    assert isinstance(model, ConvNeXt) and model.config.depths == (1, 1, 1, 1) and model.config.dims[-1] == 768
    assert model.embed_dim == model.num_features == 768 and model.n_blocks == 4 and model.num_registers == 0
    assert [b.drop_path for b in model.blocks] == np.linspace(0, 0.3, 4).tolist()
    assert all(torch.equal(b.gamma, torch.full_like(b.gamma, 1e-6)) for b in model.blocks)
    assert all(not m.bias.any() for m in model.modules() if isinstance(m, torch.nn.Linear | torch.nn.Conv2d))
    assert model.blocks[0].pwconv1.weight.std().item() == pytest.approx(0.02, rel=0.1)
    with pytest.raises(ConfigError, match="unknown backbone option"):
        dinokit.create_backbone("dinov3_convnext_test", depth=3)
    assert isinstance(dinokit.models.factory.backbone_from_spec("random:dinov3_convnext_test"), ConvNeXt)


def _closed_form(depths, dims, in_chans=3) -> int:
    """Parameters counted by hand: stem conv + norm, downsampling norm + conv, blocks, final norm."""
    n = in_chans * dims[0] * 16 + dims[0] + 2 * dims[0]
    n += sum(2 * dims[i - 1] + 4 * dims[i - 1] * dims[i] + dims[i] for i in range(1, 4))
    n += sum(d * (8 * d + 58) for depth, d in zip(depths, dims) for _ in range(depth))  # dw 50d, LN 2d, MLP, γ
    return n + 2 * dims[-1]


@pytest.mark.parametrize(
    "name,card", [("tiny", 29), ("small", 50), ("base", 89), ("large", 198)]
)  # fmt: skip
def test_released_parameter_counts(name, card):
    """The model card's figures (29 / 50 / 89 / 198 M) are ConvNeXt's own counts with its ImageNet-1k classifier
    (Liu et al. 2022: 28.6 / 50.2 / 88.6 / 197.8 M); the released backbones have no classifier."""
    kw = CONVNEXT_PRESETS[f"dinov3_convnext_{name}"]
    with torch.device("meta"):
        model = dinokit.create_backbone(f"dinov3_convnext_{name}")
    n = sum(p.numel() for p in model.parameters())
    assert n == _closed_form(kw["depths"], kw["dims"])
    expected = {"tiny": 27_820_128, "small": 49_454_688, "base": 87_566_464, "large": 196_230_336}[name]
    assert n == expected
    with_classifier = n + 1000 * kw["dims"][-1] + 1000
    assert abs(with_classifier / 1e6 - card) <= 0.5  # the card rounds to the nearest million


# -------------------------------------------------------------------------------------------- training
def test_trainable_backbone_protocol():
    model = _random(depths=[2, 1, 3, 1])
    assert isinstance(model, TrainableBackbone)
    names = [n for n, _ in model.named_parameters()]
    in_forward_order = [n for i in range(4) for part in ("downsample_layers", "stages") for n in names
                        if n.startswith(f"{part}.{i}.")] + ["norm.weight", "norm.bias"]  # fmt: skip
    assert sorted(in_forward_order) == sorted(names)
    ids = [model.layer_id(name) for name in in_forward_order]
    assert ids == sorted(ids) and set(ids) == set(range(model.num_layers))
    assert ids[0] == 0 and ids[-1] == model.num_layers - 1 == 2 + 7 - 1
    assert model.layer_id("downsample_layers.0.1.weight") == 0
    assert model.layer_id("stages.0.0.dwconv.weight") == 1
    assert model.layer_id("downsample_layers.2.1.weight") == model.layer_id("stages.2.0.gamma") == 4
    assert model.layer_id("stages.3.0.gamma") == 7 and model.layer_id("norm.weight") == 8
    units = model.fsdp_units()
    assert len(units) == 4 + 7 and units[0] is model.downsample_layers[0] and units[1] is model.stages[0][0]


def test_activation_checkpointing_gives_the_same_gradients():
    x = _x(64, 64, batch=4)

    def grads(checkpointing: bool) -> dict[str, torch.Tensor]:
        model = _random(drop_path_rate=0.5).train()
        model.set_activation_checkpointing(checkpointing)
        torch.manual_seed(7)  # the same drop-path draws in both runs (and in the recomputation)
        out = model.forward_features(x)
        (out.cls.square().sum() + out.patches.sum()).backward()
        return {n: p.grad for n, p in model.named_parameters()}

    plain, ckpt = grads(False), grads(True)
    assert all(g is not None for g in plain.values())
    for name in plain:
        torch.testing.assert_close(ckpt[name], plain[name], rtol=0, atol=0, msg=name)


# ---------------------------------------------------------------------------------------------- formats
@pytest.mark.parametrize("fmt,name", [("dinokit", "folder"), ("dinokit", "m.safetensors"), ("official", "m.pth"),
                                      ("hf", "hf")])  # fmt: skip
def test_save_load_roundtrip(fmt, name, tmp_path):
    model = _random(depths=[2, 1, 3, 1])  # not a preset
    path = dinokit.save_backbone(model, tmp_path / name, format=fmt)
    if fmt == "official":
        sd = torch.load(path, weights_only=True)
        assert torch.equal(sd["norms.3.weight"], sd["norm.weight"]) and "stages.2.2.gamma" in sd
    if fmt == "dinokit" and name == "folder":
        assert json.loads((path / "config.json").read_text())["kind"] == "convnext"
    loaded = dinokit.load_backbone(path)
    assert isinstance(loaded, ConvNeXt) and loaded.config.depths == (2, 1, 3, 1)
    x = _x(97, 131)
    with torch.inference_mode():
        assert torch.equal(loaded(x), model(x))
        assert torch.equal(loaded.forward_features(x).patches, model.forward_features(x).patches)


def test_architecture_inferred_for_any_size():
    model = ConvNeXt(ConvNeXtConfig(in_chans=4, depths=[2, 0, 1, 3], dims=[8, 24, 40, 56]))
    config = infer_config(official_to_dinokit(dinokit_to_official(model.state_dict(), model.config)))
    assert config == model.config and match_preset(config) is None
    no_gamma = ConvNeXt(ConvNeXtConfig(**SMALL, layerscale_init=None))
    assert infer_config(no_gamma.state_dict()).layerscale_init is None


@pytest.mark.parametrize("name", CONVNEXT_RELEASED)
def test_released_presets_recognised_from_shapes(name):
    with torch.device("meta"):
        model = dinokit.create_backbone(name)
    sd = dinokit_to_official(model.state_dict(), model.config)
    assert match_preset(infer_config(official_to_dinokit(sd))) == name


def test_released_duplicate_final_norm(tmp_path):
    model = _random()
    sd = dinokit_to_official(model.state_dict(), model.config)
    sd = {k: v.clone() for k, v in sd.items()}  # separate tensors, as after any copy of a released file
    torch.save(sd, tmp_path / "released.pth")
    assert torch.equal(dinokit.load_backbone(tmp_path / "released.pth")(_x(64, 64)), model(_x(64, 64)))
    sd["norms.3.bias"] = sd["norms.3.bias"] + 1
    torch.save(sd, tmp_path / "edited.pth")
    with pytest.raises(CheckpointError, match=r"norms\.3\.bias differs from norm\.bias"):
        dinokit.load_backbone(tmp_path / "edited.pth")


def test_strict_loading_and_cli_info(tmp_path, capsys):
    model = _random()
    sd = dinokit_to_official(model.state_dict(), model.config)
    torch.save(sd, tmp_path / "ok.pth")
    assert cli_main(["info", str(tmp_path / "ok.pth")]) == 0
    printed = capsys.readouterr().out
    assert "ConvNeXt" in printed and "16 / 32 / 64 / 128" in printed and "1 / 1 / 2 / 1" in printed
    assert "none (custom architecture)" in printed
    del sd["stages.1.0.pwconv2.bias"]
    sd["stages.1.0.extra"] = torch.zeros(1)
    torch.save(sd, tmp_path / "broken.pth")
    with pytest.raises(CheckpointError, match=r"missing \(1\): stages\.1\.0\.pwconv2\.bias") as e:
        dinokit.load_backbone(tmp_path / "broken.pth")
    assert "unexpected (1): stages.1.0.extra" in str(e.value)
    assert cli_main(["info", str(tmp_path / "broken.pth")]) == 2
    assert "missing (1): stages.1.0.pwconv2.bias" in capsys.readouterr().err
    with pytest.raises(CheckpointError, match=r"unexpected \(9\): stages\.2\.1\."):  # the test preset: depths 1/1/1/1
        dinokit.load_backbone(tmp_path / "ok.pth", preset="dinov3_convnext_test")
    with pytest.raises(CheckpointError, match=r"mis-shaped.*downsample_layers\.0\.0\.weight"):
        dinokit.load_backbone(tmp_path / "ok.pth", preset="dinov3_convnext_tiny")


def test_cli_info_names_a_released_preset(tmp_path, capsys, monkeypatch):
    # a released-size file is 100+ MB: let the test size stand in for a released preset
    monkeypatch.setattr(dinokit.models.convnext, "CONVNEXT_RELEASED", ["dinov3_convnext_test"])
    model = dinokit.create_backbone("dinov3_convnext_test")
    torch.save(dinokit_to_official(model.state_dict(), model.config), tmp_path / "m.pth")
    assert cli_main(["info", str(tmp_path / "m.pth")]) == 0
    assert "dinov3_convnext_test" in capsys.readouterr().out


def test_training_checkpoint_wrappers(tmp_path):
    model = _random()
    sd = model.state_dict()
    full = {"teacher.backbone." + k: v for k, v in sd.items()} | {"student.backbone." + k: v + 1 for k, v in sd.items()}
    full |= {"teacher.dino_head.mlp.0.weight": torch.zeros(3, 3)}
    torch.save({"model": full, "iteration": 3}, tmp_path / "train.pth")
    torch.save({"teacher": {"backbone." + k: v for k, v in sd.items()}}, tmp_path / "teacher.pth")
    x = _x(64, 64)
    for name in ("train.pth", "teacher.pth"):
        assert torch.equal(dinokit.load_backbone(tmp_path / name)(x), model(x))
