"""The warp reachability probe's mechanics (scripts/warp_reach_probe.py): a zero field leaves the
hosts as they are, a field's displacement is bounded by dmax, and the fit raises the hosts' cosine
to a suspect that a warp of them can reach."""
import runpy

import torch
from torch import nn

from tests.helpers import ROOT

probe = runpy.run_path(f"{ROOT}/scripts/warp_reach_probe.py")


def test_zero_field_is_the_identity_and_displacement_is_bounded():
    hosts = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    same = probe["warp_hosts"](hosts, torch.zeros(2, 2, 4, 4), dmax=2.0)
    assert same.shape == (6, 3, 16, 16)
    assert torch.allclose(same, hosts.repeat(2, 1, 1, 1), atol=1e-5)
    # a horizontal ramp of one step per pixel: a value moves by at most dmax steps
    ramp = torch.arange(16.0).view(1, 1, 1, 16).expand(1, 3, 16, 16)
    moved = probe["warp_hosts"](ramp, torch.full((1, 2, 4, 4), 50.0), dmax=2.0)
    shift = (moved - ramp)[..., 2:-2]  # away from the clamped border
    assert shift.abs().max() <= 2.0 + 1e-4 and shift.abs().max() > 1.9


def test_fit_gains_on_a_reachable_suspect_and_not_on_an_unreachable_one():
    """An encoder that reads only a pixel column's position (a warp moves it): a suspect made by
    shifting the hosts is reachable; a suspect with another content is not."""
    torch.manual_seed(0)
    x = torch.zeros(4, 3, 16, 16)
    x[..., 7] = 1.0  # a bright column at 7
    shifted = torch.roll(x[:1], 1, dims=-1)  # the same column at 8
    encoder = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 8))
    other = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    gain = probe["reach_gain"](encoder, torch.cat([shifted, other]), x, dmax=2.0, steps=60, lr=0.2)
    assert gain[0] > 0.05 and gain[0] > gain[1] + 0.05, gain
