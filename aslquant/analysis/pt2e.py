"""Per-layer analysis of a pt2e run: its converted graph mapped back to conv1..fc2.

A pt2e model is a ``torch.compile``'d graph with no layer modules to hook. Its uncompiled
converted graph (``QuantizedModel.reference``) is plain ATen ops with explicit
``quantized_decomposed.quantize_*`` / ``dequantize_*`` nodes, and every node traced from a
module carries ``meta["nn_module_stack"]`` (the module path it came from; the same source
information torchao's pt2e numeric debugger keys its comparisons on). So:

- ``map_layers`` finds each layer's compute node (the conv2d/linear traced from ``conv1`` ...
  ``fc2``), the dequantize node giving its weights, the quantize node its input passed
  through, and the quantize node after its ReLU;
- ``inspect_graph`` reads weights and grids from those nodes (``capture.LayerQuant``);
- ``tap`` runs the graph once and keeps each layer's output as the INT8 model carries it;
- ``isolated_output`` re-evaluates only one layer's nodes, fed another input (the FP32
  model's), which is the layer's own error with nothing before it quantized.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import torch
from torch import fx

from aslquant.analysis.capture import LayerQuant, QuantizedLayers
from aslquant.analysis.fakequant import QParams
from aslquant.model import LAYER_NAMES
from aslquant.qmodules import RELU_AFTER


def _quant_op(node: fx.Node, kind: str) -> bool:
    """Whether ``node`` calls quantized_decomposed.<kind>_per_tensor / _per_channel."""
    return node.op == "call_function" and str(node.target).startswith(
        f"quantized_decomposed.{kind}_per_"
    )


def _module_name(node: fx.Node) -> str | None:
    """The innermost module a node was traced from (last part of its module path)."""
    stack = node.meta.get("nn_module_stack")
    if not stack:
        return None
    path = list(stack.values())[-1][0]
    return str(path).rsplit(".", 1)[-1]


@dataclass(frozen=True, eq=False)
class GraphLayer:
    """The nodes of one layer in a converted pt2e graph."""

    name: str
    compute: fx.Node  # aten conv2d / linear
    weight: fx.Node | None  # dequantize node of the INT8 weights (None: float weights)
    input_quant: fx.Node | None  # quantize node the layer's input went through (None: float)
    output_quant: fx.Node | None  # quantize node after the layer's ReLU (None: float output)
    output: fx.Node  # the layer's output after its ReLU as the graph carries it


@dataclass(frozen=True, eq=False)
class GraphLayers:
    """A converted graph and its layers, found by ``map_layers``."""

    graph_module: fx.GraphModule
    layers: Mapping[str, GraphLayer] = field(default_factory=dict)
    placeholder: fx.Node | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "layers", MappingProxyType(dict(self.layers)))


def map_layers(graph_module: fx.GraphModule) -> GraphLayers:
    """Find conv1..fc2 in a converted pt2e graph through its nodes' module paths."""
    relu_of = {relu: name for name, relu in RELU_AFTER.items() if relu}
    nodes = list(graph_module.graph.nodes)
    placeholder = next((n for n in nodes if n.op == "placeholder"), None)
    layers: dict[str, GraphLayer] = {}
    for node in nodes:
        name = _module_name(node)
        if node.op != "call_function" or name not in LAYER_NAMES or name in layers:
            continue
        if _quant_op(node, "quantize") or _quant_op(node, "dequantize"):
            continue
        weight = node.args[1] if len(node.args) > 1 else None
        weight = weight if isinstance(weight, fx.Node) and _quant_op(weight, "dequantize") else None
        source = node.args[0] if node.args else None
        input_quant = None
        if isinstance(source, fx.Node) and _quant_op(source, "dequantize"):
            producer = source.args[0]
            if isinstance(producer, fx.Node) and _quant_op(producer, "quantize"):
                input_quant = producer
        out = node
        if RELU_AFTER[name]:
            relu = next((u for u in node.users if relu_of.get(_module_name(u)) == name), None)
            out = relu if relu is not None else node
        output_quant = next((u for u in out.users if _quant_op(u, "quantize")), None)
        tap = out
        if output_quant is not None:
            tap = next((u for u in output_quant.users if _quant_op(u, "dequantize")), out)
        layers[name] = GraphLayer(name, node, weight, input_quant, output_quant, tap)
    ordered = {n: layers[n] for n in LAYER_NAMES if n in layers}
    return GraphLayers(graph_module, ordered, placeholder)


def evaluate(graph_module: fx.GraphModule, node: fx.Node, env: dict[fx.Node, Any]) -> Any:
    """The value of ``node``, computing only the nodes it depends on (memoized in ``env``).

    Values already in ``env`` are taken as given: seeding it with another tensor for some node
    evaluates the rest of the graph as if that node had produced it.
    """
    if node in env:
        return env[node]
    if node.op == "placeholder":
        raise ValueError(f"graph input {node.name} has no value")

    def value(arg: fx.Node) -> Any:
        return evaluate(graph_module, arg, env)

    args = fx.node.map_arg(node.args, value)
    kwargs = fx.node.map_arg(node.kwargs, value)
    if node.op == "get_attr":
        result = graph_module
        for part in str(node.target).split("."):
            result = getattr(result, part)
    elif node.op == "call_function":
        result = node.target(*args, **kwargs)
    elif node.op == "call_module":
        result = graph_module.get_submodule(str(node.target))(*args, **kwargs)
    elif node.op == "call_method":
        self_obj, *rest = args
        result = getattr(self_obj, str(node.target))(*rest, **kwargs)
    else:
        raise ValueError(f"cannot evaluate node {node.name} ({node.op})")
    env[node] = result
    return result


def _as_int(value: Any) -> int:
    return int(value.item()) if isinstance(value, torch.Tensor) else int(value)


def _qparams(graph_module: fx.GraphModule, node: fx.Node) -> QParams:
    """The grid a quantize/dequantize node applies (its scale, zero point, quant_min/max)."""
    env: dict[fx.Node, Any] = {}

    def arg(i: int) -> Any:
        a = node.args[i]
        return evaluate(graph_module, a, env) if isinstance(a, fx.Node) else a

    if "per_channel" in str(node.target):
        scales, zero_points, axis = arg(1), arg(2), _as_int(arg(3))
        return QParams(
            tuple(float(s) for s in torch.as_tensor(scales).flatten()),
            tuple(int(z) for z in torch.as_tensor(zero_points).flatten()),
            _as_int(arg(4)),
            _as_int(arg(5)),
            axis,
        )
    scale = arg(1)
    scale = float(scale.item()) if isinstance(scale, torch.Tensor) else float(scale)
    return QParams.per_tensor(scale, _as_int(arg(2)), _as_int(arg(3)), _as_int(arg(4)))


def inspect_graph(graph: GraphLayers) -> QuantizedLayers:
    """Each layer's dequantized weights and grids, read from the converted graph's nodes."""
    gm = graph.graph_module
    layers = {}
    with torch.inference_mode():
        for name, layer in graph.layers.items():
            weight = w_qparams = None
            dtype = "float32"
            if layer.weight is not None:
                weight = evaluate(gm, layer.weight, {}).float()
                w_qparams = _qparams(gm, layer.weight)
                dtype = str(layer.weight.args[-1]).replace("torch.", "")
            layers[name] = LayerQuant(
                name,
                weight,
                dtype,
                w_qparams,
                _qparams(gm, layer.input_quant) if layer.input_quant is not None else None,
                _qparams(gm, layer.output_quant) if layer.output_quant is not None else None,
            )
    return QuantizedLayers(layers, "graph")


class _Tap(fx.Interpreter):
    """Runs a graph and keeps the values of some nodes (all others are freed as usual)."""

    def __init__(self, graph_module: fx.GraphModule, taps: Mapping[fx.Node, str]) -> None:
        super().__init__(graph_module)
        self.taps = taps
        self.values: dict[str, torch.Tensor] = {}

    def run_node(self, n: fx.Node) -> Any:
        result = super().run_node(n)
        if n in self.taps:
            self.values[self.taps[n]] = result
        return result


def tap(graph: GraphLayers, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every layer's output (after its ReLU) as the quantized graph computes it for ``x``."""
    runner = _Tap(graph.graph_module, {layer.output: name for name, layer in graph.layers.items()})
    runner.run(x)
    return runner.values


def isolated_output(
    graph: GraphLayers, name: str, layer_input: torch.Tensor
) -> torch.Tensor | None:
    """Layer ``name``'s output when its input is ``layer_input`` (float) instead of the
    graph's own: the graph's quantize node for that input, the layer's INT8 weights, its ReLU
    and output quantization are evaluated, nothing else. None when the input is not quantized
    (a float layer adds no error of its own)."""
    layer = graph.layers[name]
    if layer.input_quant is None or layer.weight is None:
        return None
    source = layer.input_quant.args[0]
    return evaluate(graph.graph_module, layer.output, {source: layer_input})
