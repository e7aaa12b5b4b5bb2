"""Finite-difference gradient checks of the suite's own layers, losses and augmentations.

The lecture's first answer to "training diverges" after the learning rate: the backward pass may
be buggy, so check it numerically. Every component whose code lives in this suite goes through
``torch.autograd.gradcheck`` in float64 (analytical gradients from backward against central
finite differences), with respect to its floating-point inputs and its parameters:

- model layers: every module of the composed method (``model=NAME``: the method, its backbone,
  the backbone's own blocks, the input normalization) whose class is defined in ``deeprecipe``,
  on the inputs it receives in one forward pass of 2 images of the data's shape; each distinct
  configuration once;
- augmentations: every class exported by ``deeprecipe.augment`` that builds from its defaults,
  on 2 RGB 8x8 images;
- losses: every function exported by ``deeprecipe.losses``, on small random inputs made from its
  signature (tensors named ``y`` or ``labels`` become class indices).

Randomness (dropout, random augmentation) is frozen per call, since gradcheck needs a
deterministic function. Checks with at most ``--exhaustive-limit`` input and parameter elements
compare the full Jacobian (``gradcheck``); bigger ones compare random projections ``v^T J u`` of
it, as gradcheck's fast mode does, which still catches a wrong backward with near certainty.
Modules are checked a hair (``JITTER``) away from their actual inputs and weights: ReLU outputs
and zero-initialized weights (zero-init residual blocks) put values exactly on ReLU kinks, where
backward and finite differences rightly disagree. Components without a floating-point input, or
whose inputs cannot be built, are listed as skipped with the reason.

Usage::

    python -m deeprecipe.recipe gradcheck [model=NAME] [data=NAME] [--exhaustive-limit 256]
"""

from __future__ import annotations

import argparse
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from torch import Tensor, nn
from torch.autograd.gradcheck import GradcheckError
from torch.func import functional_call

from deeprecipe import augment, losses
from deeprecipe.callbacks.layer_guard import floating_tensors
from deeprecipe.methods.base import BaseMethod
from deeprecipe.recipe.common import StepResult, compose_step
from deeprecipe.recipe.model_report import data_shape
from deeprecipe.train import build

STEP = "gradcheck"
BATCH = 2  # images per forward pass; >1 so that batch norm has a batch
NUM_CLASSES = 5  # width of the loss inputs and class count of the labels
GENERATED_BATCH = 4  # rows of the loss inputs
JITTER = 1e-3  # how far from a module's actual inputs and weights it is checked
# status of a component whose backward cannot run at all: not a wrong gradient, and harmless for
# augmentations (applied without gradients), so it does not fail the step
NO_BACKWARD = "no backward"
# Losses whose gradient is, by design, not the derivative of their value: finite differences
# cannot check them.
STOP_GRADIENT = {
    "bootstrap_cross_entropy": "its target mixes in its own detached prediction (by design)",
}


@dataclass
class Check:
    """Outcome of one component: ``pass``, ``FAIL``, ``skipped`` or :data:`NO_BACKWARD`, and
    what to know about it."""

    component: str
    kind: str  # model, augment or loss
    status: str
    note: str


def check_function(
    component: str,
    kind: str,
    function: Callable[..., Any],
    inputs: tuple[Any, ...],
    exhaustive_limit: int = 256,
) -> Check:
    """gradcheck of ``function(*inputs)`` w.r.t. its floating-point tensor inputs.

    Other inputs (labels, flags) are held fixed; outputs that do not depend differentiably on the
    inputs are left out; the global RNG is reseeded identically for every call.
    """
    positions = [i for i, x in enumerate(inputs) if _floating(x)]
    if not positions:
        return Check(component, kind, "skipped", "no floating-point tensor input")
    leaves = tuple(inputs[i].detach().double().requires_grad_() for i in positions)

    def frozen(*values: Tensor) -> tuple[Tensor, ...]:
        arguments = list(inputs)
        for position, value in zip(positions, values, strict=True):
            arguments[position] = value.clone()  # the component may work in place
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            output = function(*arguments)
        return tuple(t for t in floating_tensors(output) if t.requires_grad)

    try:
        differentiable = frozen(*leaves)
    except Exception as error:  # the generated inputs do not fit the component
        return Check(component, kind, "skipped", f"cannot run on generated inputs: {error}")
    if not differentiable:
        return Check(component, kind, "skipped", "output does not depend on the inputs")
    elements = sum(leaf.numel() for leaf in leaves)
    full = elements <= exhaustive_limit
    mode = f"{'full' if full else 'directional'} check, {elements:,} elements"
    # A component that computes in float32 (bf16-safe losses cast up to it) cannot be checked at
    # float64 precision; its finite differences take a larger step and a looser tolerance.
    single = any(t.dtype != torch.float64 for t in differentiable)
    eps, atol, rtol = (1e-3, 1e-3, 1e-2) if single else (1e-6, 1e-5, 1e-3)
    mode += ", float32 inside" if single else ""
    try:
        if full:
            torch.autograd.gradcheck(frozen, leaves, eps=eps, atol=atol, rtol=rtol)
            mismatch = None
        else:
            mismatch = directional_check(frozen, leaves, eps, atol, rtol)
    except GradcheckError as error:
        mismatch = " ".join(str(error).split("\n")[:3]).strip()
    except RuntimeError as error:  # e.g. an op that changes a tensor backward needs, in place
        note = f"{mode}: backward raised: {str(error)[:160]}"
        return Check(component, kind, NO_BACKWARD, note)
    if mismatch:
        return Check(component, kind, "FAIL", f"{mode}: {mismatch}")
    return Check(component, kind, "pass", mode)


def directional_check(
    function: Callable[..., tuple[Tensor, ...]],
    leaves: tuple[Tensor, ...],
    eps: float,
    atol: float,
    rtol: float,
    directions: int = 2,
) -> str | None:
    """Compare ``v^T J u`` from backward with its central finite difference along ``u``, for
    random unit directions ``u`` (over all inputs at once) and random output weights ``v``;
    return the mismatch, or None.

    The check of gradcheck's fast mode, written here because on a mismatch gradcheck computes
    the whole Jacobian for its message: hours for a million parameters.
    """
    outputs = function(*leaves)
    for _ in range(directions):
        steps = [torch.randn_like(leaf) for leaf in leaves]
        norm = torch.linalg.vector_norm(torch.stack([step.norm() for step in steps]))
        steps = [step / norm for step in steps]  # one unit direction over all inputs
        weights = [torch.randn_like(output) for output in outputs]
        grads = torch.autograd.grad(outputs, leaves, weights, retain_graph=True, allow_unused=True)
        analytical = sum(
            float((g * u).sum()) for g, u in zip(grads, steps, strict=True) if g is not None
        )
        plus = function(*(leaf + eps * u for leaf, u in zip(leaves, steps, strict=True)))
        minus = function(*(leaf - eps * u for leaf, u in zip(leaves, steps, strict=True)))
        numerical = sum(
            float((w * (p.detach() - m.detach())).sum()) / (2 * eps)
            for w, p, m in zip(weights, plus, minus, strict=True)
        )
        if abs(analytical - numerical) > atol + rtol * abs(numerical):
            return (
                f"v^T J u from backward {analytical:.6g}, from finite differences {numerical:.6g}"
            )
    return None


def check_module(
    component: str,
    module: nn.Module,
    inputs: tuple[Any, ...],
    exhaustive_limit: int = 256,
    kind: str = "model",
    kwargs: dict[str, Any] | None = None,
) -> Check:
    """gradcheck of ``module`` in float64 w.r.t. its floating inputs and all its parameters
    (flattened into one vector, so that a directional check costs a few forward passes)."""
    module = module.double()
    named = [(name, p) for name, p in module.named_parameters() if p.requires_grad]
    names = [name for name, _ in named]
    shapes = [p.shape for _, p in named]
    count = len(inputs)

    def call(*arguments: Any) -> Any:
        if not named:
            return module(*arguments, **(kwargs or {}))
        chunks = arguments[count].split([shape.numel() for shape in shapes])
        weights = {n: c.view(s) for n, c, s in zip(names, chunks, shapes, strict=True)}
        return functional_call(module, weights, tuple(arguments[:count]), kwargs)

    generator = torch.Generator().manual_seed(0)

    def jitter(x: Tensor) -> Tensor:  # off the kinks, see the module docstring
        x = x.detach().double()
        return x + JITTER * torch.randn(x.shape, generator=generator, dtype=x.dtype)

    flat = [jitter(torch.cat([p.flatten() for _, p in named]))] if named else []
    arguments = (*(jitter(x) if _floating(x) else x for x in inputs), *flat)
    return check_function(component, kind, call, arguments, exhaustive_limit)


def _floating(value: Any) -> bool:
    return isinstance(value, Tensor) and value.is_floating_point()


def _own(module: nn.Module) -> bool:
    return type(module).__module__.startswith("deeprecipe.")


def sample_input(cfg: DictConfig, datamodule: Any) -> Any:
    """2 random images (B, C, H, W) (clips (B, C, T, H, W) for video data) of the data's shape
    in [0, 1], else 2 real training inputs."""
    data = cfg.data
    if "in_chans" in data and "image_size" in data:
        return torch.rand(BATCH, *data_shape(data)).double()
    datamodule.setup("fit")
    batch = next(iter(datamodule.train_dataloader()))
    return batch[0][:BATCH]


def model_checks(cfg: DictConfig, exhaustive_limit: int = 256) -> list[Check]:
    """Check every distinct suite-defined module of ``cfg``'s method, in forward order."""
    torch.manual_seed(cfg.seed)
    datamodule, method, _ = build(cfg)
    method = method.double().train()
    x = sample_input(cfg, datamodule)
    captured: dict[str, tuple[nn.Module, tuple[Any, ...], dict[str, Any]]] = {}

    def capture(name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            if name not in captured:
                copies = tuple(a.detach().clone() if isinstance(a, Tensor) else a for a in args)
                captured[name] = (module, copies, dict(kwargs))

        return hook

    handles = [
        m.register_forward_pre_hook(capture(n or "method"), with_kwargs=True)
        for n, m in method.named_modules()
        if _own(m)
    ]
    with torch.no_grad():
        if isinstance(method, BaseMethod):
            method(method.prepare_images(x, augment=False))
        else:
            method(x)
    for handle in handles:
        handle.remove()
    checks, seen = [], set()
    for name, (module, args, kwargs) in captured.items():
        shapes = tuple(tuple(a.shape) for a in args if isinstance(a, Tensor))
        key = (repr(module), shapes)
        if key in seen:
            continue
        seen.add(key)
        label = f"{name} ({type(module).__name__})"
        checks.append(check_module(label, module, args, exhaustive_limit, "model", kwargs))
    return checks


def augment_checks(exhaustive_limit: int = 256) -> list[Check]:
    """Check every augmentation class of :mod:`deeprecipe.augment` that builds from defaults."""
    images = torch.rand(BATCH, 3, 8, 8).double() * 0.8 + 0.1  # away from the clamp at 0 and 1
    labels = torch.arange(BATCH) % NUM_CLASSES
    checks = []
    for name in augment.__all__:
        cls = getattr(augment, name)
        required = [
            p.name
            for p in inspect.signature(cls).parameters.values()
            if p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        ]
        unknown = [p for p in required if p != "num_classes"]
        if unknown:
            checks.append(Check(name, "augment", "skipped", f"needs {', '.join(unknown)}"))
            continue
        module = cls(**{p: NUM_CLASSES for p in required})
        wants_labels = len(inspect.signature(module.forward).parameters) > 1
        inputs = (images, labels) if wants_labels else (images,)
        checks.append(check_module(name, module, inputs, exhaustive_limit, "augment"))
    return checks


def _argument(parameter: inspect.Parameter) -> Any:
    """A small input for one required loss argument, from its name and annotation."""
    annotation = str(parameter.annotation)
    if "Tensor" in annotation:
        if parameter.name in ("y", "labels"):
            return torch.arange(GENERATED_BATCH) % NUM_CLASSES  # (B,) class indices
        return torch.randn(GENERATED_BATCH, NUM_CLASSES, dtype=torch.float64)  # (B, C)
    if annotation == "int":
        return NUM_CLASSES
    if annotation == "float":
        return 0.1
    raise TypeError(f"no generated value for {parameter.name}: {annotation}")


def loss_checks(exhaustive_limit: int = 256) -> list[Check]:
    """Check every loss function of :mod:`deeprecipe.losses` on generated inputs."""
    torch.manual_seed(0)
    checks = []
    for name in losses.__all__:
        function = getattr(losses, name)
        if name in STOP_GRADIENT:
            checks.append(Check(name, "loss", "skipped", STOP_GRADIENT[name]))
            continue
        required = [
            p for p in inspect.signature(function).parameters.values() if p.default is p.empty
        ]
        try:
            inputs = tuple(_argument(p) for p in required)
        except TypeError as error:
            checks.append(Check(name, "loss", "skipped", str(error)))
            continue
        checks.append(check_function(name, "loss", function, inputs, exhaustive_limit))
    return checks


def summarize(checks: list[Check]) -> StepResult:
    """One verdict over all checks and a Markdown table, one row per component."""
    failed = [c for c in checks if c.status == "FAIL"]
    passed = [c for c in checks if c.status == "pass"]
    no_backward = [c.component for c in checks if c.status == NO_BACKWARD]
    skipped = len(checks) - len(failed) - len(passed) - len(no_backward)
    if failed:
        names = ", ".join(c.component for c in failed)
        text = f"{len(failed)} of {len(checks)} components FAIL the gradient check: {names}"
    else:
        text = f"all {len(passed)} checked components pass ({skipped} skipped)"
    if no_backward:
        text += f"; no backward: {', '.join(no_backward)}"
    details = ["| component | kind | result | note |", "|---|---|---|---|"]
    details += [f"| {c.component} | {c.kind} | {c.status} | {c.note} |" for c in checks]
    values = {"checks": [c.__dict__ for c in checks]}
    return StepResult(STEP, not failed and bool(passed), text, details, values)


def run(cfg: DictConfig, exhaustive_limit: int = 256) -> StepResult:
    """Gradient-check the model of ``cfg``, every augmentation and every loss."""
    return summarize(
        model_checks(cfg, exhaustive_limit)
        + augment_checks(exhaustive_limit)
        + loss_checks(exhaustive_limit)
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--exhaustive-limit",
        type=int,
        default=256,
        help="full Jacobian up to this many elements, random projections above",
    )


def main(args: argparse.Namespace) -> tuple[StepResult, Path]:
    cfg, out_dir = compose_step(STEP, args.overrides, ("logger=csv",), args.out)
    return run(cfg, args.exhaustive_limit), out_dir
