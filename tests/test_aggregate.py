import json
import math

import yaml

from dede.report.aggregate import aggregate, evaluate_multirun, is_multirun


def make_job(root, name, overrides, results=None):
    job = root / name
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    if results is not None:
        (job / "results.json").write_text(json.dumps(results))
    return job


def res(auroc, asr=0.5, ratio=0.9):
    return {"auroc": auroc, "auprc": auroc, "tpr_at_fpr_05": auroc, "clean_accuracy": 0.9, "asr": asr,
            "clean_accuracy_defended": 0.9, "asr_defended": 0.1, "train_mask_ratio": ratio}


def test_mean_and_std_over_seeds_and_failed_jobs_kept(tmp_path):
    sweep = tmp_path / "sweep"
    make_job(sweep, "0", ["decoder.mask_ratio=0.75", "seed=1"], res(0.8, ratio=0.75))
    make_job(sweep, "1", ["decoder.mask_ratio=0.75", "seed=2"], res(0.9, ratio=0.75))
    make_job(sweep, "2", ["decoder.mask_ratio=0.9", "seed=1"], res(0.95))
    make_job(sweep, "3", ["decoder.mask_ratio=0.9", "seed=2"], res(0.97))
    make_job(sweep, "10", ["decoder.mask_ratio=0.9", "seed=3"])  # failed: nothing to evaluate
    (sweep / "multirun.yaml").write_text("{}")
    assert is_multirun(sweep)

    def evaluate_job(job, out):
        raise FileNotFoundError(f"{job}/checkpoints/last.ckpt is missing")

    report = evaluate_multirun(sweep, tmp_path / "out", evaluate_job)
    assert report["n_jobs"] == 5 and report["n_failed"] == 1
    rows = {r["setting"]: r for r in report["aggregate"]}
    a, b = rows["decoder.mask_ratio=0.75"], rows["decoder.mask_ratio=0.9"]
    assert a["n_seeds"] == 2 and math.isclose(a["auroc"], 0.85) and math.isclose(a["auroc_std"], math.sqrt(0.005))
    assert b["n_seeds"] == 2 and math.isclose(b["auroc"], 0.96)
    assert [j["job"] for j in report["jobs"]] == ["0", "1", "2", "3", "10"]
    assert "last.ckpt is missing" in report["jobs"][-1]["error"]
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved["aggregate"] == report["aggregate"]
    md = (tmp_path / "out" / "results.md").read_text()
    assert "0.8500" in md and "job 10 failed" in md


def test_aggregate_single_seed_has_zero_std():
    rows = aggregate([{"overrides": ["attack=clean"], "results": res(0.5)}])
    assert rows[0]["auroc"] == 0.5 and rows[0]["auroc_std"] == 0.0


def test_all_jobs_failing_is_an_error_and_output_dir_is_skipped(tmp_path):
    import pytest

    sweep = tmp_path / "sweep"
    make_job(sweep, "0", ["seed=1"])
    (sweep / "multirun.yaml").write_text("{}")
    out = sweep / "eval"
    (out / ".hydra").mkdir(parents=True)  # evaluate.py's own run dir inside the sweep is no job

    def evaluate_job(job, out_dir):
        raise FileNotFoundError("no checkpoint")

    with pytest.raises(RuntimeError, match="no job of the multirun"):
        evaluate_multirun(sweep, out, evaluate_job)
    assert not is_multirun(tmp_path / "nothing") if (tmp_path / "nothing").mkdir() is None else True


def test_flag_rates_at_the_calibrated_threshold_are_columns(tmp_path):
    sweep = tmp_path / "sweep"
    for i, (fpr, tpr) in enumerate([(0.04, 0.9), (0.06, 0.7)]):
        make_job(sweep, str(i), ["attack=clean", f"seed={i}"],
                 res(0.9) | {"threshold": {"rule": "aux_quantile_0.95", "value": 1.0, "fpr": fpr, "tpr": tpr}})
    (sweep / "multirun.yaml").write_text("{}")
    report = evaluate_multirun(sweep, tmp_path / "out", lambda job, out: {})
    row = report["aggregate"][0]
    assert math.isclose(row["flag_rate_clean"], 0.05) and math.isclose(row["flag_rate_triggered"], 0.8)
    assert "flag_rate_clean" in (tmp_path / "out" / "results.md").read_text()


def test_clean_jobs_are_paired_with_attack_jobs_of_the_same_images(tmp_path):
    """A `clean` job on the same home data and trigger is every attack row's clean-victim control,
    seed by seed, for the main detector and for each detector both ran."""
    sweep = tmp_path / "sweep"

    def with_pairing(r, attack, key, det_auroc, trig_flag):
        return r | {"attack": attack, "pairing": key, "threshold": {"rule": "q", "value": 1.0, "tpr": trig_flag,
                                                                    "fpr": 0.05},
                    "detectors": {"dede": {"auroc": det_auroc, "flag_rate_triggered": trig_flag}}}

    make_job(sweep, "0", ["attack=badencoder", "seed=1"], with_pairing(res(0.99), "badencoder", "k1", 0.99, 0.9))
    make_job(sweep, "1", ["attack=clean", "seed=1"], with_pairing(res(0.97), "clean", "k1", 0.97, 0.8))
    make_job(sweep, "2", ["attack=badencoder", "seed=2"], with_pairing(res(0.98), "badencoder", "k1", 0.98, 0.9))
    make_job(sweep, "3", ["attack=clean", "seed=2"], with_pairing(res(0.60), "clean", "k1", 0.60, 0.1))
    make_job(sweep, "4", ["attack=ctrl", "seed=1"], with_pairing(res(0.9), "ctrl", "other-trigger", 0.9, 0.5))
    report = evaluate_multirun(sweep, tmp_path / "out", lambda job, out: None)
    jobs = {j["job"]: j["results"] for j in report["jobs"]}
    assert jobs["0"]["auroc_clean_victim"] == 0.97 and jobs["0"]["clean_victim_job"] == "1"
    assert jobs["2"]["auroc_clean_victim"] == 0.60 and jobs["2"]["flag_rate_clean_victim"] == 0.1
    assert jobs["2"]["detectors"]["dede"]["auroc_clean_victim"] == 0.60
    assert "auroc_clean_victim" not in jobs["4"]  # no clean job scored its images
    rows = {r["setting"]: r for r in report["aggregate"]}
    assert math.isclose(rows["attack=badencoder"]["auroc_clean_victim"], 0.785)
    det = {(r["setting"], r["detector"]): r for r in report["detectors"]}
    assert math.isclose(det[("attack=badencoder", "dede")]["auroc_clean_victim"], 0.785)
    assert "auroc_clean_victim" in (tmp_path / "out" / "results.md").read_text()


def test_clean_victims_pair_by_what_they_are_not_by_their_name(tmp_path):
    """A clean CLIP or a user's own clean victim (named anything) is the control; a run whose
    attack happens to be named `clean` but whose victim was attacked is not."""
    sweep = tmp_path / "sweep"

    def job(name, attack, clean, auroc, key="k"):
        r = res(auroc) | {"attack": attack, "victim_is_clean": clean, "pairing": key,
                          "threshold": {"rule": "q", "value": 1.0, "tpr": auroc / 2, "fpr": 0.05}}
        make_job(sweep, name, [f"attack={attack}", "seed=1"], r)

    job("0", "clip", False, 0.99, "clip-key")
    job("1", "my_clean_clip", True, 0.55, "clip-key")
    job("2", "badencoder", False, 0.98)
    job("3", "clean", False, 0.90)  # named clean, made by an attack maker: no control
    job("4", "simclr_seed_control", True, 0.51)
    jobs = {j["job"]: j["results"] for j in evaluate_multirun(sweep, tmp_path / "out", lambda j, o: None)["jobs"]}
    assert jobs["0"]["clean_victim_job"] == "1" and jobs["0"]["auroc_clean_victim"] == 0.55
    assert jobs["2"]["clean_victim_job"] == "4" and jobs["2"]["flag_rate_clean_victim"] == 0.255
    assert jobs["3"]["clean_victim_job"] == "4"  # it is an attacked victim: it gets the control
    assert "auroc_clean_victim" not in jobs["1"] and "auroc_clean_victim" not in jobs["4"]


def test_victim_is_clean_follows_the_config_not_the_name():
    from dede.victims.factory import victim_is_clean
    from tests.helpers import compose_train

    assert victim_is_clean(compose_train(["attack=clean"])) and victim_is_clean(compose_train(["attack=clean_clip"]))
    assert victim_is_clean(compose_train(["attack=clean", "attack.name=my_control"]))
    assert not victim_is_clean(compose_train(["attack=badencoder", "attack.name=clean"]))
    assert not victim_is_clean(compose_train(["attack=clean", "attack.checkpoint=/x/encoder.pth"]))
