"""A model INT8 breaks in one layer and only there, for the sensitivity tests (copied as a user's factory file
by the own-model test, imported by the others).

Three Linear layers on 16 features. Hidden unit 31 is always 0 after the ReLU, so a weight of 100 on it changes
nothing in float; per-channel INT8 scales each row of the middle layer to that 100, and its real weights (0.3)
round to 0. The other layers are identities whose outputs keep wide margins, so INT8 does not change their
top-1 class.
"""

import torch
from torch import nn


def sensitive():
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 10))


def weights():
    m = sensitive()
    with torch.no_grad():
        for layer in (m[0], m[2], m[4]):
            layer.weight.zero_()
            layer.bias.zero_()
        m[0].weight[:16, :16] = torch.eye(16)
        m[0].bias[31] = -1.0
        m[2].weight[:16, :16] = 0.3 * torch.eye(16)
        m[2].weight[:, 31] = 100.0
        m[4].weight[:, :10] = torch.eye(10)
    return m.state_dict()
