"""The one rule for a model's input size, used by ``export``, ``validate``, ``bench`` and ``deploy``.

Height and width, the first that applies:

1. given: ``--input-size H W``, or a recipe's ``input_shape``;
2. the graph's own size, where an ONNX graph fixes it (a given size that differs is an error);
3. what the checkpoint records: its metadata's ``input_size``, else the image size of its metadata's data set;
4. ``fallback``: a command's own size for when nothing records one (validate's synthetic segmentation check);
5. the zoo entry's size (the paper's input, ``dynet-deploy zoo``);
6. 224x224.

Channels: given (a recipe's C), else the graph's, else the model's: ``in_chans`` of its arguments, of the
checkpoint's metadata, or of its data set, else 3 (every zoo builder's default). A given or graph channel count that
differs from what the checkpoint's model takes is an error.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from .errors import DynetDeployError

DEFAULT_HW = (224, 224)
DEFAULT_CHANNELS = 3

# where the height and width came from (InputSize.source)
GIVEN = "given"
GRAPH = "the graph"
FALLBACK = "the command's default"
DEFAULT = "the default (224x224)"


@dataclass(frozen=True)
class InputSize:
    """One sample's ``C, H, W`` and where ``H, W`` came from."""

    channels: int
    height: int
    width: int
    source: str

    @property
    def hw(self) -> tuple[int, int]:
        return self.height, self.width

    def shape(self, batch: int) -> tuple[int, int, int, int]:
        """``(batch, C, H, W)``."""
        return batch, self.channels, self.height, self.width

    @property
    def recorded(self) -> bool:
        """Whether the size came from what the checkpoint records."""
        return self.source.startswith("the checkpoint")

    def note(self, flag: str = "--input-size") -> str:
        """The line a command prints where the size came from the checkpoint ("" otherwise)."""
        return f"input size {self.height}x{self.width} from {self.source} ({flag} overrides)" if self.recorded else ""


def _static(dims: Sequence[Any]) -> list[int] | None:
    return [int(d) for d in dims] if all(isinstance(d, int) and d > 0 for d in dims) else None


def record(size: InputSize) -> dict[str, Any]:
    """What a checkpoint's metadata records of ``size`` (read back by :func:`checkpoint_record`)."""
    return {"input_size": [size.height, size.width], "in_chans": size.channels}


def checkpoint_record(
    checkpoint: str | Path | None, model_args: dict | None = None
) -> tuple[tuple[int, int] | None, int | None, str]:
    """(H W, channels, where H W came from) that a checkpoint records; (None, None, "") where it records none.

    ``model_args`` (the model's arguments, e.g. from the checkpoint's config or ``--model-args``) win for channels.
    """
    from .checkpoint import read_checkpoint_config
    from .data import dataset_info

    meta: dict = {}
    config: dict = {}
    if checkpoint:
        try:
            config = read_checkpoint_config(checkpoint)
        except DynetDeployError:  # a plain state dict records nothing
            config = {}
        meta = config.get("metadata") or {}
    size: tuple[int, int] | None = None
    chans: int | None = None
    source = ""
    recorded = meta.get("input_size")
    if isinstance(recorded, list) and len(recorded) == 2 and all(isinstance(v, int) and v > 0 for v in recorded):
        size, source = (recorded[0], recorded[1]), "the checkpoint's metadata (input_size)"
    elif isinstance(meta.get("dataset"), str):
        try:
            info = dataset_info(meta["dataset"])
        except DynetDeployError:
            info = None
        if info is not None:
            size, source = info.image_size, f"the checkpoint's data set ({meta['dataset']})"
            chans = info.in_chans
    if isinstance(meta.get("in_chans"), int):
        chans = meta["in_chans"]
    for args in (config.get("model_args"), model_args):
        if isinstance(args, dict) and isinstance(args.get("in_chans"), int):
            chans = args["in_chans"]
    return size, chans, source


def check_given_size(
    given: Sequence[int] | None, given_by: str = "--input-size", error: type[DynetDeployError] = DynetDeployError
) -> None:
    """A given size is H W (or C H W), each positive; commands call this before loading anything."""
    if given is None:
        return
    values = [int(v) for v in given]
    if len(values) not in (2, 3) or min(values) < 1:
        what = "two positive sizes H W" if len(values) == 2 else "positive sizes (H W, or C H W)"
        raise error(f"{given_by} must be {what}, got {' '.join(map(str, values))}")


def resolve_input_size(
    given: Sequence[int] | None = None,
    *,
    checkpoint: str | Path | None = None,
    model_name: str | None = None,
    model_args: dict | None = None,
    graph_shape: Sequence[Any] | None = None,
    fallback: tuple[int, int] | None = None,
    given_by: str = "--input-size",
    error: type[DynetDeployError] = DynetDeployError,
) -> InputSize:
    """The input size by the module's rule.

    ``given``: ``(H, W)`` (``--input-size``) or ``(C, H, W)`` (a recipe's ``input_shape``), named ``given_by`` in
    errors; ``graph_shape``: an ONNX graph's input shape ``[N, C, H, W]`` (symbolic dims as str/None); ``model_name``:
    the zoo model (for its entry's size; read from the checkpoint's config when not given). Raises ``error`` on a
    size that is not positive or a conflict between what is given, the graph and the checkpoint's model.
    """
    from .checkpoint import read_checkpoint_config
    from .models import model_info

    check_given_size(given, given_by, error)
    given_c: int | None = None
    given_hw: tuple[int, int] | None = None
    if given is not None:
        values = [int(v) for v in given]
        given_hw = (values[-2], values[-1])
        given_c = values[0] if len(values) == 3 else None
    graph_c: int | None = None
    graph_hw: tuple[int, int] | None = None
    if graph_shape is not None:
        if len(graph_shape) != 4:
            raise error(f"the graph's input has rank {len(graph_shape)}; an NCHW image input has rank 4")
        c = _static(graph_shape[1:2])
        graph_c = c[0] if c else None
        hw = _static(graph_shape[2:])
        graph_hw = (hw[0], hw[1]) if hw else None
    if given_hw is not None and graph_hw is not None and given_hw != graph_hw:
        raise error(
            f"the graph's input is fixed at {graph_hw[0]}x{graph_hw[1]}; {given_by} {given_hw[0]} {given_hw[1]} "
            f"does not fit"
        )

    recorded_hw, model_c, recorded_source = checkpoint_record(checkpoint, model_args)
    if model_name is None and checkpoint:
        try:
            model_name = read_checkpoint_config(checkpoint).get("model")
        except DynetDeployError:
            model_name = None
    zoo_hw = None
    if model_name:
        try:
            info = model_info(model_name)
        except DynetDeployError:
            info = None
        if info is not None:
            zoo_hw = info.input_size
            if model_c is None and isinstance(info.defaults.get("in_chans"), int):
                model_c = info.defaults["in_chans"]

    for what, n in ((given_by, given_c), ("the graph's input", graph_c)):
        if n is not None and model_c is not None and n != model_c:
            fix = "fix it" if what == given_by else "export the graph from this checkpoint"
            raise error(f"{what} has {n} channels, the checkpoint's model takes {model_c}; {fix}")
    channels = given_c or graph_c or model_c or DEFAULT_CHANNELS

    candidates: list[tuple[tuple[int, int] | None, str]] = [
        (given_hw, GIVEN),
        (graph_hw, GRAPH),
        (recorded_hw, recorded_source),
        (fallback, FALLBACK),
        (zoo_hw, f"the zoo entry of {model_name}"),
        (DEFAULT_HW, DEFAULT),
    ]
    hw_value, source = next((hw, src) for hw, src in candidates if hw is not None)
    assert hw_value is not None
    return InputSize(channels, hw_value[0], hw_value[1], source)


__all__ = ["InputSize", "check_given_size", "checkpoint_record", "resolve_input_size"]
