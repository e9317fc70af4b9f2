"""Weights & Biases logging (`logging.wandb`) with a stand-in `wandb` module: the package may be absent and the
network is off. It records what the training run hands to W&B."""

import sys
import types

import pytest

from dinokit.errors import UserError
from dinokit.train.logging import RunLog, read_metrics
from dinokit.train.loop import train


class FakeWandb(types.ModuleType):
    """`wandb.init(...)` → a run whose `log` and `finish` calls are recorded, with ids `run-0`, `run-1` …"""

    def __init__(self) -> None:
        super().__init__("wandb")
        self.inits: list[dict] = []
        self.logged: list[tuple[str, int, dict]] = []  # (run id, step, metrics)
        self.finished: list[tuple[str, int]] = []  # (run id, exit code)

    def init(self, **kwargs):
        run_id = kwargs["id"] or f"run-{len(self.inits)}"
        self.inits.append(kwargs)
        fake = self
        return types.SimpleNamespace(
            id=run_id,
            log=lambda metrics, step: fake.logged.append((run_id, step, dict(metrics))),
            finish=lambda exit_code=0: fake.finished.append((run_id, exit_code)),
        )


@pytest.fixture
def fake_wandb(monkeypatch):
    module = FakeWandb()
    monkeypatch.setitem(sys.modules, "wandb", module)
    return module


def test_wandb_gets_the_metrics_of_metrics_jsonl_and_a_resumed_run_continues_its_run(tiny_cfg, tmp_path, fake_wandb):
    overrides = ["train.steps=3", "checkpoint.every=1", "eval.every=1", "logging.wandb.project=tiny",
                 "logging.wandb.mode=offline"]  # fmt: skip
    cfg = tiny_cfg(*overrides)

    def crash_at_2(backbone, step):
        if step == 2:
            raise RuntimeError("simulated crash")
        return {}

    with pytest.raises(RuntimeError, match="simulated crash"):
        train(cfg, eval_fn=crash_at_2)
    run = tmp_path / "run"
    assert (run / "wandb_run_id.txt").read_text().strip() == "run-0"
    train(cfg, resume=True, eval_fn=lambda backbone, step: {})
    first, second = fake_wandb.inits
    assert first["project"] == "tiny" and first["mode"] == "offline" and first["name"] == "run"
    assert first["id"] is None and second["id"] == "run-0" and second["resume"] == "allow"
    assert first["config"]["train"]["steps"] == 3 and first["dir"] == str(run)
    assert fake_wandb.finished == [("run-0", 1), ("run-0", 0)]  # the crashed attempt is marked as failed
    assert [(run_id, step) for run_id, step, _ in fake_wandb.logged] == [("run-0", 1), ("run-0", 2), ("run-0", 3)]
    records = read_metrics(run / "metrics.jsonl")
    assert [r["step"] for r in records] == [1, 2, 3]
    for record, (_, step, metrics) in zip(records, fake_wandb.logged):
        assert {"step": step, **metrics} == record and {"loss", "lr", "images_per_s"} <= set(metrics)


def test_wandb_is_off_by_default_and_its_absence_is_named(tiny_cfg, tmp_path, monkeypatch, fake_wandb):
    assert tiny_cfg().logging.wandb is None
    train(tiny_cfg("train.steps=1"))
    assert not fake_wandb.inits and not (tmp_path / "run" / "wandb_run_id.txt").exists()
    monkeypatch.setitem(sys.modules, "wandb", None)  # what an installation without the package imports
    with pytest.raises(UserError, match=r"pip install 'dinokit\[wandb\]'"):
        RunLog(tmp_path / "other", 1, 0, 1, wandb=tiny_cfg("logging.wandb.project=x").logging.wandb)
