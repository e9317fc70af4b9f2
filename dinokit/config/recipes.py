"""The training recipes shipped inside the package (`dinokit/recipes/`, also reachable as `configs/` in a
clone), found by path or by name, and the loading of a `dinokit train` configuration from one.

`dinokit train tiny_cpu …`, `dinokit train pretrain/tiny_cpu …` and `dinokit train configs/pretrain/tiny_cpu.yaml
…` name the same file; a path that exists is always taken as it is, so a user's own YAML files work the same.

Stages (`init.run=RUN_DIR`): the earlier run's resolved `config.yaml` takes the place of the defaults, the
recipe and the command line override it. So a stage recipe (configs/stages/gram.yaml) holds only what the stage
changes, the data and the architecture come from the run, and changing the architecture is refused.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import ConfigError
from .dinotxt import DinoTxtRunConfig
from .machinery import load_config, parse_overrides, read_yaml, to_dict
from .schema import PretrainConfig

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
# backbone options that change training, not the architecture (a stage may change them)
TRAINING_ONLY = ("drop_path_rate", "drop_path_uniform", "rope_shift", "rope_jitter", "rope_rescale")


def recipe_names() -> list[str]:
    """Every shipped recipe as `folder/name` (e.g. `pretrain/tiny_cpu`)."""
    return sorted(str(p.relative_to(RECIPES).with_suffix("")) for p in RECIPES.rglob("*.yaml"))


def find_recipe(name: str | os.PathLike) -> Path:
    """An existing YAML file, or the shipped recipe with this name (`tiny_cpu`, `stages/gram`, or a
    `configs/….yaml` path outside a clone)."""
    path = Path(name)
    if path.is_file():
        return path
    stem = path.name.removesuffix(".yaml").removesuffix(".yml")
    folder = path.parent.name if path.parent.name not in ("", "configs", "recipes") else None
    found = [p for p in RECIPES.rglob(f"{stem}.yaml") if folder is None or p.parent.name == folder]
    if folder is None and len(found) > 1:  # a bare name means the pretraining recipe (`tiny_cpu`), if there is one
        found = [p for p in found if p.parent.name == "pretrain"] or found
    if len(found) == 1:
        return found[0]
    names = ", ".join(recipe_names())
    if not found:
        raise ConfigError(f"config {name} is neither a YAML file nor a shipped recipe; recipes: {names}")
    raise ConfigError(f"config {name} names several recipes ({', '.join(map(str, found))}); add the folder, e.g. "
                      f"{found[0].parent.name}/{stem}")  # fmt: skip


def load_train_config(config: str | os.PathLike | None, overrides=()) -> PretrainConfig | DinoTxtRunConfig:
    """defaults (or, with `init.run`, that run's configuration) ← recipe ← `key=value` overrides. A recipe or
    command line with a top-level `dinotxt` section is a text-alignment run (`DinoTxtRunConfig`)."""
    path = find_recipe(config) if config is not None else None
    if _is_dinotxt(path, overrides):
        return load_config(DinoTxtRunConfig, path, overrides)
    run = _init_run(path, overrides)
    if run is None:
        return load_config(PretrainConfig, path, overrides)
    saved = Path(run) / "config.yaml"
    if not saved.is_file():
        raise ConfigError(f"init.run={run} is not a dinokit run folder (it has no config.yaml)")
    base = {k: v for k, v in read_yaml(saved).items() if k not in ("output_dir", "init")}
    cfg = load_config(PretrainConfig, path, overrides, base=base)
    if Path(cfg.output_dir).resolve() == Path(run).resolve():
        raise ConfigError(f"init.run={run} is also the output_dir: train the stage into a new folder")
    changed = _architecture_changes(base.get("model", {}), to_dict(cfg.model))
    if changed:
        raise ConfigError(
            f"init.run={run} trained another architecture than this configuration asks for ({', '.join(changed)} "
            "differ): a stage continues the run's model, so leave model.* as the run had it"
        )
    return cfg


def _is_dinotxt(path: Path | None, overrides) -> bool:
    if any(keys[0] == "dinotxt" for keys, _ in parse_overrides(overrides)):
        return True
    return path is not None and "dinotxt" in read_yaml(path)


def _init_run(path: Path | None, overrides) -> str | None:
    """`init.run` as the command line or else the recipe sets it (before anything is merged)."""
    for keys, value in reversed(parse_overrides(overrides)):
        if keys == ["init", "run"]:
            return value
        if keys == ["init"] and isinstance(value, dict):
            return value.get("run")
    init = read_yaml(path).get("init") if path is not None else None
    return init.get("run") if isinstance(init, dict) else None


def _architecture_changes(before: dict, after: dict) -> list[str]:
    def arch(model: dict) -> dict:
        options = {k: v for k, v in (model.get("backbone_options") or {}).items() if k not in TRAINING_ONLY}
        return {"model.backbone": model.get("backbone"), "model.backbone_options": options,
                "model.dino_head": model.get("dino_head"), "model.ibot_head": model.get("ibot_head")}  # fmt: skip

    a, b = arch(before), arch(after)
    return [k for k in a if a[k] != b[k]]
