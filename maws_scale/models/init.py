"""Layout-independent initialisation: every tensor draws from its own generator, keyed by (model seed, tensor name).

A model draws one ``init_seed`` from the global RNG when it is constructed (so ``torch.manual_seed`` still decides its
weights) and initialises each tensor from ``tensor_generator(init_seed, name)``. The value of a tensor then depends
only on its name and shape, not on which other tensors were initialised before it, on which device, or in what
order. That is what lets a tensor-parallel rank build on the meta device and materialise only its shard while
getting exactly the weights of the unsharded model (``parallel/tensor_parallel.py``), and what keeps ZeRO-3's
``zero.Init`` (which initialises module by module) equal to a plain build.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable

import torch
from torch import nn

InitFn = Callable[[torch.Tensor, torch.Generator], object]
_MASK63 = (1 << 63) - 1
_GOLDEN = 0x9E3779B97F4A7C15


def draw_init_seed() -> int:
    """A model's init seed: one draw from the global CPU RNG (the same on every rank after ``manual_seed``)."""
    return int(torch.randint(0, 1 << 62, (1,), device="cpu").item())


def tensor_generator(seed: int, name: str) -> torch.Generator:
    """The CPU generator tensor ``name`` of a model with ``seed`` draws its initial values from."""
    key = zlib.crc32(name.encode())
    return torch.Generator().manual_seed((seed ^ ((key + 1) * _GOLDEN)) & _MASK63)


def init_tensor_(tensor: torch.Tensor, fn: InitFn, generator: torch.Generator) -> torch.Tensor:
    """Fill ``tensor`` in place with ``fn(t, generator)`` drawn on the CPU (copied to the tensor's device). Meta
    tensors have no values and are left alone."""
    if tensor.device.type == "meta":
        return tensor
    with torch.no_grad():
        if tensor.device.type == "cpu":
            fn(tensor, generator)
        else:
            values = torch.empty(tensor.shape, dtype=tensor.dtype)
            fn(values, generator)
            tensor.copy_(values)
    return tensor


def trunc_normal(std: float) -> InitFn:
    return lambda t, g: nn.init.trunc_normal_(t, std=std, generator=g)


def normal(std: float) -> InitFn:
    return lambda t, g: nn.init.normal_(t, std=std, generator=g)


def xavier_uniform(t: torch.Tensor, g: torch.Generator) -> None:
    """Xavier-uniform over the first dimension vs the rest (a conv kernel as its flattened Linear)."""
    nn.init.xavier_uniform_(t.view(t.shape[0], -1), generator=g)


def zeros(t: torch.Tensor, g: torch.Generator) -> None:
    nn.init.zeros_(t)


def ones(t: torch.Tensor, g: torch.Generator) -> None:
    nn.init.ones_(t)


def init_module_tensors(module: nn.Module, prefix: str, seed: int, linear: InitFn) -> None:
    """The timm/MAE rules for one module's own tensors: Linear ``linear`` + zero bias, LayerNorm ones/zeros, the
    patch convolution xavier-uniform + zero bias, an attention-pool latent trunc-normal(D^-0.5)."""

    def put(name: str, tensor: torch.Tensor | None, fn: InitFn) -> None:
        if tensor is not None:
            init_tensor_(tensor, fn, tensor_generator(seed, f"{prefix}{name}"))

    if isinstance(module, nn.Linear):
        put("weight", module.weight, linear)
        put("bias", module.bias, zeros)
    elif isinstance(module, nn.LayerNorm):
        put("weight", module.weight, ones)
        put("bias", module.bias, zeros)
    elif isinstance(module, nn.Conv2d):
        put("weight", module.weight, xavier_uniform)
        put("bias", module.bias, zeros)
    latent = getattr(module, "latent", None)
    if isinstance(latent, nn.Parameter):
        put("latent", latent, trunc_normal(latent.shape[-1] ** -0.5))


def init_named_modules(model: nn.Module, seed: int, linear: InitFn, own: Callable[[], None]) -> None:
    """Initialise every module of ``model`` by the rules of :func:`init_module_tensors` through ``Module.apply`` (which
    DeepSpeed's ``zero.Init`` patches to gather partitioned parameters), and ``model``'s own tensors with ``own``."""
    names = {id(m): name for name, m in model.named_modules()}

    def visit(module: nn.Module) -> None:
        if module is model:
            own()
            return
        init_module_tensors(module, names[id(module)] + ".", seed, linear)

    model.apply(visit)


def full_linear(
    model: nn.Module, name: str, linear: nn.Linear, out: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(weight, bias) on the CPU of the Linear called ``name`` in ``model``: its own values, or for a meta Linear the
    values the unsharded model gives it (``model.init_seed`` and ``model.linear_init``), the weight drawn into the
    front of the flat buffer ``out`` when given (reused layer after layer; valid until the next call)."""
    if linear.weight.device.type != "meta":
        bias = linear.bias.detach() if linear.bias is not None else None
        return linear.weight.detach(), bias
    shape = linear.weight.shape
    if out is not None:
        weight = out[: math.prod(shape)].view(shape)
    else:
        weight = torch.empty(shape, dtype=linear.weight.dtype)
    init_tensor_(weight, model.linear_init, tensor_generator(model.init_seed, f"{name}.weight"))
    bias = torch.zeros(linear.bias.shape, dtype=linear.bias.dtype) if linear.bias is not None else None
    return weight, bias
