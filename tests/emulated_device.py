"""An emulated accelerator for CPU-only tests: tensors that report a non-CPU device but compute on the CPU.

CI has no GPU, yet device bugs only show on one: a buffer left on the CPU while the weights moved to CUDA, a CPU
`torch.Generator` handed to a draw on CUDA, a checkpoint that loads only onto the device it was saved from. Torch's
own tools do not catch these here: `FakeTensorMode` cannot make `cuda` tensors on a CPU-only build, and the `meta`
device has no data (data-dependent code such as `bool(mask.any())` or `.cpu().numpy()` cannot run) and accepts both
mistakes above (a draw on `meta` with a CPU generator, a CPU tensor indexed with `meta` indices).

`emulated_device()` is a context manager that makes the `meta` device behave like a CUDA device with real data:

- an `EmulatedTensor` reports `device == meta` and holds a real CPU tensor inside, so every op computes the real
  numbers (bit for bit the CPU's) and data-dependent code (`.item()`, `bool()`, `.tolist()`) works;
- factories and conversions aimed at the device (`torch.zeros(..., device=dev)`, `t.to(dev)`, `module.to(dev)`)
  make `EmulatedTensor`s; `.to("cpu")` / `.cpu()` give plain CPU tensors back (and `.numpy()` needs them, as on CUDA);
- CUDA's device checks, enforced on every op: tensors on different devices in one op raise ("Expected all tensors
  to be on the same device"), except 0-dim CPU tensors (CPU scalars, which CUDA kernels accept) and the ops that
  convert between devices (`copy_`, `_to_copy`); indexing a CPU tensor with accelerator indices raises "indices
  should be either on cpu or on the same device as the indexed tensor (cpu)" (CPU indices into an accelerator tensor
  are fine, as on CUDA);
- random ops: a `generator` on another device than the op's output raises "Expected a 'meta' device type for
  generator but found 'cpu'" (CUDA: "... 'cuda' ..."). `torch.Generator(device=<the device>)` works, as on CUDA,
  and like a draw on the device without a generator (the device's default generator) it gives another stream than
  the CPU's for the same seed (CUDA's Philox differs from the CPU's Mersenne Twister too): code that relies on a
  device generator samples differently on the two devices here, as on a GPU;
- tensors torch builds on the host out of dispatch's sight (`torch.tensor(..., device=dev)`, `as_tensor`,
  `new_tensor`, indexing with Python lists) are built on the CPU and copied over; a device tensor without data that
  still slips through raises instead of computing garbage;
- serialization: `torch.save` of an `EmulatedTensor` records its data as living on the device; `torch.load` puts it
  back on the device inside the emulation, onto the CPU with `map_location="cpu"`, and outside the emulation without
  a `map_location` raises, like loading a CUDA tensor on a machine without CUDA;
- backward passes see the emulation too (activation checkpointing's recomputation included); torch has no autocast
  for `meta`: `torch.autocast("meta", enabled=False)` is a no-op, enabled autocast is refused (not emulated).

Every op computes with the CPU's kernels, so "same seed, same samples on the CPU and on the device" is exact here (a
GPU matches up to floating point); `scaled_dot_product_attention`, which torch routes by device type, is sent to the
CPU's kernel for that reason. Not emulated: streams, asynchronous execution, memory limits, CUDA-only kernels or
dtypes, GPU numerics, other threads (the modes are per thread: call the policy from the test's thread). Code that
uses `meta` for its own purpose (deferred initialisation, e.g. pi0.model.checkpoint.load_model) must run outside the
emulation: load on the CPU, then move the model onto the device.
"""

from __future__ import annotations

import contextlib
import inspect
import threading
import warnings
import weakref
from typing import Any, Iterator

import numpy as np
import torch
from torch.overrides import TorchFunctionMode
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode, return_and_correct_aliasing

DEVICE = torch.device("meta")  # the emulated accelerator
CPU = torch.device("cpu")
_TAG = "emulated-accelerator"  # torch.save location tag of an EmulatedTensor's data

aten = torch.ops.aten
# Ops that move data between devices (what `.to`, `.cpu()`, `copy_` and `load_state_dict` use).
_TRANSFERS = {aten._to_copy.default, aten.copy_.default, aten._copy_from.default, aten._copy_from_and_resize.default}
# Random factories whose plain overload draws from the default generator; each has an overload taking one.
_RANDOM_FACTORIES = {aten.randn, aten.rand, aten.randint, aten.randperm, aten.randn_like, aten.rand_like, aten.randint_like}
_INDEXING = {
    aten.index.Tensor, aten.index_put.default, aten.index_put_.default, aten._index_put_impl_.default,
    aten._unsafe_index.Tensor, aten._unsafe_index_put.default,
}


class EmulatedTensor(torch.Tensor):
    """A tensor on the emulated device (its `device` is `meta`); `inner` holds its data, a plain CPU tensor."""

    _cpu_data: torch.Tensor
    __torch_function__ = torch._C._disabled_torch_function_impl  # results are made by __torch_dispatch__ alone

    @staticmethod
    def __new__(cls, inner: torch.Tensor, requires_grad: bool = False):
        if type(inner) is not torch.Tensor or inner.device.type != "cpu":
            raise TypeError(f"EmulatedTensor wraps a plain CPU tensor, got {type(inner).__name__} on {inner.device}")
        out = torch.Tensor._make_wrapper_subclass(
            cls, inner.size(), strides=inner.stride(), storage_offset=inner.storage_offset(), dtype=inner.dtype,
            layout=inner.layout, device=DEVICE, requires_grad=requires_grad,
        )
        out._cpu_data = inner
        return out

    def __repr__(self) -> str:
        return f"EmulatedTensor({self._cpu_data!r})"

    def numpy(self, *, force: bool = False):  # as on CUDA: the data must be copied to the host first
        if force:
            return self.cpu().numpy()
        raise TypeError(f"can't convert {DEVICE} device type tensor to numpy. Use Tensor.cpu() to copy the tensor to host memory first.")

    def tolist(self):  # torch refuses tolist() on subclasses; on CUDA it copies to the host
        return self.cpu().tolist()

    def __tensor_flatten__(self):
        return ["_cpu_data"], None

    @staticmethod
    def __tensor_unflatten__(inner_tensors, meta, outer_size, outer_stride):
        return EmulatedTensor(inner_tensors["_cpu_data"])

    def __reduce_ex__(self, protocol):
        # torch.save: a copy of the data whose storage is tagged as living on the device (_tag), rebuilt by _rebuild.
        with torch.no_grad():
            data = self._cpu_data.detach().clone()
        key = data.untyped_storage()._cdata
        _SAVED.add(key)
        weakref.finalize(data, _SAVED.discard, key)
        return (_rebuild, (data, self.requires_grad))

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        return _dispatch(func, args, kwargs or {})


def _device_of(t: torch.Tensor) -> torch.device:
    return DEVICE if isinstance(t, EmulatedTensor) else t.device


def _is_cpu_scalar(t: torch.Tensor) -> bool:
    return not isinstance(t, EmulatedTensor) and t.device.type == "cpu" and t.dim() == 0


def _check_devices(func, args: tuple, kwargs: dict, tensors: list[torch.Tensor]) -> None:
    """CUDA's rules for where an op's tensor inputs may live."""
    if func in _TRANSFERS or kwargs.get("device") is not None:  # conversions name their own target
        return
    if func in _INDEXING:
        self_device = _device_of(args[0])
        for index in args[1] if len(args) > 1 else []:
            if isinstance(index, torch.Tensor) and _device_of(index) not in (CPU, self_device):
                raise RuntimeError(
                    f"indices should be either on cpu or on the same device as the indexed tensor ({self_device})"
                    f" [emulated accelerator: {func}]"
                )
        tensors = [args[0]] + [t for t in pytree.tree_leaves((args[2:], kwargs)) if isinstance(t, torch.Tensor)]
    devices = {str(_device_of(t)) for t in tensors if not _is_cpu_scalar(t)}
    if len(devices) > 1:
        raise RuntimeError(
            f"Expected all tensors to be on the same device, but found at least two devices, {', '.join(sorted(devices))}!"
            f" [emulated accelerator: {func}]"
        )


def _target_device(func, args: tuple, kwargs: dict, tensors: list[torch.Tensor]) -> torch.device:
    """Where the op's result lives: the device it names, else that of its destination / first non-scalar input."""
    if kwargs.get("device") is not None:
        return torch.device(kwargs["device"])
    if func in _TRANSFERS and isinstance(args[0], torch.Tensor):
        return _device_of(args[0])
    for t in tensors:
        if not _is_cpu_scalar(t):
            return _device_of(t)
    return _device_of(tensors[0]) if tensors else CPU


def _generator_overload(func):
    """randn.default -> randn.generator, randint.low -> randint.low_generator, ...: the same op taking a generator."""
    if func.overloadpacket not in _RANDOM_FACTORIES:
        return None
    name, overloads = func._overloadname, func.overloadpacket.overloads()
    for candidate in ("generator" if name == "default" else f"{name}_generator", f"generator_{name}",
                      name.replace("low_", "low_generator_")):
        if candidate != name and candidate in overloads:
            return getattr(func.overloadpacket, candidate)
    return None


def _with_generator(func, args: tuple, kwargs: dict, target: torch.device):
    """A random op's generator must be on the op's device (CUDA raises otherwise). Without one, a draw on the device
    uses the device's default generator (its own stream)."""
    slots = [(i, a) for i, a in enumerate(func._schema.arguments) if "Generator" in str(a.type)]
    if not slots:
        with_generator = _generator_overload(func) if target == DEVICE else None
        if with_generator is None:
            return func, args, kwargs
        return with_generator, args, {**kwargs, "generator": _STATE.default_generator()}
    index, arg = slots[0]
    positional = not arg.kwarg_only and index < len(args)
    generator = args[index] if positional else kwargs.get(arg.name)
    if generator is not None:
        generator_type = DEVICE.type if _STATE.device_generator else generator.device.type
        if generator_type != target.type:
            raise RuntimeError(
                f"Expected a '{target.type}' device type for generator but found '{generator_type}'"
                f" [emulated accelerator: {func}]"
            )
        return func, args, kwargs
    if target != DEVICE:
        return func, args, kwargs
    generator = _STATE.default_generator()
    if positional:
        return func, args[:index] + (generator,) + args[index + 1 :], kwargs
    return func, args, {**kwargs, arg.name: generator}


def _is_view_or_mutation(func) -> bool:
    return any(a.alias_info is not None for a in func._schema.arguments)


def _device_arg_to_kwarg(func, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """aten.to.device(self, device, dtype, ...) takes its device positionally: pass it by name instead."""
    names = [a.name for a in func._schema.arguments]
    if "device" in names and names.index("device") < len(args):
        index = names.index("device")
        kwargs = {**kwargs, **{name: value for name, value in zip(names[index:], args[index:])}}
        args = args[:index]
    return args, kwargs


def _dispatch(func, args: tuple, kwargs: dict) -> Any:
    args, kwargs = _device_arg_to_kwarg(func, args, kwargs)
    tensors = [t for t in pytree.tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
    for t in tensors:
        if t.device == DEVICE and not isinstance(t, EmulatedTensor):
            raise RuntimeError(
                f"emulated_device: a {DEVICE} tensor without data reached {func}: it was made by a path the emulation "
                "does not intercept; build it on the CPU and move it with .to(device)"
            )
    _check_devices(func, args, kwargs, tensors)
    target = _target_device(func, args, kwargs, tensors)
    func, args, kwargs = _with_generator(func, args, kwargs, target)
    if target == DEVICE and not _STATE.active():
        raise RuntimeError(f"{func} on the emulated device outside emulated_device()")
    inner_args, inner_kwargs = pytree.tree_map_only(EmulatedTensor, lambda t: t._cpu_data, (args, kwargs))
    if kwargs.get("device") is not None and target == DEVICE:
        inner_kwargs = {**inner_kwargs, "device": CPU}
    out = func(*inner_args, **inner_kwargs)
    source = _device_of(args[0]) if args and isinstance(args[0], torch.Tensor) else target
    if source != target:  # a transfer (e.g. aten.to under inference mode): a copy, never a view of the source
        out = pytree.tree_map_only(torch.Tensor, lambda t: t.clone() if type(t) is torch.Tensor else t, out)
        if target == DEVICE:
            out = pytree.tree_map_only(torch.Tensor, lambda t: t if isinstance(t, EmulatedTensor) else EmulatedTensor(t), out)
        return out
    if target == DEVICE:
        out = pytree.tree_map_only(torch.Tensor, lambda t: t if isinstance(t, EmulatedTensor) else EmulatedTensor(t), out)
    if any(isinstance(t, EmulatedTensor) for t in tensors) and _is_view_or_mutation(func):
        return return_and_correct_aliasing(func, args, kwargs, out)  # in-place ops return their input, views alias
    return out


class _EmulatedGenerator(torch._C.Generator):
    """`torch.Generator(device=<the emulated device>)`: a CPU generator underneath that reports the device."""

    @property
    def device(self) -> torch.device:
        return DEVICE

    def manual_seed(self, seed: int) -> "_EmulatedGenerator":  # another stream than a CPU generator's for a seed
        super().manual_seed(_device_seed(int(seed)))
        return self


def _device_seed(seed: int) -> int:
    return (seed * 2654435761 + 97) % 2**63


class _GeneratorType(type(torch._C.Generator)):
    def __instancecheck__(cls, obj: Any) -> bool:
        return isinstance(obj, torch._C.Generator)

    def __call__(cls, device: Any = None):
        if _on_device(device):
            return _EmulatedGenerator()
        return torch._C.Generator() if device is None else torch._C.Generator(device)


class _Generator(torch._C.Generator, metaclass=_GeneratorType):
    """`torch.Generator` inside the emulation: as before, plus generators on the emulated device."""


def _on_device(device: Any) -> bool:
    return device is not None and torch.device(device) == DEVICE


def _host_index(index: Any) -> Any:
    """Python sequences and arrays in an index become CPU index tensors (torch would build them on the indexed
    tensor's device out of sight of the emulation, with no data)."""
    if isinstance(index, tuple):
        return tuple(_host_index(i) for i in index)
    if isinstance(index, (list, np.ndarray)) and not any(isinstance(i, (torch.Tensor, slice)) for i in np.ravel(np.asarray(index, dtype=object))):
        return torch.tensor(np.asarray(index))
    return index


class _HostSide(TorchFunctionMode):
    """What torch does on the host, out of sight of dispatch, redone so the device gets real data:

    - `torch.tensor` / `as_tensor` / `asarray` / `Tensor.new_tensor` aimed at the device, and indexing a device tensor
      with Python lists: torch builds these tensors on the device with Python dispatch switched off (a `meta` tensor,
      no data); here they are built on the CPU and copied to the device, as CUDA copies them from the host;
    - torch picks some kernels by device type: `scaled_dot_product_attention` runs its math path on a device without a
      fused kernel (`meta` included) and the CPU's fused kernel on the CPU. So that the device computes exactly what
      the CPU computes, attention on the device runs the CPU kernel through differentiable copies (after the device
      check: its tensors must share a device, as on CUDA).
    """

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if any(isinstance(a, _EmulatedGenerator) for a in (*args, *kwargs.values())):
            # Dispatch sees a plain CPU generator object: tell it that this call's generator is on the device.
            _STATE.device_generator += 1
            try:
                return self._handle(func, args, kwargs)
            finally:
                _STATE.device_generator -= 1
        return self._handle(func, args, kwargs)

    def _handle(self, func, args: tuple, kwargs: dict) -> Any:
        if func in (torch.Tensor.backward, torch.autograd.backward, torch.autograd.grad):
            return self._autograd(func, args, kwargs)
        if func in (torch.tensor, torch.as_tensor, torch.asarray, torch.Tensor.new_tensor):
            made = self._construct(func, args, kwargs)
            if made is not None:
                return made
        elif func in (torch.Tensor.__getitem__, torch.Tensor.__setitem__) and isinstance(args[0], EmulatedTensor):
            args = (args[0], _host_index(args[1]), *args[2:])
            if len(args) == 3 and isinstance(args[2], (list, tuple, np.ndarray)):
                args = (*args[:2], torch.tensor(np.asarray(args[2]), dtype=args[0].dtype).to(DEVICE))
        elif func is torch.nn.functional.scaled_dot_product_attention:
            tensors = [t for t in pytree.tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
            if any(isinstance(t, EmulatedTensor) for t in tensors):
                _check_devices(func, args, kwargs, tensors)
                to_cpu = lambda t: t.cpu() if isinstance(t, EmulatedTensor) else t  # noqa: E731
                args, kwargs = pytree.tree_map_only(torch.Tensor, to_cpu, (args, kwargs))
                return func(*args, **kwargs).to(DEVICE)
        return func(*args, **kwargs)

    def _autograd(self, func, args: tuple, kwargs: dict) -> Any:
        """torch switches this mode off for the whole of a call it intercepts, but a backward pass runs Python too
        (activation checkpointing recomputes the forward there), which must see the mode. So the autograd entry runs
        with the mode back on, past its own torch-function check (which would only lead back here)."""
        if func is torch.Tensor.backward:
            bound = inspect.signature(torch.Tensor.backward).bind(*args, **kwargs)
            bound.apply_defaults()
            a = bound.arguments
            func, args = torch.autograd.backward, (a["self"],)
            kwargs = {"grad_tensors": a["gradient"], "retain_graph": a["retain_graph"], "create_graph": a["create_graph"],
                      "inputs": a["inputs"]}
        saved = torch.autograd.has_torch_function
        torch.autograd.has_torch_function = lambda *_: False
        try:
            with self:
                return func(*args, **kwargs)
        finally:
            torch.autograd.has_torch_function = saved

    @staticmethod
    def _construct(func, args: tuple, kwargs: dict) -> torch.Tensor | None:
        if func is torch.Tensor.new_tensor:
            self, data = args[0], args[1]
            kwargs.setdefault("dtype", self.dtype)
            kwargs.setdefault("device", self.device)
            func, args = torch.tensor, (data,)
        if len(args) != 1:
            raise NotImplementedError(f"emulated_device: {func.__name__} with positional dtype/device")
        data, device = args[0], kwargs.get("device")
        on_device = _on_device(device) or (device is None and isinstance(data, EmulatedTensor))
        if not on_device:
            if isinstance(data, EmulatedTensor):  # e.g. torch.as_tensor(device_tensor, device="cpu")
                return func(data.cpu(), **kwargs)
            return None
        requires_grad = kwargs.pop("requires_grad", False)
        if isinstance(data, torch.Tensor):
            data = data.detach().clone() if func is torch.tensor else data
            made = data.to(device=DEVICE, dtype=kwargs.get("dtype") or data.dtype)
        else:
            made = func(data, **{**kwargs, "device": CPU}).to(DEVICE)
        return made.requires_grad_(True) if requires_grad else made


class _Mode(TorchDispatchMode):
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        return _dispatch(func, args, kwargs or {})


class _State(threading.local):
    def __init__(self):
        self.depth = 0
        self.device_generator = 0  # > 0 while a call that passed a generator on the device runs
        self.generator: torch.Generator | None = None

    def active(self) -> bool:
        return self.depth > 0

    def default_generator(self) -> torch.Generator:
        if self.generator is None:  # derived from the CPU's seed, but another stream (as CUDA's is)
            self.generator = torch._C.Generator().manual_seed(_device_seed(torch.initial_seed()))
        return self.generator


_STATE = _State()

# --- serialization: data saved from the device is tagged as living there ----------------------------------------------
_SAVED: set[int] = set()  # storages (by StorageImpl address) of data being saved from the device
_RESTORED: set[int] = set()  # storages torch.load just put back on the device


def _tag(storage) -> str | None:
    return _TAG if storage._cdata in _SAVED else None


def _deserialize(storage, location: str):
    if location == DEVICE.type and _STATE.active():
        raise NotImplementedError("emulated_device: torch.load(map_location=<the device>) is not emulated; load onto the CPU")
    if location != _TAG:
        return None  # map_location chose another device: the usual deserializers handle it
    if not _STATE.active():
        raise RuntimeError(
            "Attempting to deserialize object on the emulated accelerator but it is not available (outside "
            "emulated_device()). If you are running on a CPU-only machine, please use torch.load with "
            "map_location=torch.device('cpu') to map your storages to the CPU. [emulated accelerator]"
        )
    _RESTORED.add(storage._cdata)
    return storage


def _rebuild(data: torch.Tensor, requires_grad: bool) -> torch.Tensor:
    key = data.untyped_storage()._cdata
    if key in _RESTORED:  # loaded with no map_location inside the emulation: back onto the device
        _RESTORED.discard(key)
        return EmulatedTensor(data, requires_grad=requires_grad)
    return data.requires_grad_(requires_grad)  # map_location put it elsewhere (e.g. the CPU)


torch.serialization.register_package(5, _tag, _deserialize)
torch.serialization.add_safe_globals([_rebuild])


class _EmulatedAutocast(torch.autocast):
    """torch has no autocast for `meta`. Disabled (fp32, the default), `torch.autocast("meta", enabled=False)` is a
    no-op as on CUDA. Enabled, it is refused: torch would only reach the CPU ops underneath, casting decomposed ops one
    by one rather than CUDA's (e.g. `linear` as a whole), which mixes dtypes where CUDA does not."""

    def __init__(self, device_type: str, dtype: torch.dtype | None = None, enabled: bool = True, cache_enabled: bool | None = None):
        if device_type == DEVICE.type:
            if enabled:
                raise NotImplementedError("emulated_device: autocast on the emulated device is not emulated; test mixed precision on the CPU")
            device_type = "cpu"
        super().__init__(device_type, dtype=dtype, enabled=enabled, cache_enabled=cache_enabled)


@contextlib.contextmanager
def emulated_device() -> Iterator[torch.device]:
    """Inside: `meta` is an accelerator with real data and CUDA's device checks. Yields that device."""
    saved_autocast, saved_generator = torch.autocast, torch.Generator
    torch.autocast, torch.Generator = _EmulatedAutocast, _Generator
    if _STATE.depth == 0:
        _STATE.generator = None  # the device's default generator restarts from the CPU's seed at each entry
    _STATE.depth += 1
    try:
        with _Mode(), _HostSide(), warnings.catch_warnings():
            # load_state_dict warns that copying into a `meta` parameter is a no-op: here it copies the data.
            warnings.filterwarnings("ignore", message=r".*copying from a non-meta parameter in the checkpoint to a meta")
            yield DEVICE
    finally:
        _STATE.depth -= 1
        torch.autocast, torch.Generator = saved_autocast, saved_generator


def is_emulated(t: torch.Tensor) -> bool:
    return isinstance(t, EmulatedTensor)
