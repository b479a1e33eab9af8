"""The cross-run comparison table reads evaluation folders and lays out detector x run rows."""
import json

import pytest

from dede.report.compare import comparison_rows, main


def res(auroc: float, extra: dict | None = None) -> dict:
    return {"clean_accuracy": 0.9, "asr": 0.8,
            "detectors": {"dede": {"auroc": auroc, "auroc_clean_victim": 0.5}, **(extra or {})}}


def test_rows_are_detector_by_run_and_skip_missing_detectors():
    rows = comparison_rows({"a": res(0.9, {"knn": {"auroc": 0.2}}), "b": res(0.7)}, ["auroc", "auroc_clean_victim"])
    assert [(r["detector"], r["run"], r["auroc"]) for r in rows] == [("dede", "a", 0.9), ("dede", "b", 0.7),
                                                                     ("knn", "a", 0.2)]
    assert rows[2]["auroc_clean_victim"] is None and rows[0]["ASR"] == 0.8


def test_cli_writes_the_table_and_names_a_missing_folder(tmp_path, capsys):
    (tmp_path / "r1").mkdir()
    (tmp_path / "r1" / "results.json").write_text(json.dumps(res(0.95)))
    main([f"bad={tmp_path / 'r1'}", "--keys", "auroc", "--out", str(tmp_path / "t.md")])
    assert "| dede | bad | 0.9000 | 0.8000 | 0.9500 |" in (tmp_path / "t.md").read_text()
    with pytest.raises(FileNotFoundError, match="no results.json"):
        main([f"x={tmp_path / 'nope'}"])
