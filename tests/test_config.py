"""Typed configuration: strict keys and types, YAML + overrides merging, loss-term sections, validation."""

from pathlib import Path

import pytest

from dinokit.cli import main
from dinokit.config import ConfigError, PretrainConfig, load_config, save_config

PRESETS = Path(__file__).parents[1] / "configs" / "pretrain"


def test_defaults_yaml_and_overrides_merge(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("train: {steps: 10}\ncrops: {local_number: 2}\n")
    cfg = load_config(PretrainConfig, y, ["train.steps=20", "optim.min_lr=1e-5", "crops.global_scale=[0.4, 1.0]"])
    assert cfg.train.steps == 20 and cfg.crops.local_number == 2 and cfg.train.batch_size == 64  # default kept
    assert cfg.optim.min_lr == 1e-5  # "1e-5" (a string to PyYAML) is accepted for a float
    assert cfg.crops.global_scale == (0.4, 1.0)


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.stepz=3", "unknown key(s) 'stepz'"),
        ("train.steps=ten", "train.steps: expected int"),
        ("train.compile=1", "train.compile: expected bool"),
        ("crops.global_scale=[0.4]", "expected a list of 2 values"),
        ("teacher.target=kmeans", "expected one of 'centering', 'sinkhorn_knopp'"),
        ("losses.dino.weight={peak: 1, shape: wavy}", "losses.dino.weight.shape"),
        ("train.steps.x=3", "train.steps is not a section"),
        ("nonsense", "not of the form key.sub=value"),
    ],
)
def test_unknown_keys_and_wrong_types_are_clear_errors(override, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        load_config(PretrainConfig, None, [override])


def test_loss_terms_left_out_of_the_yaml_are_off(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("losses:\n  dino: {}\n  koleo: {weight: 0.2}\n")
    cfg = load_config(PretrainConfig, y)
    assert set(cfg.losses.enabled()) == {"dino", "koleo"} and cfg.losses.koleo.weight == 0.2
    cfg = load_config(PretrainConfig, y, ["losses.koleo=null", "losses.ibot.weight=0.5"])
    assert set(cfg.losses.enabled()) == {"dino", "ibot"} and cfg.losses.ibot.weight == 0.5
    assert set(load_config(PretrainConfig).losses.enabled()) == {"dino", "ibot", "koleo"}  # no section: defaults


def test_weight_schedules_and_optional_sections():
    cfg = load_config(PretrainConfig, None, ["losses.koleo.weight={peak: 0.1, warmup_steps: 5}", "model.ibot_head={}"])
    assert cfg.losses.koleo.weight.peak == 0.1 and cfg.losses.koleo.weight.warmup_steps == 5
    assert cfg.model.ibot_head.n_prototypes == 65536


def test_validation_catches_inconsistent_values():
    cfg = load_config(PretrainConfig, None, ["data.path=x", "model.backbone=dinov2_vits14", "crops.local_size=96"])
    with pytest.raises(ConfigError, match="not a multiple of the patch size 14"):
        cfg.validate()
    cfg = load_config(PretrainConfig, None, ["data.path=x", "model.backbone=dinov3_vits16", "crops.local_size=8"])
    with pytest.raises(ConfigError, match="crops.local_size=8 is smaller than one 16×16 patch"):
        cfg.validate()
    nonsense = ["seed=-1", "optim.base_lr=-1", "teacher.momentum=2", "teacher.temp=0", "optim.layerwise_decay=0",
                "model.dino_head={n_prototypes: 0}", "losses.koleo.weight={peak: -1}", "optim.betas=[0.9, 1.0]"]
    with pytest.raises(ConfigError) as e:  # each would train without an error, to nonsense or NaN
        load_config(PretrainConfig, None, ["data.path=x", *nonsense]).validate()
    for override in nonsense:
        assert override.split("=")[0].split("{")[0] in str(e.value), override
    assert "losses.koleo.weight must be >= 0, got {peak: -1.0" in str(e.value)
    cfg = load_config(PretrainConfig, None, ["model.backbone_options={drop_path_rate: high}"])
    with pytest.raises(ConfigError, match="data.path is required") as e:
        cfg.validate()
    assert "drop_path_rate: expected float" in str(e.value)


def test_saved_config_loads_back_identically(tmp_path):
    cfg = load_config(PretrainConfig, PRESETS / "dinov2_vitl14.yaml", ["data.path=/data"])
    save_config(cfg, tmp_path / "config.yaml")
    assert load_config(PretrainConfig, tmp_path / "config.yaml") == cfg


@pytest.mark.parametrize("preset", sorted(p.name for p in PRESETS.glob("*.yaml")))
def test_presets_are_valid(preset):
    load_config(PretrainConfig, PRESETS / preset, ["data.path=/data"]).validate()


def test_cli_reports_config_errors_with_status_2(tmp_path, capsys):
    assert main(["train", str(PRESETS / "tiny_cpu.yaml"), "train.stepz=3"]) == 2
    err = capsys.readouterr().err
    assert "unknown key(s) 'stepz'" in err and "Traceback" not in err
    assert main(["train", str(tmp_path / "missing.yaml")]) == 2


def test_cli_reports_a_missing_data_folder_with_status_2(tmp_path, capsys):
    argv = ["train", str(PRESETS / "tiny_cpu.yaml"), f"data.path={tmp_path / 'nope'}", f"output_dir={tmp_path}"]
    assert main(argv) == 2
    assert "no such file or folder" in capsys.readouterr().err
