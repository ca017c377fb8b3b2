"""PyTorch modules through lowbit.load (torch is optional: skipped where it is not installed)."""
import numpy as np
import pytest

import lowbit
from helpers import max_rel_err

torch = pytest.importorskip("torch")


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(8)
        self.fc = torch.nn.Linear(8, 5)
        self.drop = torch.nn.Dropout(0.5)

    def forward(self, x):
        y = torch.nn.functional.hardswish(self.bn(self.conv(x)))
        y = torch.nn.functional.interpolate(y, scale_factor=2, mode="bilinear", align_corners=False)
        y = self.drop(y.mean(dim=(2, 3)))
        return torch.softmax(self.fc(y), dim=-1)


def test_module_matches_torch():
    torch.manual_seed(0)
    m = Net()
    with torch.no_grad():
        m.bn.running_mean.uniform_(-0.2, 0.2)
        m.bn.running_var.uniform_(0.5, 1.5)
    m.train()  # lowbit exports in eval mode and restores the caller's mode
    x = torch.randn(2, 3, 16, 16)
    g = lowbit.load(m, x)
    assert m.training
    m.eval()
    with torch.no_grad():
        want = m(x).numpy()
    got = lowbit.interpret(g, {"input": x.numpy()})
    (out,) = got.values()
    assert max_rel_err(out, want) <= 1e-4
    assert "batch_norm" not in lowbit.run_passes(g, "O2").op_counts()


def test_torch_errors():
    with pytest.raises(lowbit.LowbitError, match="needs example_inputs"):
        lowbit.load(Net())
    with pytest.raises(lowbit.LowbitError, match="cannot load a int"):
        lowbit.load(3)
