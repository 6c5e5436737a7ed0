"""Per-layer sensitivity to INT8, measured without data, and which layers to keep in floating point.

A layer is a weighted operation (Conv, Linear, MatMul) as NNCF names it in its graph and in an
`IgnoredScope`; its quantizers are its weight quantizer and those on its inputs, found by walking back
through the ops that carry no quantizer (pooling, reshapes, activations). Quantizing once and switching quantizers on
and off measures each layer alone in INT8 (everything else float) on synthetic probes: the KL divergence
of its output from the float output, and how often its top-1 class agrees.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class LayerScore:
    layer: str
    kl: float  # mean KL(float || int8) of the softmax outputs, per probe
    agreement: float  # top-1 agreement with the float model, 0..1

    def to_json(self) -> dict:
        return {"layer": self.layer, "kl": round(self.kl, 6), "agreement": self.agreement,
                "drop_points": round(100 * (1 - self.agreement), 2)}


def _quantizers(qmodel: nn.Module) -> dict[tuple[str, str, int], nn.Module]:
    """Every quantizer NNCF inserted, by (hook type, op name, port)."""
    from nncf.torch.function_hook.hook_storage import decode_hook_name
    from nncf.torch.function_hook.wrapper import get_hook_storage
    from nncf.torch.quantization.layers import BaseQuantizer

    return {decode_hook_name(name): hook for name, hook in get_hook_storage(qmodel).named_hooks()
            if isinstance(hook, BaseQuantizer)}


def _is_const(node) -> bool:
    return "Const" in node.metatype.__name__


def _has_weight(graph, node) -> bool:
    return any(_is_const(e.from_node) for e in graph.get_input_edges(node))


def _walk_back(graph, node, stop) -> set[str]:
    """Names of the nearest nodes upstream of `node`'s activation inputs for which `stop` holds, walking
    through the ops without weights."""
    found: set[str] = set()
    for edge in graph.get_input_edges(node):
        prev = edge.from_node
        if _is_const(prev):
            continue
        if stop(prev):
            found.add(prev.node_name)
        elif not _has_weight(graph, prev):
            found |= _walk_back(graph, prev, stop)
    return found


@dataclass
class Layer:
    quantizers: list[nn.Module]  # its weight quantizer and the activation quantizers on its inputs
    inputs: dict[str, set[str]]  # op whose quantized output it reads -> the weighted layers that make it


def find_layers(qmodel: nn.Module, folded: nn.Module, example: torch.Tensor) -> dict[str, Layer]:
    """Each quantized weighted layer of `qmodel` (quantized from `folded`), by NNCF's node name."""
    from nncf.torch.function_hook.nncf_graph.nncf_graph_builder import build_nncf_graph

    found = _quantizers(qmodel)
    graph = build_nncf_graph(folded, example)
    post = {op for kind, op, _ in found if kind == "post_hooks"}
    weighted = lambda n: _has_weight(graph, n)  # noqa: E731
    layers: dict[str, Layer] = {}
    for node in graph.get_all_nodes():
        mine = [q for (kind, op, _), q in found.items() if kind == "pre_hooks" and op == node.node_name]
        if not mine or not weighted(node):
            continue
        inputs = _walk_back(graph, node, lambda n: n.node_name in post)
        mine += [q for (kind, op, _), q in found.items() if kind == "post_hooks" and op in inputs]
        producers = {op: ({op} if weighted(graph.get_node_by_name(op))
                          else _walk_back(graph, graph.get_node_by_name(op), weighted)) for op in inputs}
        layers[node.node_name] = Layer(mine, producers)
    return layers


def whole_units(layers: dict[str, Layer], kept: list[str]) -> list[str]:
    """`kept` and the layers that must join it in float on ONNX Runtime.

    ONNX Runtime runs a layer as an integer kernel only when its output is quantized again. A layer kept
    in float takes the quantizers on its inputs with it unless an INT8 layer still reads them, and the
    layers that produce those inputs then run in float anyway: they are kept in float too.
    """
    kept = list(kept)
    while True:
        read = {op for name, layer in layers.items() if name not in kept for op in layer.inputs}
        orphaned = {p for name in kept for op, makers in layers[name].inputs.items() if op not in read for p in makers}
        new = sorted(p for p in orphaned if p in layers and p not in kept)
        if not new:
            return kept
        kept += new


def _set(qmodel: nn.Module, enabled: list[nn.Module]) -> None:
    on = {id(q) for q in enabled}
    for q in _quantizers(qmodel).values():
        if id(q) in on:
            q.enable_quantization()
        else:
            q.disable_quantization()


def _compare(qmodel: nn.Module, probes: torch.Tensor, reference: torch.Tensor) -> LayerScore:
    with torch.no_grad():
        logits = qmodel(probes)
    kl = F.kl_div(F.log_softmax(logits, 1), F.log_softmax(reference, 1), log_target=True, reduction="batchmean")
    agreement = float((logits.argmax(1) == reference.argmax(1)).float().mean())
    return LayerScore("", float(kl), agreement)


def rank_layers(qmodel: nn.Module, layers: dict[str, Layer], probes: torch.Tensor) -> list[LayerScore]:
    """Each layer alone in INT8 on the probes, most sensitive first (lowest agreement, then highest KL).
    Leaves every quantizer enabled."""
    qmodel.eval()
    _set(qmodel, [])
    with torch.no_grad():
        reference = qmodel(probes)
    scores = []
    for name, layer in layers.items():
        _set(qmodel, layer.quantizers)
        s = _compare(qmodel, probes, reference)
        scores.append(LayerScore(name, s.kl, s.agreement))
    _set(qmodel, list(_quantizers(qmodel).values()))
    return sorted(scores, key=lambda s: (s.agreement, -s.kl))


def keep_in_float(qmodel: nn.Module, layers: dict[str, Layer], ranking: list[LayerScore], probes: torch.Tensor,
                  max_drop: float, expand: Callable[[dict[str, Layer], list[str]], list[str]] | None = None,
                  ) -> tuple[list[str], float]:
    """The fewest most-sensitive layers to keep in float (grown by `expand`, a target's rule) so that the rest
    in INT8 moves top-1 agreement with the float model by at most `max_drop` points on the probes; with the
    estimated drop. Leaves every quantizer enabled."""
    everything = list(_quantizers(qmodel).values())
    _set(qmodel, [])
    with torch.no_grad():
        reference = qmodel(probes)
    kept: list[str] = []
    for score in [None, *ranking]:
        if score is not None and score.layer not in kept:
            kept = expand(layers, [*kept, score.layer]) if expand else [*kept, score.layer]
        off = {id(q) for name in kept for q in layers[name].quantizers}
        _set(qmodel, [q for q in everything if id(q) not in off])
        drop = 100 * (1 - _compare(qmodel, probes, reference).agreement)
        if drop <= max_drop:
            break
    _set(qmodel, everything)
    return kept, round(drop, 2)
