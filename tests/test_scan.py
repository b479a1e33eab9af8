"""scan.py's decoder cache key and its early errors (no training)."""
import pytest

from dede.pipeline.scan import ScanError, _with_checkpoint, decoder_key
from tests.helpers import compose_train


def _key(tmp_path, overrides, content=b"weights"):
    ckpt = tmp_path / "w.pth"
    ckpt.write_bytes(content)
    cfg = _with_checkpoint(compose_train(overrides), str(ckpt))
    return decoder_key(cfg, ckpt)


def test_decoder_key_follows_what_shapes_the_decoder(tmp_path):
    base = _key(tmp_path, [])
    assert _key(tmp_path, []) == base
    assert _key(tmp_path, [], content=b"other weights") != base  # the encoder's bytes, not its path
    for change in ["decoder.epochs=3", "decoder.mask_ratio=0.75", "data.poison_rate=0.02", "attack.trigger.size=6",
                   "attack.target=3", "seed=5", "data.home.n_train=1000", "attack.victim.width=32",
                   "decoder.precision=bf16-mixed"]:
        assert _key(tmp_path, [change]) != base, change
    for same in ["data.root=/elsewhere", "data.num_workers=3", "trainer.devices=1", "eval.n_test=10",
                 "logger=csv"]:
        assert _key(tmp_path, [same]) == base, same


def test_scan_rejects_a_missing_checkpoint(tmp_path):
    with pytest.raises(ScanError, match="does not exist"):
        _with_checkpoint(compose_train([]), str(tmp_path / "nope.pth"))
