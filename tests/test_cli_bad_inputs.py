"""Bad inputs to every verb: exit status 2 and one message naming the problem, never a traceback.

One table of (command line, words the message must hold), run in-process against tiny files. `{name}` in a
command line is a path of the `files` fixture (`{out}` a fresh one per case); `{url}` an address where nothing
listens (no network needed).
"""

from __future__ import annotations

import shlex
import socket
import sys
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch
from safetensors.torch import save_file

import dinokit
from dinokit.cli import main
from tests.tools.helpers import write_png

BACKBONE = "--backbone random:dinov2_test"

CASES = [
    # info: every way a checkpoint can be unreadable, and files that loading would refuse
    ("info {missing}", "no checkpoint at"),
    ("info ''", "the checkpoint path is empty"),
    ("info {no_config}", "without config.json"),
    ("info {no_weights}", "without model.safetensors"),
    ("info {broken_config}", "config.json is not valid JSON"),
    ("info {list_config}", "holds no JSON object"),
    ("info {no_backbone_config}", "holds no backbone config"),
    ("info {truncated_folder}", "could not read"),
    ("info {truncated}", "as a safetensors file"),
    ("info {text_pth}", "is not a PyTorch checkpoint"),
    ("info {extra_key}", "unexpected (1): head.weight"),
    ("info {url}", "could not download"),
    ("info {served_text}", "downloaded http://127.0.0.1"),  # a web page where a checkpoint was expected
    ("info {broken_metadata}", "holds no backbone config"),
    ("info {flipped}", "is damaged: its weights differ from the SHA-256 saved with them"),
    # convert
    ("convert {missing} {out}", "no checkpoint at"),
    ("convert {dinokit} {out} --format banana", "invalid choice: 'banana'"),
    ("convert {broken_config} {out}", "not valid JSON"),
    # demo
    ("demo --backbone random:nonsense --output {out}", "unknown backbone preset 'nonsense'"),
    ("demo --size 0 --output {out}", "must be at least 1"),
    # extract
    (f"extract {{image}} {BACKBONE} --output {{out}} --batch-size 0", "must be at least 1"),
    (f"extract {{image}} {BACKBONE} --output {{out}} --device banana", "not a device name"),
    ("extract {image} --backbone {url} --output {out}", "could not download"),
    ("extract {image} --backbone {truncated_folder} --output {out}", "could not read"),
    # export
    ("export onnx --backbone {missing} --output {out}/m.onnx", "no checkpoint at"),
    (f"export onnx {BACKBONE} --output {{out}}/m.onnx --opset 12", "opset 17 or newer"),
    (f"export tflite {BACKBONE} --output {{out}}/m.onnx", "invalid choice: 'tflite'"),
    # viz
    ("viz pca {image} --backbone {broken_config} --output {out}/v.png", "not valid JSON"),
    ("viz pca {image} --backbone {no_weights} --output {out}/v.png", "without model.safetensors"),
    (f"viz pca {{image}} {BACKBONE} --output {{out}}/v.png --foreground nan", "expected a finite number, got 'nan'"),
    (f"viz similarity {{image}} {BACKBONE} --output {{out}}/v.png --query 5", "--query must be Y,X"),
    (f"viz histogram {{image}} {BACKBONE} --output {{out}}/v.png", "invalid choice: 'histogram'"),
    # index
    (f"index build {{image}} {BACKBONE} --output {{out}} --kind annoy", "invalid choice: 'annoy'"),
    ("index search {image} {image} --k -1", "must be at least 1"),
    # prototypes
    ("prototypes apply {image} --prototypes {text} --output {out}", "not a dinokit prototypes file"),
    ("prototypes apply {image} --prototypes {image} --output {out}", "not a dinokit prototypes file"),
    ("prototypes apply {image} --prototypes {missing} --output {out}", "no such prototypes file"),
    ("prototypes apply {image} --prototypes {text} --output {out} --threshold nan", "expected a finite number"),
    (f"prototypes build {{unlabelled}} {BACKBONE} --output {{out}}/p.safetensors", "need labelled images"),
    # head
    (f"head train {{one_class}} {BACKBONE} --output {{out}}/h.safetensors", "needs at least 2 classes"),
    (f"head train {{one_class}} {BACKBONE} --output {{out}}/h.safetensors --task multi", "reads a CSV file"),
    (f"head train {{one_class}} {BACKBONE} --output {{out}}/h.safetensors --lr -1", "--lr: must be positive"),
    (f"head train {{one_class}} {BACKBONE} --output {{out}}/h.safetensors --lr nan", "--lr: expected a finite"),
    (f"head train {{one_class}} {BACKBONE} --output {{out}}/h.safetensors --task segment", "conv decoder"),
    ("head predict {image} --head {text}", "not a readable head file"),
    ("head predict {image} --head {weights_file}", "not a dinokit head"),
    ("head predict {image} --head {missing}", "not a readable head file"),
    # train: unknown recipes, keys and values
    ("train no_such_recipe", "neither a YAML file nor a shipped recipe"),
    ("train tiny_cpu --print-config optim.nonsense=1", "unknown key(s) 'nonsense'"),
    ("train tiny_cpu --print-config train.steps=many", "train.steps: expected int"),
    ("train tiny_cpu --print-config not_a_pair", "is not of the form key.sub=value"),
    ("train tiny_cpu data.path={unlabelled} output_dir={out} optim.base_lr=.inf", "expected a finite number"),
    ("train tiny_cpu data.path={unlabelled} output_dir={out} data.std=[0,0,0]", "data.std must be > 0"),
    # eval
    ("eval knn --backbone {url} --train {unlabelled} --val {unlabelled}", "could not download"),
    ("eval knn --backbone {missing} --train {unlabelled} --val {unlabelled}", "no such file or folder"),
    (f"eval knn {BACKBONE} --train {{unlabelled}} --val {{unlabelled}} --device cuda:99", "--device"),
    (f"eval correspondence {BACKBONE} --pairs {{text}} --thresholds 5 nan", "expected a finite number"),
    (f"eval correspondence {BACKBONE} --pairs {{text}} --thresholds 0", "must be positive"),
    (f"eval depth {BACKBONE} --train {{image}} --val {{image}} --depth-scale inf", "expected a finite number"),
    (f"eval seg {BACKBONE} --train {{image}} --val {{image}} --num-classes 0", "must be at least 1"),
    (f"eval knn {BACKBONE} --train {{unlabelled}} --val {{unlabelled}} --output {{one_class}}", "is a folder"),
    # data
    ("data synth {out} --scale nan", "expected a finite number, got 'nan'"),
    ("data synth {out} --scale 0", "must be positive"),
    ("data synth {out} --size 100000", "--size must be 32–2048"),
    ("data synth {out} --seed -1", "must be at least 0"),
    ("data synth {text}/s", "is a file, not a folder"),
    # no such verb
    ("frobnicate", "invalid choice: 'frobnicate'"),
]


def _closed_port() -> int:
    with socket.socket() as s:  # a port the system just handed out and nobody listens on once it is closed
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """The table's files by name: images, a tiny checkpoint, and that checkpoint damaged in every way; also
    served over HTTP on 127.0.0.1."""
    root = tmp_path_factory.mktemp("bad_inputs")
    for i, image in enumerate(("image.png", "one_class/a/1.png", "one_class/a/2.png", "unlabelled/1.png")):
        (root / image).parent.mkdir(parents=True, exist_ok=True)
        write_png(root / image, 48, i)
    (root / "text").write_text("hello\n")
    (root / "text.pth").write_text("hello\n")
    (root / "no_config").mkdir()
    model = dinokit.create_backbone("dinov2_test")
    whole = dinokit.save_backbone(model, root / "weights.safetensors").read_bytes()
    (root / "truncated.safetensors").write_bytes(whole[: len(whole) // 2])
    head = {"head.weight": torch.zeros(3)}  # a classifier's head left in the file: loading refuses it
    torch.save(model.state_dict() | head, root / "with_head.pth")
    folders = ("dinokit", "no_weights", "truncated_folder", "broken_config", "list_config", "no_backbone_config")
    for name in folders:
        dinokit.save_backbone(model, root / name)
    (root / "no_weights/model.safetensors").unlink()
    (root / "truncated_folder/model.safetensors").write_bytes(whole[:4000])
    (root / "broken_config/config.json").write_text("{not json")
    (root / "list_config/config.json").write_text("[1, 2]")
    (root / "no_backbone_config/config.json").write_text('{"format": "dinokit"}')
    flipped = bytearray(whole)
    flipped[-5] ^= 0xFF  # in the last tensor's bytes: only the digest can tell
    (root / "flipped.safetensors").write_bytes(bytes(flipped))
    save_file({"w": torch.zeros(2)}, str(root / "broken_metadata.safetensors"),
              metadata={"format": "dinokit", "backbone": "{not json"})  # fmt: skip
    names = {"image": "image.png", "text_pth": "text.pth", "weights_file": "weights.safetensors",
             "truncated": "truncated.safetensors", "extra_key": "with_head.pth", "flipped": "flipped.safetensors",
             "broken_metadata": "broken_metadata.safetensors"}  # fmt: skip
    names |= {name: name for name in ("missing", "text", "no_config", "one_class", "unlabelled", *folders)}
    paths = {name: str(root / rel) for name, rel in names.items()}
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(_QuietHandler, directory=str(root)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield paths | {"url": f"http://127.0.0.1:{_closed_port()}/dinov2_test.pth",
                   "served_text": f"http://127.0.0.1:{server.server_address[1]}/text.pth"}  # fmt: skip
    server.shutdown()


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # no request lines in the test output
        pass


def run(command: str, paths: dict[str, str], capsys) -> tuple[int, str]:
    """Exit status and everything printed (argparse's usage errors exit through SystemExit)."""
    try:
        code = main([word.format(**paths) for word in shlex.split(command)])
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr()
    return code, out.err + out.out


@pytest.mark.parametrize("command, expected", CASES, ids=[c for c, _ in CASES])
def test_bad_input_exits_2_with_a_message(command, expected, files, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # no cached download can stand in for the unreachable URL
    monkeypatch.setenv("no_proxy", "*")  # a proxy configured on the machine must not be asked for {url}
    code, output = run(command, files | {"out": str(tmp_path / "out")}, capsys)
    assert code == 2, output
    assert "Traceback" not in output
    assert expected in output
    assert "error:" in output


@pytest.mark.parametrize(
    "module, command, extra",
    [
        ("onnx", f"export onnx {BACKBONE} --output {{out}}/m.onnx", "onnx"),
        ("onnxscript", f"export onnx {BACKBONE} --output {{out}}/m.onnx", "onnx"),
        ("onnxruntime", f"export onnx {BACKBONE} --output {{out}}/m.onnx", "onnx"),
        ("faiss", f"index build {{image}} {BACKBONE} --output {{out}}/index", "faiss"),
    ],
)
def test_a_missing_optional_dependency_names_its_extra(module, command, extra, files, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, module, None)  # `import module` now fails as if it were not installed
    code, output = run(command, files | {"out": str(tmp_path / "out")}, capsys)
    assert code == 2, output
    assert "Traceback" not in output and not (tmp_path / "out").exists()  # refused before any work
    assert f"optional package {module}" in output and f"pip install 'dinokit[{extra}]'" in output
