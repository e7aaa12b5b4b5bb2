"""Any timm model as a backbone."""

from __future__ import annotations

from typing import Any

import timm
from torch import Tensor, nn

from deeprecipe.errors import ConfigError, DataNotFoundError
from deeprecipe.models.base import Backbone


class TimmBackbone(Backbone):
    """``timm.create_model(name, in_chans=..., num_classes=0)``: a headless, pooled timm model.

    Args:
        name: any name from ``timm.list_models()``.
        in_chans: input channels.
        image_size: passed as ``img_size`` to models that take one (ViT and friends).
        pretrained: load timm's pretrained weights (needs internet or a local HF cache).
        **kwargs: passed on to ``timm.create_model`` (e.g. ``patch_size``, ``drop_path_rate``).
    """

    def __init__(
        self,
        name: str,
        in_chans: int = 3,
        image_size: int | None = None,
        pretrained: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        if not timm.is_model(name):
            raise ConfigError(
                f"model.name={name!r} is not a timm model; list them with "
                "`python -c \"import timm; print(timm.list_models('*resnet*'))\"`."
            )
        takes_img_size = any(family in name for family in ("vit", "deit", "beit", "eva"))
        if image_size is not None and takes_img_size:
            kwargs.setdefault("img_size", image_size)
        try:
            self.model = timm.create_model(
                name, pretrained=pretrained, in_chans=in_chans, num_classes=0, **kwargs
            )
        except (OSError, RuntimeError) as error:
            if not pretrained:
                raise
            raise DataNotFoundError(
                f"Cannot load timm's pretrained weights for model {name!r}: no network ({error})."
                " Download them once with internet (they stay in the Hugging Face cache, where "
                "offline runs find them; HF_HUB_OFFLINE=1 skips the retries), or pass "
                "pretrained=PATH (a suite checkpoint of this model) with model.pretrained=false."
            ) from error
        self.num_features = int(getattr(self.model, "num_features"))  # noqa: B009 (typed for mypy)

    def forward_features(self, x: Tensor) -> Tensor:  # (B, C, H, W) -> (B, F)
        return self.model(x)

    def stages(self) -> list[nn.Module]:
        raise ConfigError(
            "Stage-wise access is not available for timm backbones; use an in-house model or "
            "probe the final features."
        )
