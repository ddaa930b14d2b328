"""The ``DyNetDynamicConv2d`` op's identity, once for every Python caller.

Name, domain, versions, the scalar int attributes (type, default, valid range), the inputs and the activation
enum of the op contract (plugins/dynamic_conv/README.md). The C/C++ side has its own single table, the C ABI's
attribute table (``dynet_conv_attribute``); a test holds the two equal, name by name.
"""

from __future__ import annotations

import enum
import operator
from dataclasses import dataclass
from typing import Any, Mapping

OP_TYPE = "DyNetDynamicConv2d"
# onnxruntime's TensorRT execution provider hands nodes of this domain to TensorRT plugins, and
# TensorRT's own ONNX parser ignores the domain; one constant keeps every consumer consistent.
OP_DOMAIN = "trt.plugins"
# Op versions (README, "Versions"): 1, and 2 with the spatial and residual inputs, the mean output and a narrowed
# bank. A graph imports the lowest version its nodes need; OP_DOMAIN_VERSION is the newest.
OP_VERSIONS = (1, 2)
OP_DOMAIN_VERSION = OP_VERSIONS[-1]
PLUGIN_VERSION = "1"  # the plugin version of an op-version-1 node; a version-v node carries str(v)
PLUGIN_NAMESPACE = ""
# String attributes TensorRT's ONNX parser reads to pick the plugin creator; not part of the op's math.
PLUGIN_STRING_ATTRIBUTES = {"plugin_version": PLUGIN_VERSION, "plugin_namespace": PLUGIN_NAMESPACE}
# The weight bank's storage types: the I/O type, or (version 2, float I/O) a narrower one.
BANK_DTYPES = ("fp32", "fp16", "bf16")

INT32_MAX = 2**31 - 1


class Activation(enum.IntEnum):
    """The ``activation`` attribute's codes."""

    NONE = 0
    RELU = 1
    RELU6 = 2


ACTIVATIONS = {a.name.lower(): int(a) for a in Activation}  # {"none": 0, "relu": 1, "relu6": 2}


@dataclass(frozen=True)
class Attribute:
    """One scalar int attribute: its ONNX name, default and inclusive valid range."""

    name: str
    default: int
    min: int
    max: int = INT32_MAX
    type: type = int
    since_version: int = 1

    def check(self, value: Any) -> int:
        try:
            if isinstance(value, bool):
                raise TypeError
            v = operator.index(value)  # ints and numpy integers; floats and strings are refused
        except TypeError:
            raise ValueError(f"attribute '{self.name}' must be an int, got {value!r}") from None
        if not self.min <= v <= self.max:
            raise ValueError(f"attribute '{self.name}' = {v}: {self.range_text()}")
        return v

    def range_text(self) -> str:
        if self.max == INT32_MAX:
            return f"must be >= {self.min}"
        if self.max - self.min == 1:
            return f"must be {self.min} or {self.max}"
        return f"must be in [{self.min}, {self.max}]"


ATTRIBUTES: tuple[Attribute, ...] = (
    Attribute("stride_h", 1, 1),
    Attribute("stride_w", 1, 1),
    Attribute("pad_top", 0, 0),
    Attribute("pad_left", 0, 0),
    Attribute("pad_bottom", 0, 0),
    Attribute("pad_right", 0, 0),
    Attribute("dilation_h", 1, 1),
    Attribute("dilation_w", 1, 1),
    Attribute("groups", 1, 1),
    Attribute("activation", int(Activation.NONE), int(Activation.NONE), int(Activation.RELU6)),
    Attribute("has_bias_bank", 0, 0, 1),
    Attribute("has_bias", 0, 0, 1),
    Attribute("has_spatial", 0, 0, 1, since_version=2),
    Attribute("has_residual", 0, 0, 1, since_version=2),
    Attribute("has_mean", 0, 0, 1, since_version=2),
)
ATTRIBUTE_NAMES: tuple[str, ...] = tuple(a.name for a in ATTRIBUTES)
VERSION_2_ATTRIBUTES: tuple[str, ...] = tuple(a.name for a in ATTRIBUTES if a.since_version == 2)
_BY_NAME = {a.name: a for a in ATTRIBUTES}
DEFAULTS: dict[str, int] = {a.name: a.default for a in ATTRIBUTES}

# Inputs in node order; the optional ones are present exactly when their has_* attribute is 1.
INPUTS: tuple[str, ...] = ("x", "coeff", "weight", "bias_bank", "bias", "spatial", "residual")
REQUIRED_INPUTS = INPUTS[:3]
OPTIONAL_INPUT_FLAGS = {
    "bias_bank": "has_bias_bank",
    "bias": "has_bias",
    "spatial": "has_spatial",
    "residual": "has_residual",
}
OUTPUTS: tuple[str, ...] = ("y", "mean")
OPTIONAL_OUTPUT_FLAGS = {"mean": "has_mean"}


def input_names(values: Mapping[str, int]) -> list[str]:
    """The node's input names, in order, for checked attributes."""
    return [*REQUIRED_INPUTS, *(n for n, flag in OPTIONAL_INPUT_FLAGS.items() if values.get(flag, 0))]


def output_names(values: Mapping[str, int]) -> list[str]:
    return ["y", *(n for n, flag in OPTIONAL_OUTPUT_FLAGS.items() if values.get(flag, 0))]


def op_version(values: Mapping[str, int], bank_dtype: str = "fp32") -> int:
    """The lowest op version that expresses a node: 2 with a version-2 attribute set or a narrowed bank, else 1."""
    if bank_dtype not in BANK_DTYPES:
        raise ValueError(f"bank dtype must be one of {list(BANK_DTYPES)}, got {bank_dtype!r}")
    return 2 if bank_dtype != "fp32" or any(values.get(n, 0) for n in VERSION_2_ATTRIBUTES) else 1


def plugin_string_attributes(version: int) -> dict[str, str]:
    """``plugin_version`` / ``plugin_namespace`` of a node of op version ``version``."""
    if version not in OP_VERSIONS:
        raise ValueError(f"{OP_TYPE} has op versions {list(OP_VERSIONS)}, got {version}")
    return {"plugin_version": str(version), "plugin_namespace": PLUGIN_NAMESPACE}


def attributes(
    stride=(1, 1),
    pads=(0, 0, 0, 0),
    dilation=(1, 1),
    groups: int = 1,
    activation: int | str = 0,
    has_bias_bank: bool = False,
    has_bias: bool = False,
    has_spatial: bool = False,
    has_residual: bool = False,
    has_mean: bool = False,
) -> dict[str, int]:
    """The attribute dict from conv-style arguments (``pads`` = top, left, bottom, right), checked."""
    if isinstance(activation, str):
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {list(ACTIVATIONS)}, got {activation!r}")
        activation = ACTIVATIONS[activation]
    values = dict(
        zip(
            ATTRIBUTE_NAMES,
            (
                *stride,
                *pads,
                *dilation,
                groups,
                activation,
                *(int(bool(f)) for f in (has_bias_bank, has_bias, has_spatial, has_residual, has_mean)),
            ),
        )
    )
    if len(values) != len(ATTRIBUTES):
        raise ValueError(f"expected 2 strides, 4 pads and 2 dilations, got {stride}, {pads}, {dilation}")
    return check_attributes(values)


def check_attributes(values: Mapping[str, Any]) -> dict[str, int]:
    """Every attribute (defaults filled in) checked against its range; unknown names are an error."""
    unknown = sorted(set(values) - set(ATTRIBUTE_NAMES))
    if unknown:
        raise ValueError(f"unknown attribute(s) {unknown}; {OP_TYPE} takes {list(ATTRIBUTE_NAMES)}")
    return {a.name: a.check(values.get(a.name, a.default)) for a in ATTRIBUTES}


def conv_arguments(attrs: Mapping[str, int]) -> dict[str, Any]:
    """The checked attributes as conv-style arguments: stride, pads (t, l, b, r), dilation, groups, activation."""
    a = check_attributes(attrs)
    return {
        "stride": (a["stride_h"], a["stride_w"]),
        "pads": (a["pad_top"], a["pad_left"], a["pad_bottom"], a["pad_right"]),
        "dilation": (a["dilation_h"], a["dilation_w"]),
        "groups": a["groups"],
        "activation": a["activation"],
    }


def node_attributes(values: Mapping[str, Any], version: int = 1) -> dict[str, Any]:
    """The attributes a node of op version ``version`` carries: a version-1 node has none of version 2's, and a
    node whose attributes need version 2 cannot be written as version 1."""
    checked = check_attributes(values)
    needed = op_version(checked)
    if needed > version:
        raise ValueError(f"{OP_TYPE}: {[n for n in VERSION_2_ATTRIBUTES if checked[n]]} need op version 2")
    keep = {a.name: checked[a.name] for a in ATTRIBUTES if a.since_version <= version}
    return {**keep, **plugin_string_attributes(version)}


def make_node(inputs, outputs, name: str | None = None, version: int = 1, **attrs: Any):
    """An ``onnx.NodeProto`` of op version ``version`` with checked attributes and the plugin's string attributes."""
    from onnx import helper

    values = check_attributes(attrs)
    expected, expected_out = input_names(values), output_names(values)
    if len(inputs) != len(expected) or len(outputs) != len(expected_out):
        flags = {k: v for k, v in values.items() if k.startswith("has_")}
        raise ValueError(
            f"{OP_TYPE} with {flags} takes inputs {expected} and outputs {expected_out}, "
            f"got {len(inputs)} inputs and {len(outputs)} outputs"
        )
    return helper.make_node(
        OP_TYPE, list(inputs), list(outputs), name=name, domain=OP_DOMAIN, **node_attributes(values, version)
    )


def gs_attributes(values: Mapping[str, Any], version: int = 1) -> dict[str, Any]:
    """Checked attributes plus the plugin's string attributes, for an onnx-graphsurgeon ``gs.Node``."""
    return node_attributes(values, version)


def read_attributes(node) -> dict[str, int]:
    """The checked int attributes of a node (an ``onnx.NodeProto`` or a ``gs.Node``), defaults filled in.

    String attributes TensorRT reads (``plugin_version``, ``plugin_namespace``) are skipped; anything else
    unknown is an error, like a value out of range.
    """
    if hasattr(node, "attribute"):  # NodeProto
        from onnx import helper

        raw = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    else:  # onnx-graphsurgeon Node
        raw = dict(node.attrs)
    for key in PLUGIN_STRING_ATTRIBUTES:
        raw.pop(key, None)
    return check_attributes(raw)


def node_version(node) -> int:
    """The op version a node declares by its ``plugin_version`` (absent: 1, as TensorRT's parser reads it)."""
    if hasattr(node, "attribute"):
        from onnx import helper

        raw = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    else:
        raw = dict(node.attrs)
    value = raw.get("plugin_version", PLUGIN_VERSION)
    value = value.decode() if isinstance(value, bytes) else str(value)
    if value not in {str(v) for v in OP_VERSIONS}:
        raise ValueError(f"{OP_TYPE}: plugin_version {value!r} is not one of {[str(v) for v in OP_VERSIONS]}")
    return int(value)


def attribute(name: str) -> Attribute:
    return _BY_NAME[name]


def stamp_version(proto) -> int:
    """Give every op node of an ``onnx.ModelProto`` the lowest op version the graph needs, in place.

    The version is the highest any node needs (:func:`op_version`: a version-2 attribute set, or a weight initializer
    stored as float16 / bfloat16 while the node's other inputs are float); each node's ``plugin_version`` and the
    model's import of the op's domain are set to it (no import when the graph has no op node). Returns the version,
    0 without op nodes.
    """
    from onnx import TensorProto, helper

    nodes = [n for n in proto.graph.node if n.op_type == OP_TYPE and n.domain == OP_DOMAIN]
    elem = {t.name: t.data_type for t in proto.graph.initializer}
    elem.update({v.name: v.type.tensor_type.elem_type for v in (*proto.graph.value_info, *proto.graph.input)})
    narrow = {TensorProto.FLOAT16: "fp16", TensorProto.BFLOAT16: "bf16"}
    version = 0
    for node in nodes:
        x_type = elem.get(node.input[0], TensorProto.FLOAT)
        w_type = elem.get(node.input[2], x_type)
        bank = narrow[w_type] if w_type != x_type and w_type in narrow else "fp32"
        version = max(version, op_version(read_attributes(node), bank))
    for node in nodes:
        kept = [a for a in node.attribute if a.name not in PLUGIN_STRING_ATTRIBUTES]
        del node.attribute[:]
        node.attribute.extend(kept)
        node.attribute.extend(helper.make_attribute(k, v) for k, v in plugin_string_attributes(version).items())
    imports = [o for o in proto.opset_import if o.domain != OP_DOMAIN]
    del proto.opset_import[:]
    proto.opset_import.extend(imports)
    if nodes:
        proto.opset_import.append(helper.make_opsetid(OP_DOMAIN, version))
    return version
