"""Data-parallel training under torchrun: two CPU processes (gloo, loopback) reach the weights of one.

The global batch is the same (--batch-size 8: two ranks of 4 against one process of 8), dropout is
off (its masks cannot match across partitions); augmentation seeds are per sample and batch norm
runs over the global batch, so the only differences left are floating-point summation order.
"""

from __future__ import annotations

import csv
import os
import random
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from cxrtriage.data import kermany_samples, patient_split, write_manifest  # noqa: E402
from cxrtriage.train.config import TrainConfig  # noqa: E402
from cxrtriage.train.trainer import train  # noqa: E402

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
TRAIN_ARGS = dict(epochs=2, batch_size=8, image_size=64, patience=10, dropout=0.0, device="cpu")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def manifest(shared_root, tmp_path_factory) -> Path:
    """32 real radiographs (16 normal, 16 pneumonia), split by patient: 3 steps of 8 per epoch."""
    rng = random.Random(0)
    every = kermany_samples(shared_root, "train", "pneumonia")
    pick = rng.sample([s for s in every if s.label == "normal"], 16)
    pick += rng.sample([s for s in every if s.label != "normal"], 16)
    path = tmp_path_factory.mktemp("ddp") / "tiny.csv"
    write_manifest(patient_split(pick, 0.25, 0), path)
    return path


def _cli_args(out: Path, manifest: Path, cache: Path) -> list[str]:
    a = TRAIN_ARGS
    return ["train", "--out", str(out), "--manifest", str(manifest), "--cache-dir", str(cache),
            "--epochs", str(a["epochs"]), "--batch-size", str(a["batch_size"]), "--image-size", str(a["image_size"]),
            "--patience", str(a["patience"]), "--dropout", str(a["dropout"]), "--device", a["device"], "--quiet"]


def _run(cmd: list[str], timeout: float = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1", "PYTHONUNBUFFERED": "1",
           "CUDA_VISIBLE_DEVICES": ""}  # gloo on CPU, even on a machine with GPUs
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(cmd)}\n--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-6000:]}"
    return proc


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "last.pt", map_location="cpu", weights_only=False)["model"]


def test_two_processes_reach_the_weights_of_one(manifest, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    cfg = dict(manifest=str(manifest), cache_dir=str(cache), **TRAIN_ARGS)
    # one process trains epoch 1 and pauses; a copy of that run is resumed two ways
    paused = train(TrainConfig(out_dir=str(tmp_path / "single"), stop_after=1, **cfg), progress=False)
    ddp = tmp_path / "ddp"
    shutil.copytree(paused, ddp)

    # epoch 2 with one process (the reference; its export is not needed)
    import cxrtriage.train.trainer as trainer

    with monkeypatch.context() as m:
        m.setattr(trainer, "export_run", lambda *a, **k: None)
        single = train(TrainConfig(out_dir=str(paused), **cfg), resume=True, progress=False)

    # epoch 2 with two processes: `cxr train --resume` under torchrun, gloo over loopback
    proc = _run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--nnodes", "1",
                 "--master-addr", "127.0.0.1", "--master-port", str(_free_port()),
                 "-m", "cxrtriage", *_cli_args(ddp, manifest, cache), "--resume"])
    assert proc.stdout.count("resumed from") == 1 and proc.stdout.count("best epoch 2") == 1  # rank 0 only

    a, b = _weights(single), _weights(ddp)
    assert list(a) == list(b)
    for k in a:  # parameters and batch-norm statistics
        assert torch.allclose(a[k].float(), b[k].float(), rtol=1e-3, atol=1e-4), \
            f"{k}: max difference {(a[k].float() - b[k].float()).abs().max().item():.2e}"

    # the loss reduced over ranks and the gathered validation equal the single process's
    ra, rb = (list(csv.DictReader((run / "metrics.csv").open())) for run in (single, ddp))
    assert [r["epoch"] for r in rb] == ["1", "2"]
    assert float(ra[1]["train_loss"]) == pytest.approx(float(rb[1]["train_loss"]), rel=1e-4)
    assert float(ra[1]["val_loss"]) == pytest.approx(float(rb[1]["val_loss"]), rel=1e-4)
    assert float(ra[1]["val_auc"]) == pytest.approx(float(rb[1]["val_auc"]), abs=1e-6)
    # rank 0 exported while rank 1 waited
    assert (ddp / "model.onnx").is_file() and (ddp / "model.gate.npz").is_file()
    assert not list(ddp.glob("*.tmp"))


def test_nproc_per_node_relaunches_through_torchrun(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from cxrtriage.cli.main import app
    from cxrtriage.train import launch

    seen = {}

    def fake_call(cmd, env):
        seen["cmd"], seen["env"] = cmd, env
        seen["config"] = TrainConfig.load(cmd[cmd.index("cxrtriage.train.launch") + 1])
        return 0

    monkeypatch.delenv("LOCAL_RANK", raising=False)
    monkeypatch.setattr(launch.subprocess, "call", fake_call)
    r = CliRunner().invoke(app, ["train", "--out", str(tmp_path / "run"), "--manifest", "m.csv", "--batch-size", "8",
                                 "--nproc-per-node", "2", "--resume", "--quiet"])
    assert r.exit_code == 0, r.output
    cmd = seen["cmd"]
    assert cmd[:4] == [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    assert "--nproc-per-node=2" in cmd and cmd[-2:] == ["--resume", "--quiet"]
    assert seen["config"].batch_size == 8 and seen["config"].out_dir == str(tmp_path / "run")
    assert int(seen["env"]["OMP_NUM_THREADS"]) >= 1

    r = CliRunner().invoke(app, ["train", "--out", str(tmp_path / "x"), "--manifest", "m.csv", "--batch-size", "9",
                                 "--nproc-per-node", "2"])
    assert r.exit_code == 2 and "divide" in r.output


def test_torchrun_command_for_one_machine(tmp_path):
    from cxrtriage.train.launch import torchrun_command

    cmd = torchrun_command(tmp_path / "c.json", 4, resume=True, progress=False)
    assert cmd[:3] == [sys.executable, "-m", "torch.distributed.run"]
    assert "--standalone" in cmd and "--nproc-per-node=4" in cmd
    assert cmd[-4:] == ["cxrtriage.train.launch", str(tmp_path / "c.json"), "--resume", "--quiet"]


def test_gloo_sync_batchnorm_keeps_the_state_dict_of_batchnorm():
    from cxrtriage.models.archs import build_model
    from cxrtriage.train.distributed import GlooSyncBatchNorm

    model = build_model("cxrnet", 2, 64)
    keys = list(model.state_dict())
    bn = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)][0]
    sync = GlooSyncBatchNorm(bn.num_features)
    sync.load_state_dict(bn.state_dict())
    x = torch.randn(4, bn.num_features, 8, 8)
    sync.train(), bn.train()
    # outside a process group it is a plain BatchNorm2d
    assert torch.allclose(sync(x), bn(x), atol=1e-6)
    assert list(build_model("cxrnet", 2, 64).state_dict()) == keys


def test_more_gpu_processes_than_gpus_is_refused_before_launch(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from cxrtriage.cli.main import app
    from cxrtriage.train import launch
    from cxrtriage.train.distributed import check_gpu_share

    check_gpu_share(2, 2)  # one process per GPU is fine
    with pytest.raises(ValueError, match="one process per GPU"):
        check_gpu_share(3, 2)

    launched = []
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    monkeypatch.setattr(launch.subprocess, "call", lambda cmd, env: launched.append(cmd) or 0)
    monkeypatch.setattr(launch.torch.cuda, "device_count", lambda: 1)
    r = CliRunner().invoke(app, ["train", "--out", str(tmp_path / "run"), "--manifest", "m.csv", "--batch-size", "8",
                                 "--device", "cuda", "--nproc-per-node", "2"])
    assert r.exit_code == 2 and "1 GPU(s)" in r.output and "--nproc-per-node 1" in r.output
    assert not launched
