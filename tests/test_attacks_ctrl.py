import pytest
import torch

from dede.attacks.ctrl import poison_target_class
from dede.data.datasets import ImageSet
from dede.triggers import FrequencyTrigger


def _home(n=400, classes=10):
    g = torch.Generator().manual_seed(0)
    imgs = torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8)
    return ImageSet(imgs, torch.arange(n) % classes, name="toy")


def test_ctrl_poisons_a_share_of_the_whole_set_drawn_from_the_target_class_only():
    home = _home()
    out = poison_target_class(home, FrequencyTrigger(), rate=0.05, target=3, seed=0)
    assert int(out.poisoned.sum()) == 20  # 5% of 400, all of them class 3
    assert (out.labels[out.poisoned] == 3).all()
    assert torch.equal(out.labels, home.labels)  # clean label: labels untouched
    changed = (out.images != home.images).flatten(1).any(1)
    assert torch.equal(changed, out.poisoned)


def test_ctrl_poison_rate_beyond_the_target_class_is_refused():
    with pytest.raises(ValueError, match="target class 3 has only 40"):
        poison_target_class(_home(), FrequencyTrigger(), rate=0.2, target=3, seed=0)
