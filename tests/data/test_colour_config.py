"""`crops.colour`: the colour distortion of the multi-crop, as released by default and set from the config."""

import random

import pytest

from dinokit.config import ConfigError, PretrainConfig, from_dict
from dinokit.config.schema import ColourConfig
from dinokit.data.multicrop import MultiCrop


def plans(colour=None, n=200):
    mc = MultiCrop(global_size=32, local_number=2, local_size=16, colour=colour)
    rng = random.Random(0)
    return [v for _ in range(n) for v in mc.plan(64, 64, rng)]


def test_released_by_default_and_settable():
    views = plans()
    jittered = sum(v.jitter is not None for v in views) / len(views)
    grey = sum(v.gray for v in views) / len(views)
    assert abs(jittered - 0.8) < 0.05 and abs(grey - 0.2) < 0.05
    assert max(abs(v.jitter.hue) for v in views if v.jitter) <= 0.1
    strong = plans(ColourConfig(jitter_p=1.0, hue=0.5, saturation=0.9, grayscale_p=0.5))
    assert all(v.jitter is not None for v in strong)
    assert max(abs(v.jitter.hue) for v in strong) > 0.4
    assert abs(sum(v.gray for v in strong) / len(strong) - 0.5) < 0.05
    assert all(v.jitter is None and not v.gray for v in plans(ColourConfig(jitter_p=0, grayscale_p=0)))


def test_config_section_is_checked():
    cfg = from_dict(PretrainConfig, {"data": {"path": "x"}, "crops": {"colour": {"hue": 0.3, "grayscale_p": 0.4}}})
    assert cfg.crops.colour.hue == 0.3 and cfg.crops.colour.jitter_p == 0.8
    bad = from_dict(PretrainConfig, {"data": {"path": "x"}, "crops": {"colour": {"hue": 0.7}}})
    with pytest.raises(ConfigError, match=r"crops.colour.hue must be in \[0, 0.5\]"):
        bad.validate()
