"""Any timm model as a backbone."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import timm
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

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
        """The model's stages as timm's ``feature_info`` draws them, input side first.

        Stage ``i`` holds every module that runs after stage ``i - 1``'s boundary module up to
        and including its own (ResNet: stage 0 is conv1, bn1, act1; stage 1 maxpool and
        layer1; ViT: one block each, stage 0 with the patch embedding and the class and
        position tokens), so freezing stages ``0..k`` freezes the whole input side up to
        boundary ``k``, and a probe of stage ``k`` reads the boundary's output. Modules after
        the last boundary (final norm, pooling) belong to no stage.
        """
        info = getattr(self.model, "feature_info", None)
        boundaries = [entry["module"] for entry in info or [] if isinstance(entry, dict)]
        if not boundaries:
            raise ConfigError(
                f"The timm model {type(self.model).__name__} publishes no feature_info, so its "
                "stages are unknown; probe the final features (method.stage=null) and fine-tune "
                "without method.freeze_stages."
            )
        stages: list[nn.Module] = []
        members: list[nn.Module] = []
        params: dict[str, nn.Parameter] = {}
        for name, item in _in_order(self.model, "", set(boundaries)):
            if isinstance(item, nn.Parameter):
                params[name.replace(".", "_")] = item
                continue
            members.append(item)
            if name in boundaries:
                stages.append(TimmStage(name, members, params))
                members, params = [], {}
        return stages


class TimmStage(nn.Module):
    """The modules of one stage of a timm model (see :meth:`TimmBackbone.stages`).

    It is never called: ``requires_grad_``, ``train`` and ``eval`` reach its members and the
    parameters it holds, which it shares with the model; a forward hook registered on it goes
    on the boundary module, the last member, whose output is the stage's output.
    """

    def __init__(
        self, boundary: str, members: list[nn.Module], params: dict[str, nn.Parameter]
    ) -> None:
        super().__init__()
        self.boundary = boundary
        self.members = nn.ModuleList(members)
        for key, param in params.items():
            self.register_parameter(key, param)

    def register_forward_hook(self, hook: Any, **kwargs: Any) -> RemovableHandle:  # type: ignore[override]
        return self.members[-1].register_forward_hook(hook, **kwargs)

    def extra_repr(self) -> str:
        return f"boundary={self.boundary!r}"


def _in_order(
    module: nn.Module, prefix: str, boundaries: set[str]
) -> Iterator[tuple[str, nn.Module | nn.Parameter]]:
    """``module``'s direct parameters, then its children in registration order, a child opened
    up when a boundary lies inside it."""
    for name, param in module.named_parameters(recurse=False):
        yield prefix + name, param
    for name, child in module.named_children():
        full = prefix + name
        if full not in boundaries and any(b.startswith(full + ".") for b in boundaries):
            yield from _in_order(child, full + ".", boundaries)
        else:
            yield full, child
