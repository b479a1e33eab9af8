"""train.py and evaluate.py end to end on tiny settings (CPU, embedded data)."""
import json

import numpy as np
import pytest
import torch
import yaml

from tests.helpers import TINY, run_entry

KEYS = ["auroc", "auprc", "tpr_at_fpr_05", "clean_accuracy", "asr", "clean_accuracy_defended", "asr_defended",
        "clean_accuracy_knn", "asr_knn"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, cache_dir):
    base = tmp_path_factory.mktemp("e2e")
    run, ev = base / "train", base / "eval"
    r = run_entry("train.py", TINY + [f"hydra.run.dir={run}"], cache_dir)
    assert r.returncode == 0, r.output[-3000:]
    r = run_entry("evaluate.py", [f"run={run}", f"hydra.run.dir={ev}", "logger=csv", "eval.downstream.epochs=20"],
                  cache_dir)
    assert r.returncode == 0, r.output[-3000:]
    return run, ev, json.loads((ev / "results.json").read_text())


def test_run_directory_layout(trained):
    run, ev, _ = trained
    assert (run / ".hydra" / "config.yaml").is_file() and (run / "checkpoints" / "last.ckpt").is_file()
    assert (run / "train.log").is_file() and (run / "csv" / "metrics.csv").is_file()
    cfg = yaml.safe_load((run / ".hydra" / "config.yaml").read_text())
    assert cfg["attack"]["name"] == "badencoder" and cfg["data"]["name"] == "synthetic"
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    # the decoder checkpoint holds the decoder only, never the frozen victim
    assert all(k.startswith("model.") for k in ckpt["state_dict"])
    for f in ["results.json", "results.md", "roc.png", "score_hist.png", "reconstructions.png"]:
        assert (ev / f).is_file(), f
    assert not (run / "results.json").exists()  # results land in evaluate's own run directory


def test_results_contract(trained):
    _, ev, res = trained
    for k in KEYS:
        assert 0.0 <= res[k] <= 1.0, k
    assert set(res["threshold"]) == {"rule", "value", "tpr", "fpr"}
    assert res["n_clean"] == 500 and res["n_triggered"] == 450  # triggered: test images outside the target class
    assert res["attack"] == "badencoder" and "train" in res["config"]
    md = (ev / "results.md").read_text()
    assert "auroc" in md and f"{res['auroc']:.4f}" in md


def test_backdoor_works_and_dede_detects_it(trained):
    _, _, res = trained
    assert res["clean_accuracy"] >= 0.7
    assert res["asr"] >= 0.8  # the made victim is really backdoored
    # the k-NN classifier is fooled too (measured 0.67 on this smaller victim; a clean victim gives 0)
    assert res["asr_knn"] >= 0.5 and res["clean_accuracy_knn"] >= 0.7
    assert res["auroc"] >= 0.95  # far above chance
    assert res["tpr_at_fpr_05"] >= 0.8
    # at the embedding level the backdoor maps triggered images to one point; the patch's twin does not
    assert res["concentration_triggered"] >= 0.9 > res["concentration_clean"] + 0.2
    assert res["concentration_benign"] < res["concentration_triggered"] - 0.2
    assert res["asr_defended"] <= 0.2  # filtering removes most successful attacks
    assert res["clean_accuracy_defended"] >= res["clean_accuracy"] - 0.05
    assert res["threshold"]["fpr"] <= 0.15  # calibrated on held-out auxiliary data only


def test_second_run_reuses_cached_victim_resumes_and_trains_the_decoder_in_bf16(trained, tmp_path, cache_dir):
    run = tmp_path / "again"
    short = TINY + [f"hydra.run.dir={run}", "+trainer.limit_train_batches=2", "+trainer.limit_val_batches=1",
                    "decoder.precision=bf16-mixed"]
    r = run_entry("train.py", short + ["decoder.epochs=1"], cache_dir)
    assert r.returncode == 0, r.output[-3000:]
    assert "reusing cached badencoder victim" in r.output and "making" not in r.output
    assert "bfloat16 Automatic Mixed Precision" in r.output  # the decoder's precision; the victim stays fp32
    victim = json.loads((run / "victim.json").read_text())
    assert victim["made_in_this_run"] is False
    # an interrupted / extended run resumes from checkpoints/last.ckpt
    r = run_entry("train.py", short + ["decoder.epochs=2"], cache_dir)
    assert r.returncode == 0, r.output[-3000:]
    assert "resuming from" in r.output
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["epoch"] == 1 and ckpt["global_step"] == 4


def test_decoder_uses_the_victim_embedding(trained):
    """Reconstructions at the test ratio come from the embedding: with the embeddings of other
    images the clean reconstruction error must grow clearly."""
    from dede.detect import dede_scores
    from dede.pipeline.evaluate import load_decoder
    from dede.victims import build_victim, load_victim_checkpoint
    from dede.data import home_split

    run, _, _ = trained
    cfg = yaml.safe_load((run / "resolved_config.yaml").read_text())
    vinfo = json.loads((run / "victim.json").read_text())
    victim, full = build_victim(**cfg["attack"]["victim"])
    load_victim_checkpoint(vinfo["path"], vinfo["format"], full)
    victim.eval()
    model = load_decoder(run, victim.embed_dim, torch.device("cpu")).model
    from omegaconf import OmegaConf

    x = home_split(OmegaConf.create(cfg), "test").images[:200]
    emb = victim.embed(x.float() / 255)
    own = dede_scores(model, victim, x, 0.99, embeddings=emb)
    shuffled = dede_scores(model, victim, x, 0.99, embeddings=emb.roll(1, 0))
    assert shuffled.mean() > 1.5 * own.mean()


def test_multirun_gives_each_job_its_own_directory(trained, tmp_path, cache_dir):
    sweep = tmp_path / "sweep"
    r = run_entry("train.py", ["-m", "decoder.mask_ratio=0.75,0.9", "decoder.patch_size=8", *TINY,
                               "decoder.epochs=1", "+trainer.limit_train_batches=1", "+trainer.limit_val_batches=1",
                               "eval_after_train=true", "eval.downstream.enabled=false", "eval.plots=false",
                               "eval.n_test=100", f"hydra.sweep.dir={sweep}"], cache_dir)
    assert r.returncode == 0, r.output[-3000:]
    jobs = sorted(p for p in sweep.iterdir() if (p / ".hydra").is_dir())
    assert len(jobs) == 2
    seen = set()
    for job in jobs:
        assert (job / "checkpoints" / "last.ckpt").is_file()
        cfg = yaml.safe_load((job / "resolved_config.yaml").read_text())
        seen.add((cfg["decoder"]["mask_ratio"], cfg["decoder"]["patch_size"]))
        hp = torch.load(job / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["hyper_parameters"]
        assert hp["mask_ratio"] == cfg["decoder"]["mask_ratio"] and hp["model"]["patch_size"] == cfg["decoder"]["patch_size"]
    assert seen == {(0.75, 8), (0.9, 8)}
    for job in jobs:  # each job evaluated itself into its own directory
        assert 0 <= json.loads((job / "results.json").read_text())["auroc"] <= 1
    # evaluate.py over the multirun directory: one table over all jobs
    r = run_entry("evaluate.py", [f"run={sweep}", f"hydra.run.dir={tmp_path}/agg", "logger=csv"], cache_dir)
    assert r.returncode == 0, r.output[-3000:]
    agg = json.loads((tmp_path / "agg" / "results.json").read_text())
    assert agg["n_jobs"] == 2 and agg["n_failed"] == 0 and len(agg["aggregate"]) == 2
    assert (tmp_path / "agg" / "auroc_vs_mask_ratio.png").is_file()


@pytest.mark.slow  # two interpreters making a victim together: minutes on a 2-core machine
def test_two_process_ddp_on_cpu(tmp_path):
    """Both ranks make the (uncached) victim together and train the decoder; rank zero publishes."""
    run, cache = tmp_path / "ddp", tmp_path / "cache"
    small = ["data.home.n_train=512", "data.home.n_test=256", "data.n=512", "attack.pretrain.epochs=1",
             "attack.pretrain.batch_size=64", "attack.make.epochs=1"]
    r = run_entry("train.py", TINY + small + ["trainer=ddp_sim", "decoder.epochs=1", "+trainer.limit_train_batches=2",
                                              "+trainer.limit_val_batches=1", f"hydra.run.dir={run}"], cache)
    assert r.returncode == 0, r.output[-3000:]
    assert "[rank: 1]" in r.output
    made = sorted(p.name for p in (cache / "victims").glob("*.pt"))
    assert [n.split("-")[0] for n in made] == ["badencoder", "clean"], made
    assert json.loads((run / "victim.json").read_text())["path"].endswith(made[0])
    assert "distributed_backend=gloo" in r.output or "world_size: 2" in r.output.lower() or "2 processes" in r.output
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 2


DETECTOR_FIELDS = {"auroc", "auprc", "tpr_at_fpr_05", "images_per_second", "flag_rate_clean",
                   "clean_accuracy_defended", "asr_defended", "auroc_vs_benign", "flag_rate_benign", "asr_benign",
                   "auroc_clean_victim", "flag_rate_clean_victim"}


@pytest.fixture(scope="module")
def clean_run(tmp_path_factory, cache_dir):
    """The clean control of the `trained` run: same home data, same trigger, no backdoor."""
    run = tmp_path_factory.mktemp("e2e_clean") / "train"
    tiny = [o for o in TINY if not o.startswith("attack.make.")]  # a clean victim is not attacked
    r = run_entry("train.py", tiny + ["attack=clean", f"hydra.run.dir={run}"], cache_dir)
    assert r.returncode == 0, r.output[-3000:]
    assert "reusing cached clean victim" in r.output
    return run


def test_detector_comparison_with_controls(trained, clean_run, tmp_path, cache_dir):
    """Every detector gets both controls; the backdoor-specific variant keeps DeDe's detection on
    the backdoored victim and loses it on the clean one, where the paper's score does not."""
    run, _, _ = trained
    out = tmp_path / "cmp"
    r = run_entry("evaluate.py", [f"run={run}", f"control_run={clean_run}", f"hydra.run.dir={out}", "logger=csv",
                                  "detectors=all", "eval.n_test=250", "eval.downstream.epochs=10",
                                  "eval.downstream.n_train=600",
                                  "eval.model_level.enabled=true",
                                  "eval.model_level.decree_steps=30", "eval.model_level.decree_images=16"], cache_dir)
    assert r.returncode == 0, r.output[-3000:]
    res = json.loads((out / "results.json").read_text())
    table = res["detectors"]
    assert set(table) == {"dede", "dede_patch_top", "dede_ablate", "dede_transplant", "transplant_occlusion", "dao",
                          "slof", "knn", "mahalanobis", "feature_norm", "lid", "isolation_forest", "mask_consistency",
                          "teco", "scale_up", "strip", "transplant_any", "cascade"}
    assert "dede_ref" in res["detectors_skipped"]  # no eval.reference.run given
    for name, row in table.items():
        assert DETECTOR_FIELDS <= set(row), name
        assert 0 <= row["auroc"] <= 1 and row["images_per_second"] > 0
    for k in ["auroc_vs_benign", "flag_rate_benign", "asr_benign", "auroc_clean_victim", "flag_rate_clean_victim"]:
        assert res[k] == table["dede"][k], k  # the main detector's controls at the top level
    assert res["asr_benign"] <= 0.3  # the benign patch does not fire the backdoor (measured 0.02)
    # the paper's score flags the patch on the clean victim as well (measured AUROC 0.98)
    assert table["dede"]["auroc"] >= 0.95 and table["dede"]["auroc_clean_victim"] >= 0.9
    # the transplant variant: the backdoor, not the patch (measured 1.000 / 1.000 / 0.07, ASR after 0.0)
    t = table["dede_transplant"]
    assert t["auroc"] >= 0.95 and t["auroc_vs_benign"] >= 0.9 and t["auroc_clean_victim"] <= 0.65
    assert t["flag_rate_clean_victim"] <= 0.2 and t["asr_defended"] <= 0.1
    scores = np.load(out / "scores.npz")
    # the same scores as the main report on the same images (the first 250 of its 500 test images)
    before = np.load(trained[1] / "scores.npz")
    for part in ["clean", "triggered"]:
        n = len(scores[f"dede/{part}"])
        assert 0 < n < len(before[f"dede/{part}"])
        assert np.allclose(scores[f"dede/{part}"], before[f"dede/{part}"][:n], rtol=1e-4), part
    for name in table:
        for part in ["clean", "triggered", "benign", "calibration", "train"]:
            assert len(scores[f"{name}/{part}"]) > 0, (name, part)
        assert len(scores[f"clean_victim/{name}/triggered"]) == res["n_triggered"]
    assert "decree" in res["model_level"] and 0 <= res["model_level"]["decree"]["mask_l1_norm"] <= 1
    assert res["model_level"]["asset"]["n_poisoned"] > 0 and 0 <= res["model_level"]["asset"]["auroc"] <= 1
    md = (out / "results.md").read_text()
    assert "Detector comparison" in md and "slof" in md and "DECREE" in md and "auroc_clean_victim" in md
    # the clean victim's detectors flag about their nominal 5 % of its clean images, each at the
    # threshold calibrated on its own auxiliary data (the honest-encoder check)
    for name, row in table.items():
        assert row["flag_rate_clean_victim_clean"] <= 0.15, (name, row["flag_rate_clean_victim_clean"])


def test_unknown_and_unusable_detectors_fail_before_any_work(trained, tmp_path):
    from omegaconf import OmegaConf

    from dede.pipeline.evaluate import evaluate_run
    from tests.helpers import CONF_DIR

    run, _, _ = trained
    e = OmegaConf.load(CONF_DIR / "eval" / "default.yaml")
    with pytest.raises(ValueError, match="unknown detector"):
        evaluate_run(run, e, tmp_path / "bad", None, ["oracle"])
    with pytest.raises(ValueError, match="eval.reference.run"):
        evaluate_run(run, e, tmp_path / "bad2", None, ["dede_ref"])
    assert not (tmp_path / "bad").exists() and not (tmp_path / "bad2").exists()


@pytest.mark.slow  # its flag rates are asserted by test_detector_comparison_with_controls (the control)
def test_clean_victim_is_not_flagged(clean_run, tmp_path, cache_dir):
    """An honest encoder: every detector flags about its nominal 5 % of clean images."""
    out = tmp_path / "clean_eval"
    r = run_entry("evaluate.py", [f"run={clean_run}", f"hydra.run.dir={out}", "logger=csv", "detectors=all",
                                  "eval.downstream.epochs=10", "eval.downstream.n_train=1000"], cache_dir)
    assert r.returncode == 0, r.output[-3000:]
    res = json.loads((out / "results.json").read_text())
    assert res["attack"] == "clean" and res["asr"] < 0.3  # no backdoor to speak of
    for name, row in res["detectors"].items():
        assert row["flag_rate_clean"] <= 0.15, (name, row["flag_rate_clean"])


def test_python_api_scores_with_the_runs_calibrated_threshold(trained):
    """dede.load_detector: a fitted detector and its threshold, without Hydra."""
    from dede import load_detector

    run, ev, res = trained
    det = load_detector(ev, "dede")  # from the evaluation: its settings and its threshold
    assert det.threshold == pytest.approx(res["detectors"]["dede"]["threshold"])
    cal = det.ctx.calibration
    clean = cal.images[:64]
    trig = cal.subset(torch.arange(64)).triggered(det.ctx.trigger).images
    s_clean, f_clean = det(clean)
    s_trig, f_trig = det(trig.float() / 255)  # float [0, 1] images score as their uint8 originals
    assert s_clean.shape == (64,) and f_clean.dtype == torch.bool
    assert torch.allclose(s_trig, det(trig)[0], rtol=1e-4, atol=1e-4)
    assert f_clean.float().mean() <= 0.2 and f_trig.float().mean() >= 0.8
    # from the train run: fitted and calibrated anew on its held-out auxiliary images, same threshold
    again = load_detector(run, "dede")
    assert again.threshold == pytest.approx(det.threshold, rel=1e-4)
    with pytest.raises(ValueError, match="takes 32x32 images"):
        det(torch.zeros(2, 3, 16, 16))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        det(torch.full((2, 3, 32, 32), 3.0))
    with pytest.raises(ValueError, match="unknown detector"):
        load_detector(run, "no_such_detector")


def test_python_api_transplant_occlusion(trained):
    from dede import load_detector

    run, _, _ = trained
    det = load_detector(run, "transplant_occlusion", quantile=0.9)
    cal = det.ctx.calibration
    idx = torch.nonzero(cal.labels != det.ctx.target)[:24, 0]
    s_clean, _ = det(cal.images[idx])
    s_trig, flags = det(cal.subset(idx).triggered(det.ctx.trigger).images)
    assert float((s_trig[:, None] > s_clean[None]).float().mean()) >= 0.9  # AUROC on these 24 + 24
    assert flags.float().mean() >= 0.8


SCAN_TINY = ["logger=csv", "data.home.n_train=2000", "data.home.n_test=300", "data.batch_size=32", "decoder.epochs=3",
             "decoder.embed_dim=64", "decoder.depth=2", "decoder.decoder_depth=1", "decoder.num_heads=2",
             "trainer.enable_progress_bar=false", "eval.downstream.epochs=10", "eval.plots=false"]


def test_scan_a_checkpoint_with_its_clean_control(trained, tmp_path, cache_dir):
    """scan.py: a BadEncoder-format checkpoint and a clean one of the same architecture -> decoders,
    every detector with both controls, the report; a second scan reuses both decoders."""
    run, _, _ = trained
    suspect = json.loads((run / "victim.json").read_text())["path"]
    clean = next((cache_dir / "victims").glob("clean-*.pt"))
    args = SCAN_TINY + [f"checkpoint={suspect}", f"control_checkpoint={clean}", f"hydra.run.dir={tmp_path / 's1'}"]
    r = run_entry("scan.py", args, cache_dir)
    assert r.returncode == 0, r.output[-3000:]
    res = json.loads((tmp_path / "s1" / "eval" / "results.json").read_text())
    assert res["main_detector"] == "transplant_occlusion" and set(res["detectors"]) == {"transplant_occlusion", "dede"}
    row = res["detectors"]["transplant_occlusion"]
    assert row["auroc"] >= 0.9 and row["auroc_vs_benign"] >= 0.9 and "auroc_clean_victim" in row
    assert res["auroc"] == row["auroc"]  # the top level is the main detector's row
    assert "auroc_clean_victim" in r.output  # the printed table
    r = run_entry("scan.py", args[:-1] + [f"hydra.run.dir={tmp_path / 's2'}"], cache_dir)
    assert r.returncode == 0, r.output[-3000:]
    assert r.output.count("reusing the decoder") == 2 and "training the DeDe decoder" not in r.output


def test_scan_a_timm_model_by_name(tmp_path, cache_dir):
    import timm

    weights = tmp_path / "resnet10t.pth"
    torch.save(timm.create_model("resnet10t", pretrained=False).state_dict(), weights)
    args = SCAN_TINY + ["attack=external", "attack.victim.arch=timm", "attack.victim.model=resnet10t",
                        f"checkpoint={weights}", "decoder.epochs=1", "eval.n_test=100", "detectors=[dede]",
                        "eval.main_detector=dede", f"hydra.run.dir={tmp_path / 'scan'}"]
    r = run_entry("scan.py", args, cache_dir)
    assert r.returncode == 0, r.output[-3000:]
    res = json.loads((tmp_path / "scan" / "eval" / "results.json").read_text())
    assert res["attack"] == "external" and 0 <= res["auroc"] <= 1
    assert "no control_checkpoint" in r.output
    r = run_entry("scan.py", SCAN_TINY + ["attack=external", "attack.victim.arch=timm", "attack.victim.model=resnet10t",
                                          f"checkpoint={tmp_path / 'missing.pth'}"], cache_dir)
    assert r.returncode != 0 and "missing.pth does not exist" in r.output
