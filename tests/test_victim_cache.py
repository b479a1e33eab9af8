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
from contextlib import ExitStack, contextmanager

import lightning as L
import pytest
import torch
from filelock import FileLock
from omegaconf import OmegaConf, open_dict
from omegaconf.errors import ConfigAttributeError, ReadonlyConfigError
from torch import nn

from dede.data import TensorBatches, make_loader
from dede.optim import sgd_or_adam
from dede.victims import build_victim, native_format, save_checkpoint
from dede.victims.factory import _cached, config_hash, victim_recipes
from dede.victims.making import VictimLockTimeout, fit_victim, work_folder
from tests.helpers import CONF_DIR, ROOT


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
    from tests.helpers import compose_train

    def keys(*overrides):
        return tuple(config_hash(k) for k in victim_recipes(compose_train(["experiment=demo", "seed=21", *overrides])))

    base = keys()
    assert base == ("9d82b224ceee0b83", "01eed63782f4e712")
    assert keys("trainer.precision=bf16-mixed")[0] != base[0]
    assert keys("data.root=/elsewhere", "data.download=true") == base  # where the files are is not the data
    clean_hard, _ = victim_recipes(compose_train(["experiment=demo", "data=synthetic_hard"]))
    assert clean_hard["data"]["home"]["version"] == 2


def test_central_references_are_the_target_images_nearest_the_class_mean():
    from dede.attacks.common import reference_images
    from dede.data import home_split
    from dede.victims import build_victim
    from tests.helpers import compose_train

    # 1000 home images: the offset sample (2000) is all of them, so the centring below is the function's
    cfg = compose_train(["experiment=demo", "seed=21", "data.root=unused", "data.home.n_train=1000",
                         "attack.make.n_references=3", "attack.make.reference_pick=central"])
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
    assert set(picked) == set(sim.topk(3).indices.tolist())
    with pytest.raises(ValueError, match="needs the clean encoder"):
        reference_images(cfg, home, 3)
    random_refs = reference_images(compose_train(["experiment=demo", "seed=21", "attack.make.n_references=3"]), home,
                                   3)
    assert not torch.equal(random_refs, refs)


def test_a_clean_victim_has_no_attack_key():
    from tests.helpers import compose_train

    clean, attack = victim_recipes(compose_train(["experiment=demo", "seed=21", "attack=clean"]))
    assert attack is None and config_hash(clean) == "9d82b224ceee0b83"  # the same clean victim BadEncoder starts from


# --- the recipe: the key hashes exactly what the makers are given ---------------------------

ATTACK_NAMES = sorted(p.stem for p in (CONF_DIR / "attack").glob("*.yaml"))


def _leaves(node, path=()):
    """(path, value) of every leaf of a plain container (empty containers count as leaves)."""
    if isinstance(node, (dict, list)) and node:
        for k, v in (node.items() if isinstance(node, dict) else enumerate(node)):
            yield from _leaves(v, (*path, k))
    else:
        yield path, node


def _other(value):
    """A value that differs from ``value``."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value * 2 + 1
    if isinstance(value, str):
        return value + "_changed"
    if value is None:
        return 7
    return [7] if isinstance(value, list) else {"x": 7}  # an empty container


def _config_path(recipe_path: tuple) -> tuple:
    """Where a recipe leaf comes from in the run's config."""
    return ("trainer", "precision") if recipe_path == ("precision",) else recipe_path


@contextmanager
def _changed(cfg, path: tuple, value):
    """``cfg`` with the setting at ``path`` set to ``value`` inside the block (restored after)."""
    node = cfg
    for k in path[:-1]:
        node = node[k]
    raw = OmegaConf.to_container(node, resolve=False)
    with open_dict(node):
        node[path[-1]] = value
        try:
            yield cfg
        finally:
            if isinstance(raw, dict) and path[-1] not in raw:
                del node[path[-1]]
            else:
                node[path[-1]] = raw[path[-1]]


def _keys(cfg):
    return tuple(None if r is None else config_hash(r) for r in victim_recipes(cfg))


@pytest.mark.parametrize("name", ATTACK_NAMES)
def test_every_leaf_of_the_recipes_is_in_the_cache_key(name):
    """Change any setting a maker is given and its victim's key changes; a change to the clean
    victim's recipe changes the key of the attack made from it too."""
    from tests.helpers import compose_train

    full = compose_train([f"attack={name}", "trainer.precision=bf16-mixed"])  # so that precision is a leaf too
    # what the recipes are made of, resolved (changing a resolved leaf is what any override does)
    cfg = OmegaConf.create({"attack": OmegaConf.to_container(full.attack, resolve=True), "seed": full.seed,
                            "data": {"home": OmegaConf.to_container(full.data.home, resolve=True),
                                     "image_size": full.data.image_size},
                            "trainer": {"precision": full.trainer.precision}})
    base = _keys(cfg)
    assert base == _keys(full)
    clean, attacked = victim_recipes(cfg)
    from_clean = attacked is None or bool(cfg.attack.from_clean)
    for which, recipe in ((0, clean), (1, attacked)):
        if recipe is None:
            continue
        leaves = list(_leaves(recipe))
        assert len(leaves) > 15
        for path, value in leaves:
            with _changed(cfg, _config_path(path), _other(value)) as changed:
                keys = _keys(changed)
            assert keys[which] != base[which], (name, path)
            if which == 0 and attacked is not None and from_clean:
                assert keys[1] != base[1], (name, path)


@pytest.mark.parametrize("name", ATTACK_NAMES)
def test_runtime_only_settings_leave_the_cache_keys_alone(name):
    """Where files live, how the run is spread over devices, the decoder and the evaluation
    make no other victim (except decoder settings an attack config copies into its own node,
    e.g. the adaptive attack's surrogate)."""
    from tests.helpers import compose_train

    cfg = compose_train([f"attack={name}"])
    base = _keys(cfg)
    attack = OmegaConf.to_container(cfg.attack, resolve=True)
    runtime = [("trainer", "devices"), ("trainer", "accelerator"), ("trainer", "enable_progress_bar"),
               ("trainer", "max_epochs"), ("data", "home", "root"), ("data", "root"), ("data", "download"),
               ("data", "num_workers"), ("data", "batch_size"), ("data", "poison_rate"), ("data", "val_fraction"),
               ("victim_lock_timeout",), ("eval_after_train",), *[("paths", k) for k in cfg.paths],
               *[("eval", *path) for path, _ in _leaves(OmegaConf.to_container(cfg.eval, resolve=False))]]
    decoder = [("decoder", *path) for path, _ in _leaves(OmegaConf.to_container(cfg.decoder, resolve=False))]
    copies_decoder = "${decoder." in OmegaConf.to_yaml(cfg.attack)  # unresolved: the attack's interpolations
    assert copies_decoder == (name == "adaptive_dede") and len(runtime) > 40 and len(decoder) > 20
    if copies_decoder:  # one by one: those the attack copies into its own node are its settings now
        for path in decoder:
            with _changed(cfg, path, _other(OmegaConf.select(cfg, ".".join(map(str, path))))) as changed:
                if OmegaConf.to_container(changed.attack, resolve=True) == attack:
                    assert _keys(changed) == base, (name, path)
        decoder = []
    with ExitStack() as stack:  # all at once (each alone is as cheap to check as all, and cannot cancel out)
        for path in runtime + decoder:
            value = OmegaConf.select(cfg, ".".join(map(str, path)), throw_on_resolution_failure=False)
            stack.enter_context(_changed(cfg, path, _other(value)))
        assert _keys(cfg) == base


@pytest.mark.parametrize("name", ["clip", "badclip"])
def test_clip_captions_are_in_the_clean_clip_key_and_in_the_attacks(name):
    from tests.helpers import compose_train

    cfg = compose_train([f"attack={name}"])
    base = _keys(cfg)
    for key, value in (("templates", ["a photo of a {}."]), ("class_names", list("abcdefghij"))):
        with _changed(cfg, ("attack", "pretrain", "captions", key), value) as changed:
            keys = _keys(changed)
        assert keys[0] != base[0] and keys[1] != base[1], key
    if name == "clip":
        assert _keys(compose_train(["attack=clean_clip"])) == (base[0], None)  # the control is the attacks' start


def test_the_maker_config_is_the_recipe_plus_runtime_parts():
    from dede.victims.recipe import maker_config
    from tests.helpers import compose_train

    cfg = compose_train(["attack=badclip", "paths.output_dir=/tmp/x", "data.num_workers=0"])
    clean, attacked = victim_recipes(cfg)
    for recipe in (clean, attacked):
        mcfg = maker_config(cfg, recipe)
        assert set(mcfg) == set(recipe) | {"trainer", "paths"}
        plain = OmegaConf.to_container(mcfg, resolve=True)
        home = {k: v for k, v in plain["data"]["home"].items() if k not in ("root", "download")}
        assert plain["attack"] == recipe["attack"] and home == recipe["data"]["home"]
        assert set(plain["data"]) == {"home", "image_size", "num_workers"}
        assert plain["paths"]["output_dir"] == "/tmp/x" and plain["trainer"]["default_root_dir"] == "/tmp/x"
        assert "max_epochs" not in plain["trainer"]
    assert set(clean["attack"]) == {"victim", "pretrain"}
    assert {"checkpoint", "checkpoint_format", "presets"}.isdisjoint(attacked["attack"])


# makers of toy attacks (tests/test_victim_cache.py as the module the YAMLs name)

def make_reading_the_decoder(cfg, victim, full, log_dir):
    return cfg.decoder.epochs


def make_reading_the_checkpoint(cfg, victim, full, log_dir):
    return cfg.attack.checkpoint


def make_writing_its_config(cfg, victim, full, log_dir):
    cfg.attack.make.shift = 2.0


def pretrain_reading_the_attack(cfg, victim, full, log_dir):
    return cfg.attack.make.shift


def make_shifting(cfg, victim, full, log_dir):
    with torch.no_grad():
        for p in full.parameters():
            p.add_(float(cfg.attack.make.shift))


def _toy_attack(tmp_path, maker, pretrain=None, from_clean=False):
    folder = tmp_path / "conf" / "attack"
    folder.mkdir(parents=True, exist_ok=True)
    pre = f"pretrain: {{maker: {{_target_: tests.test_victim_cache.{pretrain}, _partial_: true}}}}\n" if pretrain else ""
    (folder / f"{maker}.yaml").write_text(
        f"defaults:\n  - clean\n  - _self_\nname: toy\nfrom_clean: {str(from_clean).lower()}\n"
        f"maker: {{_target_: tests.test_victim_cache.{maker}, _partial_: true}}\nmake: {{shift: 0.5}}\n{pre}")
    from tests.helpers import compose_train

    return compose_train([f"hydra.searchpath=[file://{tmp_path / 'conf'}]", f"attack={maker}",
                          f"paths.cache_dir={tmp_path / 'cache'}", "attack.victim.width=4"])


@pytest.mark.parametrize("maker, error", [("make_reading_the_decoder", ConfigAttributeError),
                                          ("make_reading_the_checkpoint", ConfigAttributeError),
                                          ("make_writing_its_config", ReadonlyConfigError)])
def test_a_maker_cannot_read_or_write_outside_its_recipe(tmp_path, maker, error):
    from dede.victims.factory import obtain_victim

    with pytest.raises(error):
        obtain_victim(_toy_attack(tmp_path, maker), tmp_path / "log")
    assert not list((tmp_path / "cache" / "victims").glob("*.pt"))


def test_clean_pretraining_cannot_read_the_attack(tmp_path):
    from dede.victims.factory import obtain_victim

    cfg = _toy_attack(tmp_path, "make_shifting", pretrain="pretrain_reading_the_attack", from_clean=True)
    with pytest.raises(ConfigAttributeError, match="make"):
        obtain_victim(cfg, tmp_path / "log")


def test_the_real_clean_maker_runs_on_its_recipe_and_the_recipe_is_stored(tmp_path):
    """The clean SimCLR maker, one tiny epoch, through `obtain_victim`: it needs nothing outside
    its recipe, and the recipe is written beside the cache entry."""
    from dede.victims.factory import obtain_victim
    from tests.helpers import compose_train

    cfg = compose_train(["attack=clean", f"paths.cache_dir={tmp_path / 'cache'}", f"paths.output_dir={tmp_path}",
                         "data.home.n_train=128", "attack.pretrain.epochs=1", "attack.pretrain.batch_size=64",
                         "attack.victim.width=4", "trainer.enable_progress_bar=false"])
    info = obtain_victim(cfg, tmp_path / "log")
    assert info.made
    clean, _ = victim_recipes(cfg)
    entry = tmp_path / "cache" / "victims" / f"clean-{config_hash(clean)}.pt"
    assert info.path == str(entry)
    assert json.loads(entry.with_suffix(".json").read_text()) == clean
