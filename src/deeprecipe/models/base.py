"""The backbone contract every model meets (timm-style).

A backbone is a plain ``nn.Module`` without a classifier:

- ``num_features``: width of the pooled feature vector;
- ``forward_features(x) -> (B, num_features)``: pooled features; ``forward`` is the same;
- ``stages() -> list[nn.Module]``: the backbone's stages in input-to-output order, the one
  documented way methods reach inside (stage-wise probes, freezing up to stage k).

Heads belong to the method that trains the backbone.
"""

from __future__ import annotations

from torch import Tensor, nn


class Backbone(nn.Module):
    """Base class of the in-house backbones; see the module docstring for the contract."""

    num_features: int

    def forward_features(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_features(x)

    def stages(self) -> list[nn.Module]:
        raise NotImplementedError
