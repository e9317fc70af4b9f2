"""dino.txt training (`dinokit/train/dinotxt.py`): the loss against a hand computation, the gathered loss on two gloo
ranks against one process, learning on a toy batch, kill-and-resume equality, the run's output read by
`load_dinotxt`, ConvNeXt backbones, and the configuration's errors."""

import math
import os
import shutil
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from dinokit.cli import main
from dinokit.config import ConfigError, DinoTxtRunConfig, load_train_config
from dinokit.data.synthetic import SynthConfig, write_synthetic
from dinokit.text import Tokenizer, load_dinotxt
from dinokit.train import dinotxt as T
from dinokit.train.loop import train

BACKBONE = "random:dinov3_test"
TINY = dict(size=32, pretrain=1, train_per_class=2, val_per_class=1, dense_train=1, dense_val=1, pairs=1,
            landmarks=1, views=2, distractors=1, captions=True)  # fmt: skip


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return write_synthetic(tmp_path_factory.mktemp("synth") / "s", seed=0, config=SynthConfig(**TINY), workers=1,
                           progress=False)  # fmt: skip


def config(synth, out, *extra):
    return load_train_config("configs/dinotxt/tiny_cpu.yaml", [
        f"data.path={synth / 'classify' / 'train'}", f"dinotxt.backbone={BACKBONE}", f"output_dir={out}",
        "data.image_size=32", "dinotxt.text_width=64", "dinotxt.text_depth=1", "dinotxt.context_length=24",
        "train.batch_size=4", "train.steps=4", "train.log_every=1", "checkpoint.every=2", "optim.warmup_steps=1",
        *extra])  # fmt: skip


def test_loss_equals_a_hand_computation():
    g = torch.Generator().manual_seed(0)
    image = F.normalize(torch.randn(5, 8, generator=g), dim=-1)
    text = F.normalize(torch.randn(5, 8, generator=g), dim=-1)
    scale = torch.tensor([math.log(1 / 0.07)])
    s = 1 / 0.07
    total = 0.0
    for i in range(5):
        row = [s * float(image[i] @ text[j]) for j in range(5)]  # image i against every text
        col = [s * float(image[j] @ text[i]) for j in range(5)]  # text i against every image
        total -= row[i] - math.log(sum(math.exp(v) for v in row))
        total -= col[i] - math.log(sum(math.exp(v) for v in col))
    assert abs(float(T.clip_loss(image, text, scale)) - total / 10) < 1e-5


def _features(seed=0):
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(8, 6, generator=g), torch.randn(8, 6, generator=g)
    wi, wt = torch.nn.Linear(6, 4), torch.nn.Linear(6, 4)
    torch.manual_seed(1)
    wi.reset_parameters()
    wt.reset_parameters()
    return x, y, wi, wt, torch.nn.Parameter(torch.tensor([2.0]))


def _loss_and_grads(x, y, wi, wt, scale):
    image = T.gather_with_grad(F.normalize(wi(x), dim=-1))
    text = T.gather_with_grad(F.normalize(wt(y), dim=-1))
    loss = T.clip_loss(image, text, scale)
    loss.backward()
    params = [*wi.parameters(), *wt.parameters(), scale]
    T.average_gradients(params)
    return loss.detach(), [p.grad.clone() for p in params]


def _worker(rank, port, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        x, y, wi, wt, scale = _features()
        half = slice(4 * rank, 4 * rank + 4)
        loss, grads = _loss_and_grads(x[half], y[half], wi, wt, scale)
        torch.save({"loss": loss, "grads": grads}, os.path.join(out, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_gathered_loss_on_two_gloo_ranks_equals_one_process_on_the_whole_batch(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_worker, args=(port, str(tmp_path)), nprocs=2, join=True)
    loss, grads = _loss_and_grads(*_features())
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        torch.testing.assert_close(got["loss"], loss, atol=1e-6, rtol=1e-6)
        for a, b in zip(got["grads"], grads):
            torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_a_few_steps_reduce_the_loss_on_a_toy_batch(synth, tmp_path):
    cfg = config(synth, tmp_path / "r", "dinotxt.head_drop_path=0.0")
    tok = Tokenizer(synth / "captions_vocab.txt", cfg.dinotxt.context_length)
    model = T.build_model(cfg, tok)
    assert float(model.logit_scale.detach()) == pytest.approx(math.log(1 / 0.07))
    opt = T.build_optimizer(model, cfg)
    data = T.PairBatches(T.open_pairs(cfg.data.path), tok, 32, cfg.data.mean, cfg.data.std, 8, 0, 0, 1, 0, 10)
    images, ids = data[0]
    model.train()
    model.visual_model.backbone.eval()
    frozen = {k: v.clone() for k, v in model.visual_model.backbone.state_dict().items()}
    losses = [float(T.train_step(model, opt, images, ids, 1e-3)["loss"]) for _ in range(15)]
    assert losses[-1] < 0.5 * losses[0]
    assert all(torch.equal(v, model.visual_model.backbone.state_dict()[k]) for k, v in frozen.items())


def test_resume_after_a_kill_gives_the_uninterrupted_result_and_load_dinotxt_reads_it(synth, tmp_path):
    run = tmp_path / "run"
    train(config(synth, run))
    final = torch.load(run / "dinotxt.pth")
    ckpts = sorted((run / "checkpoints").glob("step_*.pt"))
    assert [p.name for p in ckpts] == ["step_00000002.pt", "step_00000004.pt"]
    # what a run killed after step 3 leaves: the step-2 checkpoint (and metrics up to step 3)
    ckpts[-1].unlink()
    ckpts[-1].with_suffix(".pt.sha256").unlink()
    (run / "dinotxt.pth").unlink()
    assert main(["train", "configs/dinotxt/tiny_cpu.yaml", *[f"{k}" for k in _overrides(synth, run)]]) == 0
    resumed = torch.load(run / "dinotxt.pth")
    assert final.keys() == resumed.keys()
    for k in final:
        torch.testing.assert_close(resumed[k], final[k], atol=1e-6, rtol=1e-6)
    steps = [line for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(steps) == 4  # no step logged twice

    model = load_dinotxt(run / "dinotxt.pth", backbone=BACKBONE, vocab=run / "captions_vocab.txt")
    ids = model.tokenize(["a photo of stripes", "dots on a dark disc"])
    assert model.encode_text(ids).shape == (2, 256)
    # a training checkpoint loads too (its `model` entry has the released layout)
    from_ckpt = load_dinotxt(run / "checkpoints" / "step_00000004.pt", backbone=BACKBONE)
    torch.testing.assert_close(from_ckpt.encode_text(ids), model.encode_text(ids))


def _overrides(synth, out):
    return [f"data.path={synth / 'classify' / 'train'}", f"dinotxt.backbone={BACKBONE}", f"output_dir={out}",
            "data.image_size=32", "dinotxt.text_width=64", "dinotxt.text_depth=1", "dinotxt.context_length=24",
            "train.batch_size=4", "train.steps=4", "train.log_every=1", "checkpoint.every=2",
            "optim.warmup_steps=1"]  # fmt: skip


def test_fine_tuning_from_a_dinotxt_file(synth, tmp_path):
    run = tmp_path / "first"
    train(config(synth, run, "train.steps=2"))
    second = tmp_path / "second"
    train(config(synth, second, "train.steps=2", f"dinotxt.init={run / 'dinotxt.pth'}"))
    assert torch.load(second / "dinotxt.pth").keys() == torch.load(run / "dinotxt.pth").keys()


def test_convnext_backbones_work(synth, tmp_path):
    cfg = config(synth, tmp_path / "c", "dinotxt.backbone=random:dinov3_convnext_test", "data.image_size=64")
    model = T.build_model(cfg, Tokenizer(synth / "captions_vocab.txt", 24))
    assert model.visual_model.head.blocks[0].attn.num_heads == 2  # width 128 // 64
    images = torch.randn(2, 3, 64, 64)
    assert model.encode_image(images).shape == (2, 256)
    with pytest.raises(ConfigError, match="vision_heads"):
        T.build_model(config(synth, tmp_path / "d", "dinotxt.backbone=random:dinov3_convnext_test",
                             "dinotxt.vision_heads=3"), Tokenizer(synth / "captions_vocab.txt", 24))  # fmt: skip


def test_configuration_errors(synth, tmp_path, capsys):
    cfg = load_train_config("configs/dinotxt/tiny_cpu.yaml", ["dinotxt.text_width=100"])
    assert isinstance(cfg, DinoTxtRunConfig)
    with pytest.raises(ConfigError) as e:
        cfg.validate()
    for needed in ("data.path is required", "dinotxt.text_width"):
        assert needed in str(e.value)
    with pytest.raises(ConfigError, match="dinotxt.backbone is required"):
        train(load_train_config("configs/dinotxt/tiny_cpu.yaml", [f"data.path={synth}"]))
    with pytest.raises(ConfigError, match="unknown"):
        load_train_config("configs/dinotxt/tiny_cpu.yaml", ["dinotxt.no_such_key=1"])
    assert main(["train", "configs/dinotxt/tiny_cpu.yaml", f"data.path={tmp_path / 'missing'}",
                 f"dinotxt.backbone={BACKBONE}", f"output_dir={tmp_path / 'o'}"]) == 2  # fmt: skip
    assert "does not exist" in capsys.readouterr().err
    shutil.rmtree(tmp_path / "o", ignore_errors=True)
    assert main(["train", "configs/dinotxt/tiny_cpu.yaml", f"data.path={synth / 'classify' / 'train'}",
                 f"dinotxt.backbone={BACKBONE}", "dinotxt.vocab=/no/such/vocab", f"output_dir={tmp_path / 'o'}"]) == 2
    assert "no such file" in capsys.readouterr().err


def _train_worker(rank, port, overrides):
    from dinokit.train import distributed as D

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="2", RANK=str(rank),
                      LOCAL_RANK=str(rank))  # what torchrun sets  # fmt: skip
    torch.set_num_threads(1)
    train(load_train_config("configs/dinotxt/tiny_cpu.yaml", overrides))
    D.shutdown()


def test_a_two_rank_run_equals_one_process_on_the_global_batch(synth, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    common = [*_overrides(synth, tmp_path)[:2], "data.image_size=32", "dinotxt.text_width=64", "dinotxt.text_depth=1",
              "dinotxt.head_drop_path=0", "train.steps=2", "checkpoint.every=0", "optim.warmup_steps=1"]  # fmt: skip
    mp.spawn(_train_worker, args=(port, [*common, f"output_dir={tmp_path / 'two'}", "train.batch_size=2"]),
             nprocs=2, join=True)  # fmt: skip
    train(load_train_config("configs/dinotxt/tiny_cpu.yaml", [*common, f"output_dir={tmp_path / 'one'}",
                                                              "train.batch_size=4"]))  # fmt: skip
    two, one = torch.load(tmp_path / "two" / "dinotxt.pth"), torch.load(tmp_path / "one" / "dinotxt.pth")
    moved = max(float((one[k] - v).abs().max()) for k, v in T.trained_state(T.build_model(
        load_train_config("configs/dinotxt/tiny_cpu.yaml", [*common, "train.batch_size=4"]),
        Tokenizer(synth / "captions_vocab.txt", 32))).items())  # fmt: skip
    assert moved > 1e-4  # the steps changed the weights: the comparison means something
    for k in one:
        torch.testing.assert_close(two[k], one[k], atol=1e-6, rtol=1e-5)
