"""Load the teacher: the built-in digits task, a factory spec plus weights, or a saved program.

Untrusted files are never unpickled as code: safetensors, or torch.load(weights_only=True).
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import json
import operator
import sys
import warnings
from collections.abc import Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from core.errors import RunError, UsageError
from core.settings import resolve_path


@dataclass
class TaskSpec:
    """What every stage needs to know about the teacher's task; per-sample shapes exclude batch."""

    input_shape: tuple[int, ...]
    num_classes: int
    classes: list[str] | None
    mean: list[float]
    std: list[float]
    scale: float
    source: str  # human-readable origin of the teacher

    @property
    def is_image(self) -> bool:
        return len(self.input_shape) == 3

    def pixel_range(self) -> tuple[float, float] | None:
        return pixel_range(self.input_shape, self.mean, self.std)


def pixel_range(shape: tuple[int, ...], mean: list[float], std: list[float]) -> tuple[float, float] | None:
    """The model-input range an image's pixels span, raw * scale lying in [0, 1] as for 8-bit pixels with scale
    1/255: [(0 - mean) / std, (1 - mean) / std] over the channels. None for vectors: features have no bound."""
    if len(shape) != 3:
        return None
    channels = max(len(mean), len(std))
    pairs = [(mean[i % len(mean)], std[i % len(std)]) for i in range(channels)]
    return min((0 - m) / s for m, s in pairs), max((1 - m) / s for m, s in pairs)


_WARNED: set[str] = set()


def warn_once(msg: str) -> None:
    """A one-line warning on stderr, once per process (the teacher is loaded by every stage)."""
    if msg not in _WARNED:
        _WARNED.add(msg)
        print(f"warning: {msg}", file=sys.stderr, flush=True)


def _spec_file(spec: str, base_dir: str | None) -> Path | None:
    """The file of a 'path/to/file.py:name' spec (relative to `base_dir`); None for a module spec."""
    mod_part = spec.rpartition(":")[0]
    if not (mod_part.endswith(".py") or "/" in mod_part or "\\" in mod_part):
        return None
    path = Path(mod_part).expanduser()
    return Path(base_dir) / path if not path.is_absolute() and base_dir else path


def resolve_callable(spec: str, base_dir: str | None = None, what: str = "factory") -> Callable:
    """'path/to/file.py:name' or 'package.module:name' -> the callable.

    A file's own imports of the modules beside it need `importable_beside(file.parent)` around this call.
    """
    mod_part, _, attr = spec.rpartition(":")
    if not mod_part or not attr:
        raise UsageError(f"{what} '{spec}' must look like 'file.py:function' or 'package.module:function'")
    path = _spec_file(spec, base_dir)
    if path is not None:
        if not path.is_file():
            raise UsageError(f"{what} file not found: {path}")
        name = f"_pipeline_user_{path.stem}_{abs(hash(str(path.resolve())))}"
        module_spec = importlib.util.spec_from_file_location(name, path)
        if module_spec is None or module_spec.loader is None:
            raise UsageError(f"{what} file cannot be imported: {path}")
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[name] = module
        try:
            module_spec.loader.exec_module(module)
        except Exception as exc:  # user code: report, don't crash
            raise UsageError(f"{what} file {path} failed to import: {type(exc).__name__}: {exc}") from exc
    else:
        try:
            module = importlib.import_module(mod_part)
        except Exception as exc:
            raise UsageError(f"{what} module '{mod_part}' cannot be imported: {type(exc).__name__}: {exc}") from exc
    fn = getattr(module, attr, None)
    if fn is None or not callable(fn):
        raise UsageError(f"{what} '{spec}': '{attr}' is not a callable in {mod_part}")
    return fn


def _sibling_names(folder: Path) -> set[str]:
    """Top-level module names the files in `folder` provide: `name.py` files and package folders."""
    try:
        entries = list(folder.iterdir())
    except OSError:
        return set()
    names = {e.stem if e.suffix == ".py" and e.is_file() else e.name if e.is_dir() else "" for e in entries}
    return {n for n in names if n.isidentifier()}


def _from_folder(module: ModuleType, folder: Path) -> bool:
    """Whether `module` was loaded from `folder` (a package: any of its search paths)."""
    file = getattr(module, "__file__", None)
    places = [file] if file else list(getattr(module, "__path__", None) or [])
    try:
        return any(Path(p).resolve().is_relative_to(folder) for p in places)
    except (OSError, RuntimeError, TypeError, ValueError):
        return False


@contextmanager
def importable_beside(folder: Path | None) -> Iterator[None]:
    """Inside: the modules in `folder` import by name, as when the user runs a file of it with python.

    The folder goes first on sys.path, and a module already imported under a sibling's name from
    elsewhere (another folder's `models`, say) is set aside, so that `import models` means the sibling
    here; the standard library is never shadowed. On the way out the folder leaves sys.path, its
    modules leave sys.modules and what was set aside returns, so one user's files never change what
    another load imports. The objects built inside keep working: they hold their modules themselves.
    """
    if folder is None:
        yield
        return
    folder = folder.resolve()
    names = _sibling_names(folder)
    shadowed = names - sys.stdlib_module_names
    before = set(sys.modules)
    aside = {n: m for n, m in sys.modules.items() if n.partition(".")[0] in shadowed and not _from_folder(m, folder)}
    for n in aside:
        del sys.modules[n]
    entry = str(folder)
    sys.path.insert(0, entry)
    importlib.invalidate_caches()  # the folder's files may be newer than a finder's cached listing
    try:
        yield
    finally:
        if entry in sys.path:
            sys.path.remove(entry)
        for n in [n for n, m in sys.modules.items()
                  if n not in before and n.partition(".")[0] in names and _from_folder(m, folder)]:
            del sys.modules[n]
        sys.modules.update(aside)


def build_from_factory(spec: str, base_dir: str | None, what: str = "teacher factory") -> nn.Module:
    """Import the factory and call it, its folder importable throughout: a factory may import lazily."""
    file = _spec_file(spec, base_dir)
    with importable_beside(file.parent if file is not None and file.is_file() else None):
        fn = resolve_callable(spec, base_dir, what)
        try:
            model = fn()
        except Exception as exc:
            raise UsageError(f"{what} '{spec}' raised {type(exc).__name__}: {exc}") from exc
    if not isinstance(model, nn.Module):
        raise UsageError(f"{what} '{spec}' returned {type(model).__name__}, not a torch.nn.Module")
    return model


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Read weights without executing code: safetensors, or a state_dict via weights_only unpickling."""
    if path.is_dir():
        raise UsageError(f"teacher weights {path} is a directory, not a weights file")
    if not path.is_file():
        raise UsageError(f"teacher weights not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except PermissionError as exc:
        raise UsageError(f"teacher weights cannot be read: {path}") from exc
    except Exception as exc:
        from core.fileio import torch_load_reason

        raise UsageError(f"teacher weights {path} are corrupt or not a plain state_dict (code is never unpickled): {torch_load_reason(exc)}") from exc
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UsageError(f"teacher weights {path} hold a {type(obj).__name__}, not a state_dict of tensors")
    return obj


def load_weights(model: nn.Module, path: Path, what: str = "teacher") -> None:
    state = read_state_dict(path)
    state = {k.removeprefix("module."): v for k, v in state.items()}  # DataParallel checkpoints
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        detail = "; ".join(lines[1:3]) if len(lines) > 1 else lines[0]
        raise UsageError(f"{what} weights {path.name} do not fit the model: {detail[:300]}") from exc


class _ProgramBatchNorm(nn.modules.batchnorm._BatchNorm):
    """A BatchNorm call of a saved program as a module again, sharing the program's tensors, so the
    BN-statistics hooks find it. Always the inference form: a teacher is frozen."""

    def _check_input_dim(self, x: torch.Tensor) -> None:
        pass

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)


class _ProgramLinear(nn.Linear):
    """A linear call of a saved program as an nn.Linear (shared tensors): the penultimate-feature hook."""

    def __init__(self, weight: nn.Parameter, bias: nn.Parameter | None):
        nn.Module.__init__(self)
        self.in_features, self.out_features = weight.shape[1], weight.shape[0]
        _attach(self, "weight", weight)
        _attach(self, "bias", bias)


def _attach(module: nn.Module, name: str, tensor: torch.Tensor | None) -> None:
    """Share a program's tensor: a parameter stays one; a constant (TorchScript-converted) becomes a buffer."""
    if name in module._parameters:
        del module._parameters[name]
    if tensor is None or isinstance(tensor, nn.Parameter):
        module.register_parameter(name, tensor)
    else:
        module.register_buffer(name, tensor)


class ProgramTeacher(nn.Module):
    """A teacher from a program file: the graph of a torch.export program, with its BatchNorm and
    linear calls lifted back into modules. Such a graph is fixed in inference mode, so train()/eval()
    leave it alone."""

    def __init__(self, graph: nn.Module, kind: str):
        super().__init__()
        self.program = graph
        self.kind = kind

    def train(self, mode: bool = True) -> "ProgramTeacher":
        self.training = mode
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.program(x)


def _get_attr(gm: nn.Module, node) -> torch.Tensor | None:
    if node is None:
        return None
    if getattr(node, "op", None) != "get_attr":
        raise ValueError(f"argument {node} is not a stored tensor")
    value = gm
    for part in str(node.target).split("."):
        value = getattr(value, part)
    return value


def _lift_modules(gm) -> tuple[int, int]:
    """Replace aten batch_norm / linear calls in an exported graph by modules holding the same tensors."""
    aten = torch.ops.aten
    bn_ops = {aten.batch_norm.default: "batch_norm", aten._native_batch_norm_legit_no_training.default: "no_training"}
    n_bn = n_linear = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_function":
            continue
        try:
            if node.target in bn_ops:
                kind = bn_ops[node.target]
                if kind == "batch_norm":
                    x, w, b, rm, rv, training, _momentum, eps = node.args[:8]
                    if training:
                        continue
                else:
                    x, w, b, rm, rv, _momentum, eps = node.args[:7]
                    if any(u.op != "call_function" or u.target is not operator.getitem or (u.args[1] != 0 and u.users)
                           for u in node.users):
                        continue  # the batch statistics outputs are used: not an inference-only call
                weight, bias, mean, var = (_get_attr(gm, a) for a in (w, b, rm, rv))
                if mean is None or var is None:
                    continue
                bn = _ProgramBatchNorm(mean.shape[0], eps=float(eps), affine=weight is not None)
                if weight is not None:
                    _attach(bn, "weight", weight)
                    _attach(bn, "bias", bias)
                bn.running_mean, bn.running_var = mean, var
                name = f"lifted_bn_{n_bn}"
                n_bn += 1
                gm.add_submodule(name, bn)
                with gm.graph.inserting_before(node):
                    new = gm.graph.call_module(name, (x,))
                if kind == "batch_norm":
                    node.replace_all_uses_with(new)
                else:
                    for user in list(node.users):
                        if user.args[1] == 0:
                            user.replace_all_uses_with(new)
                            gm.graph.erase_node(user)
                        elif not user.users:
                            gm.graph.erase_node(user)
                gm.graph.erase_node(node)
            elif node.target is aten.linear.default:
                x, w = node.args[:2]
                b = node.args[2] if len(node.args) > 2 else None
                weight, bias = _get_attr(gm, w), _get_attr(gm, b)
                if weight is None or weight.dim() != 2:
                    continue
                name = f"lifted_linear_{n_linear}"
                n_linear += 1
                gm.add_submodule(name, _ProgramLinear(weight, bias))
                with gm.graph.inserting_before(node):
                    new = gm.graph.call_module(name, (x,))
                node.replace_all_uses_with(new)
                gm.graph.erase_node(node)
        except ValueError:  # a computed weight (not a stored tensor): leave the call as it is
            continue
    gm.graph.lint()
    gm.recompile()
    return n_bn, n_linear


def _promote_weights(gm) -> int:
    """A TorchScript program converts with its weights as buffers; make them parameters again (not the
    BatchNorm running statistics), so the teacher's size, which sizes an auto student, is counted."""
    if any(True for _ in gm.parameters()):
        return 0
    stats = set()
    for node in gm.graph.nodes:
        if node.op == "call_function" and "batch_norm" in str(node.target):
            stats.update(str(a.target) for a in node.args[3:5] if getattr(a, "op", None) == "get_attr")
    promoted = 0
    for node in gm.graph.nodes:
        target = str(node.target)
        if node.op != "get_attr" or target in stats:
            continue
        owner_name, _, leaf = target.rpartition(".")
        owner = gm.get_submodule(owner_name) if owner_name else gm
        tensor = owner._buffers.get(leaf)
        if tensor is not None and tensor.is_floating_point():
            del owner._buffers[leaf]
            owner.register_parameter(leaf, nn.Parameter(tensor, requires_grad=False))
            promoted += 1
    return promoted


def _drop_guards(gm) -> None:
    for node in list(gm.graph.nodes):
        if node.op == "call_module" and str(node.target).startswith("_guards_fn"):
            gm.graph.erase_node(node)
    gm.recompile()


def _from_exported(ep, input_shape: tuple[int, ...], origin: str) -> ProgramTeacher:
    """An ExportedProgram -> a module that takes any batch size, with BN/linear calls lifted."""
    from torch.export import Dim

    gm = ep.module()
    _drop_guards(gm)
    example = torch.randn(2, *input_shape)
    try:  # re-export with a dynamic batch: proves the graph holds no batch-size-specific shapes
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ep = torch.export.export(gm, (example,), dynamic_shapes=({0: Dim("batch", min=1)},), strict=False)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise UsageError(f"teacher program {origin} does not take a batch of inputs of shape {list(input_shape)} "
                         f"(export it with a dynamic batch dimension, e.g. dynamic_shapes={{'x': {{0: Dim('batch')}}}}): {first}") from exc
    gm = ep.module()
    _drop_guards(gm)  # the batch guard min=1 is what the pipeline gives anyway
    _promote_weights(gm)
    _lift_modules(gm)
    return ProgramTeacher(gm, "export")


def load_program(path: Path, input_shape: tuple[int, ...] | None = None) -> nn.Module:
    """A TorchScript file (torch.jit.save) or a torch.export program (.pt2, torch.export.save).

    Both become a graph whose BatchNorm and linear calls are modules again, so the BN-statistics and
    feature hooks work as for a factory teacher. A TorchScript file that cannot be converted runs as
    it is, without those two loss terms (warned).
    """
    if not path.is_file():
        raise UsageError(f"teacher program not found: {path}")
    if path.suffix in (".pt2", ".ep"):
        try:
            ep = torch.export.load(str(path))
        except Exception as exc:
            raise UsageError(f"teacher program {path} cannot be loaded with torch.export.load: {str(exc).splitlines()[0][:200]}") from exc
        return _from_exported(ep, tuple(input_shape), path.name) if input_shape else ep.module()
    try:
        script = torch.jit.load(str(path), map_location="cpu")
    except Exception as exc:
        raise UsageError(f"teacher program {path} cannot be loaded as TorchScript (or name a torch.export program .pt2): "
                         f"{str(exc).splitlines()[0][:200]}") from exc
    script.eval()
    if not input_shape:
        return script
    try:
        from torch._export.converter import TS2EPConverter

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ep = TS2EPConverter(script, (torch.randn(2, *input_shape),)).convert()
        return _from_exported(ep, tuple(input_shape), path.name)
    except Exception:
        warn_once(f"teacher program {path.name}: this TorchScript could not be converted to a graph with hookable "
                  "layers; running it as is, without the BN-statistics and feature terms")
        return script


PROBE_BATCH = 8  # random inputs per load-time probe: enough rows that logits never pass for probabilities


def probe(model: nn.Module, spec: TaskSpec) -> Any:
    """The teacher's raw output on a batch of random inputs in its normalised input space."""
    # A generator of its own: loading the teacher leaves the run's random stream where the seed put it.
    x = torch.randn(PROBE_BATCH, *spec.input_shape, generator=torch.Generator().manual_seed(0))
    try:
        with torch.no_grad():
            return model(x)
    except Exception as exc:
        msg = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise UsageError(f"teacher rejects input of shape {list(spec.input_shape)}: {msg}") from exc


def check_input_gradients(model: nn.Module, spec: TaskSpec) -> None:
    """Data-free synthesis moves inputs along the teacher's gradients, and the student learns from the very
    inputs the teacher read: a forward that leaves autograd (numpy, torch.no_grad(), .detach()) gives the
    generator nothing to follow (its samples collapse, and a student that learnt nothing still agrees with
    the teacher on them), and one that changes its input in place alters the student's batch."""
    x = torch.randn(PROBE_BATCH, *spec.input_shape, generator=torch.Generator().manual_seed(1)).requires_grad_(True)
    gradient = None
    try:
        out = model(x)
        if isinstance(out, torch.Tensor) and out.requires_grad:
            weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(2), dtype=out.dtype)
            gradient = torch.autograd.grad((out * weights).sum(), x, allow_unused=True)[0]
    except RuntimeError as exc:
        if "leaf Variable" in str(exc):
            raise UsageError("teacher's forward changes its input in place (e.g. x.sub_(...)): copy it first "
                             "(x = x.clone()) or use out-of-place operations (x = x - ...)") from exc
        # e.g. an in-place change of a tensor its backward needs (the forward itself runs, as the probe showed)
        raise UsageError(f"teacher's forward cannot be differentiated with respect to its input: "
                         f"{str(exc).strip().splitlines()[0][:200]}") from exc
    if gradient is None or not bool(torch.isfinite(gradient).all() and gradient.abs().sum() > 0):
        raise UsageError("teacher's output has no gradient with respect to its input: its forward leaves autograd "
                         "(numpy, torch.no_grad(), .detach(), .item()), and data-free distillation synthesises inputs "
                         "by following the teacher's gradients; keep the forward in differentiable torch operations")


def _parts(out: Any) -> list[tuple[int | str, Any]]:
    """The numbered or named parts of a structured output: tuple/list items, dict entries, public attributes."""
    if isinstance(out, (tuple, list)):
        return list(enumerate(out))
    if isinstance(out, Mapping):
        return list(out.items())
    if dataclasses.is_dataclass(out):
        return [(f.name, getattr(out, f.name)) for f in dataclasses.fields(out)]
    return [(k, v) for k, v in vars(out).items() if not k.startswith("_")] if hasattr(out, "__dict__") else []


def _account(out: Any, most: int = 6) -> str:
    """What the teacher returned, in a few words: 'a tuple of 2 (tensor [8, 10], tensor [8, 64])'."""
    def one(v: Any) -> str:
        return f"tensor {list(v.shape)}" if isinstance(v, torch.Tensor) else type(v).__name__

    if isinstance(out, torch.Tensor):
        return f"a {one(out)}"
    parts = _parts(out)
    if isinstance(out, (tuple, list)):
        shown, size = [one(v) for _, v in parts[:most]], f" of {len(parts)}"
    else:
        label = "{!r}: " if isinstance(out, Mapping) else ".{}: "
        shown, size = [label.format(k) + one(v) for k, v in parts[:most]], ""
    more = ", ..." if len(parts) > most else ""
    name = type(out).__name__
    article = "an" if name[:1].lower() in "aeiou" else "a"
    return f"{article} {name}{size} ({', '.join(shown)}{more})" if parts else f"{article} {name}"


def _suggest(out: Any, num_classes: int) -> int | str | None:
    """The part that looks like logits, [batch, num_classes], else the first tensor."""
    tensors = [(k, v) for k, v in _parts(out) if isinstance(v, torch.Tensor)]
    fitting = [k for k, v in tensors if v.dim() == 2 and v.shape[1] == num_classes]
    return fitting[0] if fitting else tensors[0][0] if tensors else None


def select_output(out: Any, output: int | str) -> Any:
    """The part `output` names: an index into a tuple/list, a dict key, or an attribute."""
    def refuse(why: str) -> UsageError:
        return UsageError(f"teacher.output = {json.dumps(output)} {why}: the teacher returned {_account(out)}")

    if isinstance(out, torch.Tensor):
        raise refuse("selects from a structured output, but a plain tensor needs no selection (remove the setting)")
    if isinstance(output, int):
        if not isinstance(out, (tuple, list)):
            raise refuse("is an index, for a tuple or list; name a key or attribute instead")
        if not -len(out) <= output < len(out):
            raise refuse(f"is out of range (0..{len(out) - 1})")
        return out[output]
    if isinstance(out, Mapping):
        if output not in out:
            raise refuse("is not one of its keys")
        return out[output]
    if not hasattr(out, output):
        raise refuse("is not one of its attributes" + ("; use an index" if isinstance(out, (tuple, list)) else ""))
    return getattr(out, output)


def _has_logits(out: Any) -> bool:
    """Whether a structured output carries a 'logits' tensor, as hub-style model outputs do."""
    value = out.get("logits") if isinstance(out, Mapping) else getattr(out, "logits", None)
    return isinstance(value, torch.Tensor)


def _logits_part(out: Any, output: int | str | None, num_classes: int) -> int | str | None:
    """Which part of the output holds the logits: the setting, a part named 'logits' (hub-style outputs,
    taken with a warning), or none for a tensor; anything else is refused with the setting to use."""
    if output is not None or isinstance(out, torch.Tensor):
        return output
    if _has_logits(out):
        warn_once(f"teacher returned {_account(out)}: distilling from its 'logits' (teacher.output picks another part)")
        return "logits"
    hint = _suggest(out, num_classes)
    fix = f"set teacher.output = {json.dumps(hint)} to pick the logits" if hint is not None else \
        "return a logits tensor, or set teacher.output to the part that holds it"
    raise UsageError(f"teacher returned {_account(out)}; {fix}")


def is_probabilities(out: torch.Tensor, tolerance: float = 1e-3) -> bool:
    """Rows of non-negative values that sum to 1: a softmax output. Logits do so on every row of a random
    batch only by a coincidence too unlikely to matter."""
    if out.dim() != 2 or not out.is_floating_point():
        return False
    return bool((out >= 0).all() and ((out.sum(dim=1) - 1).abs() <= tolerance).all())


def log_probabilities(probs: torch.Tensor) -> torch.Tensor:
    """Probabilities -> log-probabilities, which the losses take as logits (a softmax gives the same
    distribution back); a zero probability becomes the log of the smallest normal number, not -inf."""
    return torch.log(probs.clamp_min(torch.finfo(probs.dtype).tiny))


class TeacherLogits(nn.Module):
    """A teacher whose forward returns a logits tensor: the part `output` of what the model returns, made
    log-probabilities when the model returns probabilities. The model stays a submodule, so the hooks on
    its BatchNorm and linear layers find them."""

    def __init__(self, model: nn.Module, output: int | str | None, from_probabilities: bool):
        super().__init__()
        self.model = model
        self.output = output
        self.from_probabilities = from_probabilities

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x)
        if self.output is not None:
            out = select_output(out, self.output)
        return log_probabilities(out) if self.from_probabilities else out


def _check_logits(logits: Any, part: int | str | None, out: Any, num_classes: int) -> None:
    """The probe's logits: a finite tensor [batch, num_classes]; `part` names where they came from in `out`."""
    if not isinstance(logits, torch.Tensor):
        raise UsageError(f"teacher.output = {json.dumps(part)} picks a {type(logits).__name__}, not a logits tensor: "
                         f"the teacher returned {_account(out)}")
    if tuple(logits.shape) != (PROBE_BATCH, num_classes):
        what = "teacher output" if part is None else f"teacher.output = {json.dumps(part)} picks a tensor that"
        raise UsageError(f"{what} has shape {list(logits.shape)}, expected [batch, {num_classes}]")
    if not torch.isfinite(logits).all():
        raise RunError("teacher returns NaN or inf on random input; check its weights")


def as_logits_teacher(model: nn.Module, spec: TaskSpec, output: int | str | None) -> nn.Module:
    """Probe the teacher once and return a module giving logits [batch, num_classes]: the model itself
    when it returns them, else wrapped in a TeacherLogits."""
    out = probe(model, spec)
    part = _logits_part(out, output, spec.num_classes)
    logits = out if part is None else select_output(out, part)
    _check_logits(logits, part, out, spec.num_classes)
    from_probabilities = is_probabilities(logits)
    if from_probabilities:
        warn_once("teacher returns probabilities (rows sum to 1): distilling from their logarithm as logits")
    teacher = model if part is None and not from_probabilities else TeacherLogits(model, part, from_probabilities)
    check_input_gradients(teacher, spec)
    return teacher


def batchnorm_statistics(model: nn.Module) -> list[nn.Module]:
    """The model's BatchNorm layers that keep running statistics: the only ones the BN-statistics prior can
    match (one built with track_running_stats=False normalises by each batch alone and remembers nothing)."""
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


def has_batchnorm(model: nn.Module) -> bool:
    return bool(batchnorm_statistics(model))


def batch_statistics_norms(model: nn.Module) -> list[str]:
    """BatchNorm layers that keep no running statistics (track_running_stats=False): they normalise by the
    statistics of whatever batch they are given, in eval mode too, so a deployed model's answer for an input
    would depend on the other inputs of its batch. Neither ONNX nor an INT8 graph can express that."""
    return [name for name, m in model.named_modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and not m.track_running_stats]


def refuse_batch_statistics(model: nn.Module, what: str) -> None:
    names = batch_statistics_norms(model)
    if names:
        raise UsageError(f"{what} has BatchNorm layers without running statistics ({', '.join(names[:3])}"
                         f"{', ...' if len(names) > 3 else ''}): they normalise each batch by its own statistics even "
                         "at inference, which cannot be exported; train it with track_running_stats=True")


class _OpNames(TorchDispatchMode):
    """Records the name of every aten operator a forward pass dispatches."""

    def __init__(self):
        super().__init__()
        self.names: set[str] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.add(func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))


def computes_convolution(model: nn.Module, input_shape: tuple[int, ...]) -> bool:
    """Whether the (eval-mode) model convolves anywhere, from the operators one forward pass on a zero batch
    dispatches: a factory's modules, a TorchScript file and an exported program alike, whatever they call them."""
    device = next(iter(model.parameters()), torch.empty(0)).device
    x = torch.zeros((2, *input_shape), device=device)
    with torch.no_grad(), _OpNames() as ops:
        model(x)
    # aten.convolution (eager, scripted), aten._convolution (traced) and their backends all name it so
    return any("convolution" in name for name in ops.names)


def load_teacher(cfg, weights: bool = True) -> tuple[nn.Module, TaskSpec]:
    """`cfg`: a run config (its `teacher` section and `config_dir`). `weights=False` builds the architecture
    only, for weights that come from elsewhere (a program carries its own either way)."""
    t = cfg.teacher
    if t.builtin == "digits":
        from core.tasks import digits

        model = digits.build_teacher()
        if weights:
            load_weights(model, digits.WEIGHTS)
        spec = TaskSpec(digits.INPUT_SHAPE, digits.NUM_CLASSES, digits.CLASSES, digits.MEAN, digits.STD,
                        digits.SCALE, "built-in digits teacher")
    else:
        if t.program:
            model = load_program(resolve_path(cfg, t.program), tuple(t.input_shape))
            if t.weights:
                warn_once(f"teacher 'weights' ignored: the program {t.program} carries its own")
            source = f"program {t.program}"
        else:
            model = build_from_factory(t.factory, cfg.config_dir)
            if t.weights and weights:
                load_weights(model, resolve_path(cfg, t.weights))
            elif not t.weights:
                warn_once("teacher has no 'weights': using the factory's own initialisation")
            source = f"factory {t.factory}"
        spec = TaskSpec(tuple(t.input_shape), t.num_classes, t.classes, list(t.mean) or [0.0], list(t.std) or [1.0],
                        t.scale, source)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return as_logits_teacher(model, spec, t.output), spec


def teacher_architecture(section: dict, config_dir: str | None) -> nn.Module:
    """The teacher's own architecture, trainable and without its weights, from its `[teacher]` section as a
    run stored it: the student of a run that quantizes the model itself."""
    from types import SimpleNamespace

    from core.teacher_config import TeacherConfig

    model, _ = load_teacher(SimpleNamespace(teacher=TeacherConfig(**section), config_dir=config_dir), weights=False)
    for p in model.parameters():
        p.requires_grad_(True)
    return model
