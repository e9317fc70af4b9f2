"""Where released weights come from, fetched only when the caller names them.

- `weights="official"` (`official_weights`): the released file of a preset. DINOv2 files are public
  (`https://dl.fbaipublicfiles.com/dinov2/<model>/<file>`); DINOv3 files sit behind download links signed for each
  user, so dinokit knows their names (to find them in the cache) but not their addresses.
- an http(s) URL (`download`): saved in torch's hub cache, `torch.hub.get_dir()/checkpoints/` (moved by
  `TORCH_HOME`), under the file name of the URL's path — the released name, so the official loaders and dinokit
  share one copy, and a signed link's query (which expires) is not part of it. A name of the form
  `name-<hex>.ext` promises that the file's SHA-256 starts with `<hex>` (torch.hub's convention); the download is
  checked against it before it is kept.
- `hf:<org>/<name>[@revision]` (`hf_snapshot`): a Hugging Face Hub model, through `huggingface_hub` and its own
  cache and settings (`HF_HOME`, `HF_HUB_OFFLINE`, the token for gated models).

A file already in a cache is used without touching the network; nothing is fetched unless one of these is named.
"""

from __future__ import annotations

import re
import sys
import urllib.error
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urlparse

import torch

from ..errors import CheckpointError, require

DINOV2_BASE_URL = "https://dl.fbaipublicfiles.com/dinov2"
DINOV3_DOWNLOAD_PAGE = "https://ai.meta.com/resources/models-and-libraries/dinov3-downloads/"

# preset → released file name. `dinov3_vitl16plus` is left out: the official hub code names a file for it, but the
# model card does not list it among the released models.
RELEASED_FILES: dict[str, str] = {
    **{f"dinov2_vit{s}14": f"dinov2_vit{s}14_pretrain.pth" for s in "sblg"},
    **{f"dinov2_vit{s}14_reg4": f"dinov2_vit{s}14_reg4_pretrain.pth" for s in "sblg"},
    "dinov3_vits16": "dinov3_vits16_pretrain_lvd1689m-08c60483.pth",
    "dinov3_vits16plus": "dinov3_vits16plus_pretrain_lvd1689m-4057cbaa.pth",
    "dinov3_vitb16": "dinov3_vitb16_pretrain_lvd1689m-73cec8be.pth",
    "dinov3_vitl16": "dinov3_vitl16_pretrain_lvd1689m-8aa4cbdd.pth",
    "dinov3_vitl16_sat": "dinov3_vitl16_pretrain_sat493m-eadcf0ff.pth",
    "dinov3_vith16plus": "dinov3_vith16plus_pretrain_lvd1689m-7c1da9a5.pth",
    "dinov3_vit7b16": "dinov3_vit7b16_pretrain_lvd1689m-a955f4ea.pth",
    "dinov3_convnext_tiny": "dinov3_convnext_tiny_pretrain_lvd1689m-21b726bb.pth",
    "dinov3_convnext_small": "dinov3_convnext_small_pretrain_lvd1689m-296db49d.pth",
    "dinov3_convnext_base": "dinov3_convnext_base_pretrain_lvd1689m-801f2ba9.pth",
    "dinov3_convnext_large": "dinov3_convnext_large_pretrain_lvd1689m-61fa432d.pth",
}

_HASH_IN_NAME = re.compile(r"-([0-9a-f]+)\.")  # torch.hub's rule: `name-<hex>.ext`, first match

# What `hf:` fetches of a model repository: the configs and the weights as safetensors (one file or shards).
HF_FILES = ["config.json", "preprocessor_config.json", "model.safetensors", "model-*.safetensors",
            "model.safetensors.index.json"]  # fmt: skip


# ------------------------------------------------------------------------------------------ official files
def cache_path(file_name: str) -> Path:
    """Where torch.hub — and so dinokit — keeps a downloaded weights file of this name."""
    return Path(torch.hub.get_dir()) / "checkpoints" / file_name


def official_weights(preset: str) -> Path:
    """The released weights file of `preset`: from torch's hub cache, or (DINOv2) downloaded into it."""
    file_name = RELEASED_FILES.get(preset)
    if file_name is None:
        raise CheckpointError(
            f"dinokit knows no released weights for the preset {preset!r}; released presets: "
            f"{', '.join(RELEASED_FILES)}. Pass a file path or an http(s) URL as weights= instead"
        )
    cached = cache_path(file_name)
    if cached.is_file():
        return cached
    if preset.startswith("dinov2"):
        return download(f"{DINOV2_BASE_URL}/{preset.removesuffix('_reg4')}/{file_name}")
    hf_id = "facebook/" + file_name.split("-")[0].replace("_", "-")  # the Hub copies follow the file names
    raise CheckpointError(
        f"the DINOv3 weights of {preset} ({file_name}) are distributed through download links signed for each "
        f"user, so dinokit cannot fetch them by name: request the links at {DINOV3_DOWNLOAD_PAGE}, then pass the "
        f'link from the e-mail or the downloaded file, e.g. create_backbone("{preset}", weights="https://…/'
        f'{file_name}?…"). A file placed at {cached} is found by weights="official" without the network. The '
        f'Hugging Face copy loads with load_backbone("hf:{hf_id}") once you have accepted the licence on its page'
    )


def url_cache_path(url: str) -> Path:
    """Where `download(url)` keeps the file: the hub cache, under the last part of the URL's path."""
    name = unquote(PurePosixPath(urlparse(url).path).name)
    if not name:
        raise CheckpointError(f"{shown(url)} names no file; give the address of a .pth or .safetensors file")
    return cache_path(name)


def download(url: str) -> Path:
    """The file at `url`, downloaded into torch's hub cache unless it is there already (then no network is used).

    Progress goes to stderr. A hash prefix in the file name is checked; a file that fails it is not kept."""
    target = url_cache_path(url)
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    found = _HASH_IN_NAME.search(target.name)
    prefix = found.group(1) if found else None
    print(f"Downloading {shown(url)} to {target}", file=sys.stderr)
    try:
        torch.hub.download_url_to_file(url, str(target), hash_prefix=prefix, progress=True)
    except OSError as e:  # urllib's URLError / HTTPError, a refused or reset connection, a timeout
        expired = ""
        if isinstance(e, urllib.error.HTTPError) and e.code == 403 and urlparse(url).query:
            expired = "; signed links expire, so request a fresh one"
        raise CheckpointError(
            f"could not download {shown(url)} ({_reason(e)}){expired}. Check the address and the network "
            f"connection; without network, fetch the file elsewhere and put it at {target}, where dinokit (and "
            "torch.hub) look first, so the next call will not need the network"
        ) from None
    except RuntimeError as e:  # torch.hub's message for a digest that does not start with the prefix
        if prefix is None or "hash" not in str(e):
            raise
        raise CheckpointError(
            f"the file downloaded from {shown(url)} is damaged or not the one its name promises: its SHA-256 does "
            f"not start with {prefix}, so it was not kept; download it again, or check that the link is for "
            f"{target.name}"
        ) from None
    return target


def shown(url: str) -> str:
    """`url` for messages: without its query, which in a signed link is a long, private signature."""
    parsed = urlparse(url)
    return parsed._replace(query="", fragment="").geturl() + ("?…" if parsed.query else "")


def _reason(e: OSError) -> str:
    if isinstance(e, urllib.error.HTTPError):
        return f"HTTP {e.code} {e.reason}"
    return str(getattr(e, "reason", None) or e)


# ------------------------------------------------------------------------------------------- Hugging Face
def hf_snapshot(repo: str) -> Path:
    """The local folder of the Hugging Face model `repo` (`org/name`, optionally `@revision`), from
    huggingface_hub's cache or downloaded into it (`HF_FILES`); huggingface_hub reports the progress."""
    hub = require("huggingface_hub", "hf", "loading hf: model ids")
    from huggingface_hub import constants, errors

    repo_id, _, revision = repo.partition("@")
    page = f"https://huggingface.co/{repo_id}"
    try:
        return Path(hub.snapshot_download(repo_id, revision=revision or None, allow_patterns=HF_FILES))
    except errors.GatedRepoError:
        raise CheckpointError(
            f"{repo_id} is a gated model: accept its licence on {page}, then log in (`hf auth login`) or set "
            "HF_TOKEN, and load it again"
        ) from None
    except errors.RepositoryNotFoundError:
        raise CheckpointError(
            f"no model {repo_id} on the Hugging Face Hub (or it is private and you are not logged in); check the "
            f"id, e.g. hf:facebook/dinov2-small"
        ) from None
    except errors.RevisionNotFoundError:
        raise CheckpointError(f"the model {repo_id} has no revision {revision!r}; see {page}/tree/main") from None
    except errors.LocalEntryNotFoundError as e:  # offline (HF_HUB_OFFLINE or no network) and not in the cache
        cause = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(
            f"{repo_id} is not (completely) in the Hugging Face cache ({constants.HF_HUB_CACHE}) and the Hub "
            f"could not be reached ({cause}). Download it once with network (`hf download {repo_id}`), or copy a "
            "cache that holds it and point HF_HOME at it"
        ) from None
    except errors.HFValidationError as e:
        raise CheckpointError(f"{repo!r} is not a Hugging Face model id ({e}); write hf:<org>/<name>") from None
    except errors.HfHubHTTPError as e:
        raise CheckpointError(f"the Hugging Face Hub refused {repo_id}: {str(e).splitlines()[0]}") from None
