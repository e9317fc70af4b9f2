"""Weights by name: `weights="official"`, http(s) URLs through torch's hub cache, and `hf:` ids through
huggingface_hub's cache. No test touches the network: files are served from 127.0.0.1, addresses that must fail
point at a closed local port, and the Hugging Face cache is written by the test and read offline."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import dinokit
from dinokit.errors import CheckpointError, UserError
from dinokit.integrity import file_sha256
from dinokit.models import backbone_from_spec, hub

ROOT = Path(__file__).parents[2]


def _random(name, **overrides):
    torch.manual_seed(0)
    model = dinokit.create_backbone(name, **overrides).eval()
    with torch.no_grad():  # non-trivial values everywhere, so a tensor loaded in the wrong place shows
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model


def _assert_same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def _assert_same_outputs(a, b):
    """For round trips through HF folders, which drop what does not change the outputs (DINOv3's masked key bias)."""
    x = torch.randn(1, 3, 56, 56, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        torch.testing.assert_close(a.forward_features(x).patches, b.forward_features(x).patches)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(autouse=True)
def torch_cache(tmp_path, monkeypatch) -> Path:
    """A fresh torch hub cache; the folder where downloaded weights go."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path / "torch" / "hub" / "checkpoints"


@pytest.fixture()
def server(tmp_path):
    """A web server on 127.0.0.1 for the files under `root`; `requests` lists the paths asked for."""
    root = tmp_path / "served"
    root.mkdir()
    requests: list[str] = []

    class Handler(SimpleHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

        def do_GET(self) -> None:
            requests.append(self.path)
            super().do_GET()

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), partial(Handler, directory=str(root)))
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    yield SimpleNamespace(root=root, url=f"http://127.0.0.1:{httpd.server_address[1]}", requests=requests)
    httpd.shutdown()
    httpd.server_close()


# ------------------------------------------------------------------------------------------ official files
@pytest.mark.parametrize("preset", ["dinov2_vits14", "dinov2_vits14_reg4"])
def test_official_dinov2_is_downloaded_once_into_the_torch_hub_cache(preset, server, torch_cache, monkeypatch, capfd):
    file_name = f"{preset}_pretrain.pth"  # released layout: dinov2/<model>/<model>[_reg4]_pretrain.pth
    model = _random(preset, depth=1)  # one block keeps the file small; the preset's other sizes are the released ones
    (server.root / "dinov2" / "dinov2_vits14").mkdir(parents=True)
    dinokit.save_backbone(model, server.root / "dinov2" / "dinov2_vits14" / file_name, format="official")
    monkeypatch.setattr(hub, "DINOV2_BASE_URL", f"{server.url}/dinov2")

    dinokit.create_backbone(preset, depth=1)  # without weights=, nothing is fetched
    assert server.requests == []
    loaded = dinokit.create_backbone(preset, weights="official", depth=1)
    assert server.requests == [f"/dinov2/dinov2_vits14/{file_name}"]
    assert (torch_cache / file_name).is_file()
    assert "Downloading" in capfd.readouterr().err  # progress is reported
    _assert_same_weights(loaded, model)
    dinokit.create_backbone(preset, weights="official", depth=1)  # the second time from the cache
    assert len(server.requests) == 1


def test_offline_message_names_the_url_and_where_to_put_the_file(torch_cache, monkeypatch):
    monkeypatch.setattr(hub, "DINOV2_BASE_URL", f"http://127.0.0.1:{_closed_port()}/dinov2")
    with pytest.raises(CheckpointError) as err:
        dinokit.create_backbone("dinov2_vits14", weights="official", depth=1)
    target = torch_cache / "dinov2_vits14_pretrain.pth"
    assert "could not download" in str(err.value)
    assert "/dinov2/dinov2_vits14/dinov2_vits14_pretrain.pth" in str(err.value)
    assert str(target) in str(err.value)
    assert not target.exists()
    model = _random("dinov2_vits14", depth=1)
    dinokit.save_backbone(model, target, format="official")  # the user puts the file where the message said
    _assert_same_weights(dinokit.create_backbone("dinov2_vits14", weights="official", depth=1), model)


def test_dinov3_official_asks_for_the_signed_link_or_the_file(torch_cache):
    target = torch_cache / "dinov3_vits16_pretrain_lvd1689m-08c60483.pth"
    with pytest.raises(CheckpointError) as err:
        dinokit.create_backbone("dinov3_vits16", weights="official", depth=1)
    for words in ("ai.meta.com", f'weights="https://…/{target.name}?…"', str(target), "hf:facebook/dinov3-vits16"):
        assert words in str(err.value)
    model = _random("dinov3_vits16", depth=1)
    dinokit.save_backbone(model, target, format="official")  # where the message said
    _assert_same_weights(dinokit.create_backbone("dinov3_vits16", weights="official", depth=1), model)
    with pytest.raises(CheckpointError, match=r"missing \(\d+\): blocks\.1\."):  # weights must fit the preset
        dinokit.create_backbone("dinov3_vits16", weights="official")


def test_command_line_spec_official(torch_cache):
    model = _random("dinov3_vits16", depth=1)
    dinokit.save_backbone(model, torch_cache / hub.RELEASED_FILES["dinov3_vits16"], format="official")
    _assert_same_weights(backbone_from_spec("official:dinov3_vits16", depth=1), model)


def test_names_without_released_weights_are_explained():
    with pytest.raises(CheckpointError, match="no released weights for the preset 'dinov2_test'"):
        dinokit.create_backbone("dinov2_test", weights="official")
    with pytest.raises(CheckpointError, match=r'create_backbone\("dinov2_vits14", weights="official"\)'):
        dinokit.load_backbone("dinov2_vits14")  # a preset name where a file was expected


# ------------------------------------------------------------------------------------------------ URLs
def test_url_hash_prefix_is_checked_and_the_signature_stays_out(server, torch_cache, capfd):
    model = _random("dinov3_test")
    dinokit.save_backbone(model, server.root / "file.pth", format="official")
    digest = file_sha256(server.root / "file.pth")[:8]
    good = f"dinov3_test_pretrain_lvd1689m-{digest}.pth"
    bad = f"dinov3_test_pretrain_lvd1689m-{(int(digest, 16) + 1) % 16**8:08x}.pth"
    (server.root / "file.pth").rename(server.root / good)
    (server.root / bad).write_bytes((server.root / good).read_bytes())

    loaded = dinokit.load_backbone(f"{server.url}/{good}?Policy=p&Signature=secret")
    _assert_same_weights(loaded, model)
    assert loaded.config.extra["source"] == str(torch_cache / good)  # the cached file, not the signed link
    assert "secret" not in capfd.readouterr().err
    with pytest.raises(CheckpointError, match=f"SHA-256 does not start with {bad[-12:-4]}"):
        dinokit.create_backbone("dinov3_test", weights=f"{server.url}/{bad}")
    assert sorted(p.name for p in torch_cache.iterdir()) == [good]  # nothing kept of the damaged download


def test_a_page_downloaded_in_place_of_weights_is_not_kept(server, torch_cache):
    (server.root / "weights.pth").write_text("<html>link expired</html>")
    with pytest.raises(CheckpointError, match=r"downloaded http://127\.0\.0\.1:\d+/weights\.pth, but .* not a PyTorch"):
        dinokit.load_backbone(f"{server.url}/weights.pth")
    assert not (torch_cache / "weights.pth").exists()  # else it would stand in for the weights next time


def test_satellite_file_names_set_the_satellite_statistics(tmp_path):
    model = _random("dinov3_test")
    for name, mean in (("dinov3_x_pretrain_sat493m.pth", [0.430, 0.411, 0.296]), ("dinov3_x_pretrain.pth", None)):
        path = dinokit.save_backbone(model, tmp_path / name, format="official")
        assert dinokit.create_backbone("dinov3_test", weights=path).config.extra.get("mean") == mean
        assert dinokit.load_backbone(path, preset="dinov3_test").config.extra.get("mean") == mean


# ------------------------------------------------------------------------------------------- Hugging Face
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _write_hf_cache(hub_cache: Path, repo_id: str, model) -> None:
    """`repo_id` as huggingface_hub lays out its cache: `models--org--name/{refs/main, snapshots/<commit>/…}`."""
    storage = hub_cache / ("models--" + repo_id.replace("/", "--"))
    dinokit.save_backbone(model, storage / "snapshots" / COMMIT, format="hf")
    (storage / "refs").mkdir(parents=True)
    (storage / "refs" / "main").write_text(COMMIT)


@pytest.fixture()
def hf_offline(tmp_path, monkeypatch) -> Path:
    """huggingface_hub offline, with its cache in tmp_path (set in-process: its settings are read at import)."""
    pytest.importorskip("huggingface_hub")
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return tmp_path / "hf" / "hub"


@pytest.mark.parametrize(
    "repo_id, preset",
    [("facebook/dinov2-with-registers-small", "dinov2_test_reg4"), ("facebook/dinov3-vits16-pretrain-lvd1689m",
     "dinov3_test"), ("facebook/dinov3-convnext-tiny-pretrain-lvd1689m", "dinov3_convnext_test")],
)  # fmt: skip
def test_hf_ids_load_from_the_hugging_face_cache(repo_id, preset, hf_offline):
    model = _random(preset)
    _write_hf_cache(hf_offline, repo_id, model)
    loaded = dinokit.load_backbone(f"hf:{repo_id}")
    _assert_same_outputs(loaded, model)
    assert loaded.config.extra["source"] == f"hf:{repo_id}"
    _assert_same_outputs(dinokit.load_backbone(f"hf:{repo_id}@{COMMIT}"), model)  # a pinned revision
    _assert_same_outputs(dinokit.create_backbone(preset, weights=f"hf:{repo_id}"), model)


def test_hf_id_missing_from_the_cache_offline(hf_offline):
    with pytest.raises(CheckpointError, match=r"facebook/dinov2-small is not \(completely\) in the Hugging Face cache"):
        dinokit.load_backbone("hf:facebook/dinov2-small")
    with pytest.raises(CheckpointError, match="not a Hugging Face model id"):
        dinokit.load_backbone("hf:not a/valid id")


def test_hf_ids_without_huggingface_hub_name_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # import fails as if it were not installed
    with pytest.raises(UserError, match=r"pip install 'dinokit\[hf\]'"):
        dinokit.load_backbone("hf:facebook/dinov2-small")


def test_hf_home_and_hf_hub_offline_are_honoured(tmp_path):
    """The real environment variables, in a fresh process (huggingface_hub reads them when it is imported)."""
    pytest.importorskip("huggingface_hub")
    model = _random("dinov2_test_reg4")
    _write_hf_cache(tmp_path / "hf" / "hub", "facebook/dinov2-with-registers-small", model)
    dinokit.save_backbone(model, tmp_path / "expected")
    script = (
        "import dinokit, sys; m = dinokit.load_backbone('hf:facebook/dinov2-with-registers-small'); "
        "dinokit.save_backbone(m, sys.argv[1])"
    )
    env = os.environ | {"HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    env.pop("HF_HUB_CACHE", None)
    subprocess.run([sys.executable, "-c", script, str(tmp_path / "got")], env=env, cwd=ROOT, check=True, timeout=120)
    _assert_same_weights(dinokit.load_backbone(tmp_path / "got"), dinokit.load_backbone(tmp_path / "expected"))
