"""Victim making that survives long runs: epoch checkpoints and resume, one maker per cache
key (the others wait and reuse), atomic publishing, progress lines."""
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time

import lightning as L
import pytest
import torch
from filelock import FileLock
from omegaconf import OmegaConf
from torch import nn

from dede.data import TensorBatches, make_loader
from dede.optim import sgd_or_adam
from dede.victims import build_victim, native_format, save_checkpoint
from dede.victims.factory import _cached, config_hash
from dede.victims.making import VictimLockTimeout, fit_victim, work_folder
from tests.helpers import ROOT


class Stop(Exception):
    """An interruption in the middle of a fit."""


class Noisy(L.LightningModule):
    """A model whose training draws random numbers every step and follows a cosine schedule,
    so a resume that loses the random or scheduler state ends with other weights."""

    def __init__(self, stop_at_epoch: int | None = None) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.hparams.update(optimizer="sgd", lr=0.1, momentum=0.9, weight_decay=1e-4, cosine=True)
        self.net = nn.Linear(12, 4)

    def on_train_epoch_start(self) -> None:
        if self.current_epoch == self.hparams.stop_at_epoch:
            raise Stop  # after the previous epoch's checkpoint

    def training_step(self, batch, batch_idx):
        x = batch[0].flatten(1)[:, :12]
        x = x + 0.1 * torch.randn_like(x)
        loss = self.net(x).pow(2).mean()
        self.log("noisy/loss", loss, on_step=False, on_epoch=True, batch_size=len(x))
        return loss

    def configure_optimizers(self):
        return sgd_or_adam(self.net.parameters(), self.hparams, self.trainer.max_epochs)


def _trainer_cfg(tmp_path):
    return OmegaConf.create({"seed": 0, "trainer": {
        "_target_": "lightning.pytorch.Trainer", "accelerator": "cpu", "devices": 1, "log_every_n_steps": 1,
        "enable_progress_bar": False, "default_root_dir": str(tmp_path)}})


def _fit_noisy(cfg, work, log_dir, stop_at_epoch=None) -> Noisy:
    L.seed_everything(0)
    module = Noisy(stop_at_epoch)
    images = torch.randint(0, 256, (96, 3, 2, 2), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    loader = make_loader(TensorBatches(images), 16, shuffle=True, drop_last=True, seed=3)
    with work_folder(work):
        fit_victim(cfg, module, loader, 4, log_dir, "noisy")
    return module


def test_interrupted_phase_resumes_to_the_same_weights(tmp_path, caplog):
    cfg = _trainer_cfg(tmp_path)
    straight = _fit_noisy(cfg, tmp_path / "a.work", tmp_path / "logs")
    with pytest.raises(Stop):
        _fit_noisy(cfg, tmp_path / "b.work", tmp_path / "logs", stop_at_epoch=2)
    ckpts = sorted(p.name for p in (tmp_path / "b.work" / "noisy").glob("*.ckpt"))
    assert ckpts == ["epoch_001.ckpt"]  # the latest finished epoch only
    saved = torch.load(tmp_path / "b.work" / "noisy" / "epoch_001.ckpt", map_location="cpu", weights_only=True)
    assert saved["epoch"] == 1
    with caplog.at_level(logging.INFO):
        resumed = _fit_noisy(cfg, tmp_path / "b.work", tmp_path / "logs")
    assert "resuming noisy from" in caplog.text and "2 of 4 epochs done" in caplog.text
    assert resumed.current_epoch == 4
    for (k, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), k
    # one progress line per epoch run here, with the loss and an estimate of the time left
    lines = [r.getMessage() for r in caplog.records if r.name == "dede.progress"]
    assert [ln.split(",")[0] for ln in lines] == ["noisy: epoch 3/4", "noisy: epoch 4/4"]
    assert "loss 0." in lines[0] and "elapsed" in lines[0] and "left" in lines[0]


def _small_victim():
    victim, full = build_victim(arch="simclr_resnet", image_size=32, width=4, blocks=[1, 1, 1, 1])
    return victim, full


def _make_raising(*_):
    raise AssertionError("this process must not make the victim")


def test_publishing_is_atomic_and_removes_the_work_folder(tmp_path):
    victim, full = _small_victim()
    key = {"victim": "small", "seed": 1}
    stem = f"clean-{config_hash(key)}"

    def make():
        (tmp_path / f"{stem}.work" / "simclr").mkdir(parents=True)
        return None

    path, made, _ = _cached(tmp_path, "clean", key, native_format("simclr_resnet"), victim, full, make)
    assert made and path == str(tmp_path / f"{stem}.pt")
    assert not (tmp_path / f"{stem}.work").exists()
    assert json.loads((tmp_path / f"{stem}.json").read_text()) == key
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary file left


def test_interrupted_making_publishes_nothing_and_says_how_to_resume(tmp_path, caplog):
    victim, full = _small_victim()
    key = {"victim": "small", "seed": 2}

    def make():
        raise KeyboardInterrupt

    with caplog.at_level(logging.WARNING), pytest.raises(KeyboardInterrupt):
        _cached(tmp_path, "clean", key, native_format("simclr_resnet"), victim, full, make)
    assert not list(tmp_path.glob("*.pt"))
    work = tmp_path / f"clean-{config_hash(key)}.work"
    assert f"cache key {config_hash(key)}" in caplog.text and str(work) in caplog.text
    assert "run the same command again" in caplog.text


class OtherMaker(threading.Thread):
    """Holds the lock of a cache entry as another process would, for ``hold`` seconds, and
    publishes ``publish`` (a model) before letting go."""

    def __init__(self, lock_path, hold: float, publish=None, entry=None) -> None:
        super().__init__()
        self.lock, self.hold, self.publish, self.entry = FileLock(str(lock_path)), hold, publish, entry
        self.holding = threading.Event()

    def run(self) -> None:
        with self.lock:
            self.holding.set()
            time.sleep(self.hold)
            if self.publish is not None:
                save_checkpoint(self.publish, self.entry, kind="clean")

    def __enter__(self):
        self.start()
        self.holding.wait(10)
        return self

    def __exit__(self, *exc) -> None:
        self.join()


def test_waiting_for_the_lock_times_out_with_a_clear_error(tmp_path):
    victim, full = _small_victim()
    key = {"victim": "small", "seed": 3}
    with OtherMaker(tmp_path / f"clean-{config_hash(key)}.lock", hold=3):
        t0 = time.time()
        with pytest.raises(VictimLockTimeout, match=r"victim_lock_timeout=0.3 s.*victim_lock_timeout=-1"):
            _cached(tmp_path, "clean", key, native_format("simclr_resnet"), victim, full, _make_raising, 0.3)
        assert time.time() - t0 < 3


def test_a_waiting_process_reuses_what_the_lock_holder_published(tmp_path, caplog):
    victim, full = _small_victim()
    key = {"victim": "small", "seed": 4}
    stem = f"clean-{config_hash(key)}"
    _, other = _small_victim()
    with OtherMaker(tmp_path / f"{stem}.lock", hold=1, publish=other, entry=tmp_path / f"{stem}.pt"), \
            caplog.at_level(logging.INFO):
        path, made, _ = _cached(tmp_path, "clean", key, native_format("simclr_resnet"), victim, full, _make_raising)
    assert not made and path == str(tmp_path / f"{stem}.pt")
    assert "waiting" in caplog.text and "reusing cached clean victim" in caplog.text
    for a, b in zip(full.state_dict().values(), other.state_dict().values()):
        assert torch.equal(a, b)


# --- whole runs in subprocesses (slow) ------------------------------------------------------

# a clean SimCLR victim that takes a few epochs, and the smallest decoder training after it
SMALL_CLEAN = [
    "attack=clean", "logger=csv", "data.home.n_train=256", "data.home.n_test=100", "attack.pretrain.epochs=3",
    "attack.pretrain.batch_size=64", "data.batch_size=64", "decoder.epochs=1", "decoder.embed_dim=32",
    "decoder.depth=1", "decoder.decoder_depth=1", "decoder.num_heads=2", "trainer.enable_progress_bar=false",
]


def _start(run_dir, cache, log_file, extra=()):
    env = dict(os.environ, DEDE_CACHE=str(cache), WANDB_MODE="offline", PYTHONWARNINGS="ignore")
    return subprocess.Popen([sys.executable, str(ROOT / "train.py"), *SMALL_CLEAN, *extra, f"hydra.run.dir={run_dir}"],
                            cwd=ROOT, env=env, stdout=open(log_file, "w"), stderr=subprocess.STDOUT)


def _finish(proc, log_file, timeout=900):
    rc = proc.wait(timeout=timeout)
    return rc, log_file.read_text()


def _cached_weights(cache):
    (entry,) = (cache / "victims").glob("clean-*.pt")
    return entry, torch.load(entry, map_location="cpu", weights_only=True)["state_dict"]


@pytest.mark.slow
def test_killed_victim_making_resumes_to_the_same_victim(tmp_path):
    cache = tmp_path / "cache"
    proc = _start(tmp_path / "run1", cache, tmp_path / "run1.log")
    deadline = time.time() + 600
    while proc.poll() is None and time.time() < deadline:
        if list((cache / "victims").glob("clean-*.work/simclr/epoch_*.ckpt")):
            proc.send_signal(signal.SIGTERM)
            break
        time.sleep(0.05)
    rc, out = _finish(proc, tmp_path / "run1.log")
    assert rc != 0, out[-3000:]
    assert "interrupted while the clean victim" in out and "run the same command again" in out
    assert "Traceback" not in out
    assert not list((cache / "victims").glob("*.pt"))
    (work,) = (cache / "victims").glob("clean-*.work")
    assert work.name.removesuffix(".work") in out  # the log names the work folder (and so the cache key)
    (ckpt,) = (work / "simclr").glob("epoch_*.ckpt")
    done = int(ckpt.stem.split("_")[1]) + 1
    assert torch.load(ckpt, map_location="cpu", weights_only=True)["epoch"] == done - 1

    rc, out = _finish(_start(tmp_path / "run2", cache, tmp_path / "run2.log"), tmp_path / "run2.log")
    assert rc == 0, out[-3000:]
    assert f"resuming simclr from {ckpt}: {done} of 3 epochs done" in out
    assert "simclr: epoch 3/3" in out and "decoder: epoch 1/1" in out
    entry, resumed = _cached_weights(cache)
    assert not work.exists()
    assert json.loads((tmp_path / "run2" / "victim.json").read_text())["path"] == str(entry.resolve())

    # the same key made without interruption gives the very same tensors
    other = tmp_path / "cache_straight"
    rc, out = _finish(_start(tmp_path / "run3", other, tmp_path / "run3.log"), tmp_path / "run3.log")
    assert rc == 0, out[-3000:]
    entry3, straight = _cached_weights(other)
    assert entry3.name == entry.name
    assert resumed.keys() == straight.keys()
    for k in straight:
        assert torch.equal(resumed[k], straight[k]), k


@pytest.mark.slow
def test_two_runs_needing_one_victim_make_it_once(tmp_path):
    cache = tmp_path / "cache"
    procs = [_start(tmp_path / f"run{i}", cache, tmp_path / f"run{i}.log") for i in (0, 1)]
    outs = []
    for i, p in enumerate(procs):
        rc, out = _finish(p, tmp_path / f"run{i}.log")
        assert rc == 0, out[-3000:]
        outs.append(out)
    makers = [o for o in outs if "making clean victim" in o]
    waiters = [o for o in outs if "making clean victim" not in o]
    assert len(makers) == 1 and len(waiters) == 1
    assert "waiting" in waiters[0] and "reusing cached clean victim" in waiters[0]
    assert "simclr: epoch" not in waiters[0]
    paths = {json.loads((tmp_path / f"run{i}" / "victim.json").read_text())["path"] for i in (0, 1)}
    (entry,) = (cache / "victims").glob("clean-*.pt")
    assert paths == {str(entry.resolve())}


def test_cache_keys_hash_what_made_the_victim():
    """The demo's keys are pinned (a change to them re-makes every cached victim, so it must be
    deliberate); precision and the data generator's version are part of the key (a bf16 victim
    or one made from older images is another victim)."""
    from dede.victims.factory import victim_keys
    from tests.helpers import compose_train

    def keys(*overrides):
        return tuple(config_hash(k) for k in victim_keys(compose_train(["experiment=demo", "seed=21", *overrides])))

    base = keys()
    assert base == ("70b33066d02d055a", "38819f78dd60e1c5")
    assert keys("trainer.precision=bf16-mixed")[0] != base[0]
    assert keys("data.root=/elsewhere", "data.download=true") == base  # where the files are is not the data
    clean_hard, _ = victim_keys(compose_train(["experiment=demo", "data=synthetic_hard"]))
    assert clean_hard["home"]["version"] == 2


def test_central_references_are_the_target_images_nearest_the_class_mean():
    from dede.attacks.common import reference_images
    from dede.data import home_split
    from dede.victims import build_victim
    from tests.helpers import compose_train

    cfg = compose_train(["experiment=demo", "seed=21", "data.root=unused", "attack.make.n_references=3",
                         "attack.make.reference_pick=central"])
    home = home_split(cfg, "train")
    torch.manual_seed(0)
    victim, _ = build_victim(**OmegaConf.to_container(cfg.attack.victim, resolve=True))
    victim.eval()
    refs = reference_images(cfg, home, 3, victim)
    is_target = home.labels == cfg.attack.target
    # the picks are target-class images among the closest to the class mean, centred on all images
    emb = victim.embed(home.images.float().div(255))
    centred = torch.nn.functional.normalize(emb - emb.mean(0), dim=1)
    centre = torch.nn.functional.normalize(centred[is_target].mean(0), dim=0)
    sim = centred[is_target] @ centre
    picked = [int(((home.images[is_target].float().div(255) - r).abs().flatten(1).sum(1) == 0).nonzero()[0]) for r in refs]
    assert set(picked) <= set(sim.topk(6).indices.tolist())
    with pytest.raises(ValueError, match="needs the clean encoder"):
        reference_images(cfg, home, 3)
    random_refs = reference_images(compose_train(["experiment=demo", "seed=21", "attack.make.n_references=3"]), home,
                                   3)
    assert not torch.equal(random_refs, refs)


def test_a_clean_victim_has_no_attack_key():
    from dede.victims.factory import victim_keys
    from tests.helpers import compose_train

    clean, attack = victim_keys(compose_train(["experiment=demo", "seed=21", "attack=clean"]))
    assert attack is None and config_hash(clean) == "70b33066d02d055a"  # the same clean victim BadEncoder starts from
