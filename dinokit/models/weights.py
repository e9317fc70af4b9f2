"""Checkpoint formats: reading any supported file, naming conventions, and rebuilding the architecture.

Supported sources (fetched from the network only when the user names an http(s) URL or an `hf:<org>/<name>` id,
through the caches of `hub.py`):
- released DINOv2 `.pth` files (`pos_embed`, `register_tokens`, `blocks.{i}.…`) and DINOv3 ones
  (`storage_tokens`, `rope_embed.periods`, `attn.qkv.bias_mask`, `local_cls_norm` …);
- training checkpoints (a `.pt` / `.pth` with a `<name>.sha256` side file is checked against it first);
- released training checkpoints: the teacher backbone under `teacher.backbone.` (or `{"teacher": …}` with
  `backbone.`), DINOv2 block chunks `blocks.{chunk}.{i}` flattened to `blocks.{i}`;
- dinokit files: a folder with `config.json` + `model.safetensors`, or one `.safetensors` file whose
  metadata holds the config; the weights are checked against the digest saved with them (`tensors_sha256`);
- Hugging Face model folders (`config.json` + `model.safetensors` / `pytorch_model.bin`, sharded or not); a
  `preprocessor_config.json` with other statistics than ImageNet's (the satellite models) sets the config's mean/std.
- released DINOv3 ConvNeXt `.pth` files (`downsample_layers.{i}.…`, `stages.{s}.{j}.…`, `norm.*` and its copy
  `norms.3.*`) and any of the wrappers above around them.

dinokit's own parameter names are the released DINOv2 names plus the DINOv3 buffers; the only renaming for
the released DINOv3 layout is `storage_tokens` ↔ `register_tokens`. A ConvNeXt keeps the released names; its
final norm is stored once (`norm.*`): the released copy `norms.3.*` is dropped on reading when it equals
`norm.*` (refused when it differs) and written back for the released layout. A dinokit file records its
backbone kind (`"kind"`, "vit" when absent) next to the config.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError, ConfigError
from ..integrity import DamagedFile, check_file, tensors_sha256
from . import hub
from .architectures import ARCHITECTURES
from .config import ViTConfig
from .convert_hf import hf_to_dinokit, is_hf_state_dict, released_head_dim
from .convnext import N_STAGES, ConvNeXt, ConvNeXtConfig

Tensor = torch.Tensor
StateDict = dict[str, Tensor]
BackboneConfig = ViTConfig | ConvNeXtConfig

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
SATELLITE_MEAN, SATELLITE_STD = (0.430, 0.411, 0.296), (0.213, 0.156, 0.143)
LICENCES = {"dinov2": "Apache-2.0 (DINOv2)", "dinov3": "DINOv3 License (custom; see the model card)"}


# ------------------------------------------------------------------------------------------------ reading
def read_checkpoint(source: str | os.PathLike | StateDict) -> tuple[StateDict, BackboneConfig | None, dict]:
    """Read a source into (dinokit-named backbone state dict, stored config or None, info).

    `info` holds `format` ("dinokit" | "official" | "hf" | "state_dict") and, for files, `path`."""
    if isinstance(source, dict):
        sd, config, info = dict(source), None, {"format": "state_dict"}
    else:
        sd, config, info = _read_path(str(source))
    if info["format"] in ("dinokit",):
        return sd, config, info
    sd = _unwrap_training_checkpoint(sd)
    if is_hf_state_dict(sd):
        sd, hf_config = hf_to_dinokit(sd, info.pop("hf_config", None))
        extra = info.pop("hf_extra", {})
        if extra and hf_config is not None:
            hf_config = hf_config.replace(extra={**hf_config.extra, **extra})
        info["format"] = "hf"
        return sd, hf_config, info
    if info["format"] == "state_dict":
        info["format"] = "official"
    return official_to_dinokit(sd), None, info


def _read_path(path: str) -> tuple[StateDict, BackboneConfig | None, dict]:
    if not path.strip():  # Path("") is the current folder: reading it would hide the mistake
        raise CheckpointError("the checkpoint path is empty; give a file or folder path, an http(s) URL or an hf: id")
    if path.startswith("hf:"):
        sd, config, info = _read_folder(hub.hf_snapshot(path[len("hf:") :]))
        return sd, config, info | {"path": path}  # the id says more than a cache folder (and names sat493m models)
    if path.startswith(("http://", "https://")):
        return _read_url(path)
    p = Path(path).expanduser()
    if not p.exists():
        hint = ""
        if any(path in arch.presets for arch in ARCHITECTURES.values()):
            hint = f'; {path!r} is a preset name: create_backbone("{path}", weights="official") loads its released file'
        raise CheckpointError(
            f"no checkpoint at {path!r} (a file or folder path, an explicit http(s) URL, or hf:<org>/<name>){hint}"
        )
    if p.is_dir():
        return _read_folder(p)
    if p.suffix == ".safetensors":
        sd, meta = _load_safetensors(p)
        if meta.get("format") == "dinokit":
            try:
                fields = json.loads(meta.get("backbone", ""))
            except ValueError:  # damaged metadata: stored_config names what is missing
                fields = None
            config = stored_config(meta.get("kind", "vit"), fields, p)
            _check_tensors(sd, meta.get("tensors_sha256"), p)
            return sd, config, {"format": "dinokit", "path": str(p)}
        return sd, None, {"format": "state_dict", "path": str(p)}
    return _torch_load(p), None, {"format": "state_dict", "path": str(p)}


def _read_url(url: str) -> tuple[StateDict, BackboneConfig | None, dict]:
    """A checkpoint at an http(s) URL, through the hub cache (`hub.download`); its info names the cached file, not
    the URL (a signed link's signature stays out of configs and logs)."""
    fresh = not hub.url_cache_path(url).is_file()
    local = hub.download(url)
    try:
        return _read_path(str(local))
    except CheckpointError as e:
        if fresh:  # e.g. an error page saved in place of weights: kept, it would stand in for the file next time
            local.unlink(missing_ok=True)
        raise CheckpointError(f"downloaded {hub.shown(url)}, but {e}") from None


def _load_safetensors(p: Path) -> tuple[StateDict, dict[str, str]]:
    """The tensors and metadata of a safetensors file."""
    from safetensors import safe_open

    try:
        with safe_open(str(p), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, f.metadata() or {}  # noqa: SIM118 (not a mapping)
    except Exception as e:  # safetensors raises its own error type for a damaged or truncated file
        raise CheckpointError(f"could not read {p} as a safetensors file ({e})") from None


def _torch_load(p: Path) -> Any:
    check_file(p)  # a training checkpoint's side file `<name>.sha256`, where there is one
    with open(p, "rb") as f:
        magic = f.read(2)
    if magic[:2] != b"PK" and magic[:1] != b"\x80":  # torch.save writes a zip archive (or, before 1.6, a pickle)
        raise CheckpointError(f"{p} is not a PyTorch checkpoint (neither a zip archive nor a pickle)")
    try:
        return torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # pickles with arbitrary objects are refused by weights_only=True on purpose
        # torch's message is a page of advice to turn the safety off; keep only the line that names the cause
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        cause = next((line for line in lines if "Unpickler error" in line or line.startswith("Unsupported")), None)
        cause = (cause or (lines[0] if lines else type(e).__name__)).split(". ")[0]
        raise CheckpointError(
            f"could not read {p} as a weights-only PyTorch checkpoint ({cause}); if it holds other Python objects "
            "(training state, argparse options), save its state_dict alone"
        ) from None


def _read_folder(p: Path) -> tuple[StateDict, BackboneConfig | None, dict]:
    cfg_path = p / "config.json"
    if not cfg_path.exists():
        raise CheckpointError(f"{p} is a folder without config.json (expected a dinokit or HF model folder)")
    try:
        cfg = json.loads(cfg_path.read_text())
    except ValueError as e:  # not JSON, or not UTF-8 text
        raise CheckpointError(f"{cfg_path} is not valid JSON ({e}); restore it from the model's source") from None
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{cfg_path} holds no JSON object; restore it from the model's source")
    if cfg.get("format") == "dinokit":
        config = stored_config(cfg.get("kind", "vit"), cfg.get("backbone"), cfg_path)
        if not (p / "model.safetensors").is_file():
            raise CheckpointError(f"{p} is a dinokit model folder without model.safetensors (its weights); copy "
                                  "the whole folder that save_backbone or `dinokit convert` wrote")  # fmt: skip
        sd, _ = _load_safetensors(p / "model.safetensors")
        _check_tensors(sd, cfg.get("tensors_sha256"), p / "model.safetensors")
        return sd, config, {"format": "dinokit", "path": str(p)}
    if "model_type" not in cfg:
        raise CheckpointError(f"{cfg_path} is neither a dinokit nor a Hugging Face config")
    info = {"format": "hf", "path": str(p), "hf_config": cfg, "hf_extra": _hf_normalization(p)}
    return _read_hf_weights(p), None, info


def _hf_normalization(p: Path) -> dict[str, list[float]]:
    """The mean / std of an HF folder's `preprocessor_config.json` when they are not ImageNet's (the satellite
    models'), as config `extra` fields; {} otherwise, or when the file is absent or unreadable (it only informs)."""
    try:
        cfg = json.loads((p / "preprocessor_config.json").read_text())
        mean, std = [float(v) for v in cfg["image_mean"]], [float(v) for v in cfg["image_std"]]
    except (OSError, ValueError, KeyError, TypeError):
        return {}
    if len(mean) != 3 or len(std) != 3:
        return {}
    if max(abs(a - b) for a, b in zip(mean + std, IMAGENET_MEAN + IMAGENET_STD)) < 1e-6:
        return {}  # ImageNet's, the default: nothing to note
    return {"mean": mean, "std": std}


def _check_tensors(sd: StateDict, expected: str | None, where: Path) -> None:
    """A dinokit file's weights against the digest saved with them (files from before digests have none)."""
    if expected and tensors_sha256(sd) != expected:
        raise DamagedFile(f"{where} is damaged: its weights differ from the SHA-256 saved with them (the file was "
                          "changed on disk or in a copy); use another copy")  # fmt: skip


def stored_config(kind: str, fields: Any, where: Path) -> BackboneConfig:
    """The config a dinokit file stored, rebuilt with the config class of its backbone kind."""
    if not isinstance(fields, dict):
        raise CheckpointError(f"{where} holds no backbone config (a `backbone` object of architecture fields)")
    if kind not in ARCHITECTURES:
        raise CheckpointError(f"{where} holds a backbone of unknown kind {kind!r} (known: {sorted(ARCHITECTURES)})")
    try:
        return ARCHITECTURES[kind].config.from_dict(fields)
    except ConfigError as e:
        raise CheckpointError(f"{where}: the stored {kind} config is invalid ({e})") from None


def _read_hf_weights(p: Path) -> StateDict:
    if (p / "model.safetensors").exists():
        return _load_safetensors(p / "model.safetensors")[0]
    for index_name, loader in (
        ("model.safetensors.index.json", lambda f: _load_safetensors(f)[0]),
        ("pytorch_model.bin.index.json", _torch_load),
    ):
        if (p / index_name).exists():
            shards = sorted(set(json.loads((p / index_name).read_text())["weight_map"].values()))
            sd: StateDict = {}
            for shard in shards:
                sd.update(loader(p / shard))
            return sd
    if (p / "pytorch_model.bin").exists():
        return _torch_load(p / "pytorch_model.bin")
    raise CheckpointError(f"{p} holds a config.json but no model.safetensors or pytorch_model.bin")


def _unwrap_training_checkpoint(sd: dict) -> StateDict:
    """Find the (teacher) backbone inside a training checkpoint; flatten DINOv2 block chunks."""
    for key in ("teacher", "model", "state_dict", "module"):
        if isinstance(sd.get(key), dict) and not isinstance(sd.get(key), Tensor):
            sd = sd[key]
    for prefix in ("teacher.backbone.", "backbone.", "module.backbone.", "module."):
        if any(k.startswith(prefix) for k in sd) and not any(k.startswith("embeddings.") for k in sd):
            sd = {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}
            break
    non_tensors = [k for k, v in sd.items() if not isinstance(v, Tensor)]
    if non_tensors:
        raise CheckpointError(f"not a backbone state dict: non-tensor entries {non_tensors[:5]}")
    return {re.sub(r"^blocks\.\d+\.(\d+)\.", r"blocks.\1.", k): v for k, v in sd.items()}


# ------------------------------------------------------------------------------------------------ naming
def official_to_dinokit(sd: StateDict) -> StateDict:
    sd = {("register_tokens" if k == "storage_tokens" else k): v for k, v in sd.items()}
    for suffix in ("weight", "bias"):  # a released ConvNeXt lists its final norm twice: keep one, if they agree
        copy, final = f"norms.{N_STAGES - 1}.{suffix}", f"norm.{suffix}"
        if copy in sd and final in sd:
            a, b = sd[copy], sd[final]
            same = a is b or (a.shape == b.shape and (a.is_meta or b.is_meta or torch.equal(a, b)))  # meta: no values
            if not same:
                raise CheckpointError(
                    f"this ConvNeXt checkpoint holds two different final norms: {copy} differs from {final} (in "
                    "released files both name the same LayerNorm); the file was edited or assembled wrongly"
                )
            del sd[copy]
    return sd


def dinokit_to_official(sd: StateDict, config: BackboneConfig) -> StateDict:
    """dinokit names → the released layout of the model's generation (and kind)."""
    if config.kind == "convnext":  # the released module registers its final norm a second time, as `norms.3`
        last = N_STAGES - 1
        return dict(sd) | {f"norms.{last}.{k}": sd[f"norm.{k}"] for k in ("weight", "bias")}
    if config.generation == "dinov3":
        return {("storage_tokens" if k == "register_tokens" else k): v for k, v in sd.items()}
    return dict(sd)


# ---------------------------------------------------------------------------------------------- inference
def normalization_of(source_name: str) -> dict[str, list[float]]:
    """Config `extra` fields for the input statistics a file's name implies: the satellite mean / std for the
    SAT-493M models (their names say `sat493m`), none (ImageNet's, the default) otherwise."""
    if "sat493m" in Path(source_name).name.lower():
        return {"mean": list(SATELLITE_MEAN), "std": list(SATELLITE_STD)}
    return {}


def infer_config(sd: StateDict, source_name: str = "") -> BackboneConfig:
    """Rebuild the architecture from a dinokit-named state dict's keys and shapes.

    What shapes cannot tell comes from the generation: DINOv2 uses head dim 64 and LayerNorm eps 1e-6,
    DINOv3 eps 1e-5 and a head dim read from `rope_embed.periods` (d/4 entries). The normalisation constants
    are the satellite ones when the file name says `sat493m`. ConvNeXts: see `infer_convnext_config`."""
    if any(k.startswith(("downsample_layers.", "stages.")) for k in sd):
        return infer_convnext_config(sd, source_name)
    required = ("cls_token", "patch_embed.proj.weight", "norm.weight", "blocks.0.norm1.weight")
    missing = [k for k in required if k not in sd]
    if missing:
        raise CheckpointError(
            f"cannot recognise a DINOv2/DINOv3 backbone: missing {missing}; first keys: {list(sd)[:8]}"
        )
    D = sd["cls_token"].shape[-1]
    proj = sd["patch_embed.proj.weight"]  # [D, C, p, p]
    depth = 1 + max(int(m.group(1)) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k)))
    learned = "pos_embed" in sd
    generation = "dinov2" if learned else "dinov3"
    if "rope_embed.periods" in sd:
        head_dim = 4 * sd["rope_embed.periods"].numel()
    else:
        head_dim = released_head_dim(D)
    b = "blocks.0."
    if b + "mlp.fc1.weight" in sd:
        ffn, hidden = "mlp", sd[b + "mlp.fc1.weight"].shape[0]
    elif b + "mlp.w12.weight" in sd:
        ffn, hidden = "swiglu_packed", sd[b + "mlp.w12.weight"].shape[0] // 2
    elif b + "mlp.w1.weight" in sd:
        ffn, hidden = "swiglu", sd[b + "mlp.w1.weight"].shape[0]
    else:
        raise CheckpointError("cannot recognise the feed-forward layer (no fc1, w12 or w1 weights in block 0)")
    registers = sd["register_tokens"].shape[1] if "register_tokens" in sd else 0
    kw: dict[str, Any] = dict(
        generation=generation,
        patch_size=proj.shape[-1],
        in_chans=proj.shape[1],
        embed_dim=D,
        depth=depth,
        num_heads=D // head_dim,
        ffn=ffn,
        ffn_hidden_dim=hidden,
        qkv_bias=b + "attn.qkv.bias" in sd,
        proj_bias=b + "attn.proj.bias" in sd,
        ffn_bias=any(b + f"mlp.{n}.bias" in sd for n in ("fc1", "w12", "w1")),
        mask_k_bias=b + "attn.qkv.bias_mask" in sd,
        layerscale_init=1e-5 if b + "ls1.gamma" in sd else None,
        num_registers=registers,
        cls_norm="cls_norm.weight" in sd,
        local_cls_norm="local_cls_norm.weight" in sd,
    )
    if learned:
        side = math.isqrt(sd["pos_embed"].shape[1] - 1)
        kw.update(pos_embed="learned", pos_grid=side, norm_eps=1e-6)
        kw["pos_interpolation"] = "antialias" if registers else "legacy"
    else:
        kw.update(pos_embed="rope", rope_base=100.0, rope_rescale=2.0, norm_eps=1e-5)
    kw["extra"] = normalization_of(source_name)
    return ViTConfig(**kw)


def infer_convnext_config(sd: StateDict, source_name: str = "") -> ConvNeXtConfig:
    """A ConvNeXt's architecture from its tensors, for any sizes: the input channels and `dims` from the stem and
    downsampling convolutions, `depths` from the block indices of each stage, γ from its presence; the norm eps
    is the released 1e-6. The state dict is then checked against that architecture (strict, every problem
    named), so a file with a missing or stray tensor is refused here already, not only when loaded."""
    convs = ["downsample_layers.0.0.weight"] + [f"downsample_layers.{i}.1.weight" for i in range(1, N_STAGES)]
    missing = [k for k in [*convs, "norm.weight"] if k not in sd]
    if missing:
        raise CheckpointError(
            f"cannot recognise a DINOv3 ConvNeXt backbone: missing {missing}; first keys: {list(sd)[:8]}"
        )
    stem = sd[convs[0]]  # [dims[0], C, 4, 4]
    depths = [0] * N_STAGES
    for k in sd:
        if (m := re.match(r"stages\.(\d+)\.(\d+)\.", k)) and int(m.group(1)) < N_STAGES:
            depths[int(m.group(1))] = max(depths[int(m.group(1))], int(m.group(2)) + 1)
    has_gamma = any(re.match(r"stages\.\d+\.\d+\.gamma$", k) for k in sd) or not sum(depths)
    kw: dict[str, Any] = dict(
        generation="dinov3",
        in_chans=stem.shape[1],
        depths=depths,
        dims=[sd[k].shape[0] for k in convs],
        layerscale_init=1e-6 if has_gamma else None,
        norm_eps=1e-6,
    )
    kw["extra"] = normalization_of(source_name)
    config = ConvNeXtConfig(**kw)
    with torch.device("meta"):
        expected = ConvNeXt(config).state_dict()
    check_state_dict(expected, sd)
    return config


# ------------------------------------------------------------------------------------------- strict load
def check_state_dict(expected: StateDict, sd: StateDict, what: str = "checkpoint") -> None:
    """Raise one CheckpointError naming every missing, unexpected and mis-shaped key."""
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    misshaped = [
        f"{k}: checkpoint {list(sd[k].shape)} vs model {list(expected[k].shape)}"
        for k in expected
        if k in sd and sd[k].shape != expected[k].shape
    ]
    if not (missing or unexpected or misshaped):
        return

    def _list(name: str, items: list[str]) -> str:
        more = f" … and {len(items) - 12} more" if len(items) > 12 else ""
        return f"\n  {name} ({len(items)}): " + ", ".join(items[:12]) + more if items else ""

    raise CheckpointError(
        f"the {what} does not fit the model architecture:"
        + _list("missing", missing)
        + _list("unexpected", unexpected)
        + _list("mis-shaped", misshaped)
        + "\nIf you passed architecture overrides, drop them to let dinokit infer the architecture."
    )
