"""What a client needs to feed a deployed model and read its output: the input normalisation and the classes.

A checkpoint records them in its metadata (``dynet-deploy train`` writes ``dataset`` and ``normalisation``;
``checkpoint convert --metadata`` adds them to any checkpoint, ``classes`` included). :func:`serving_metadata`
turns them into ONNX ``metadata_props`` entries, which ``export`` writes into the graph, ``fuse`` carries over, and
the Triton writer copies into each model's ``config.pbtxt`` ``parameters``:

=============================  ====================================================================
``dynet_deploy.mean``          JSON list, one value per input channel
``dynet_deploy.std``           JSON list, one value per input channel
``dynet_deploy.preprocess``    how an image becomes the input: ``x = (pixel / 255 - mean) / std``
``dynet_deploy.num_classes``   the number of classes (outputs per image, or per pixel for segmentation)
``dynet_deploy.classes``       JSON list of class names, where the checkpoint or its data set names them
``dynet_deploy.dataset``       the data set the model was trained on
=============================  ====================================================================

Entries the checkpoint does not give are left out, never guessed.
"""

from __future__ import annotations

import json
from typing import Any, Mapping

META_MEAN = "dynet_deploy.mean"
META_STD = "dynet_deploy.std"
META_PREPROCESS = "dynet_deploy.preprocess"
META_NUM_CLASSES = "dynet_deploy.num_classes"
META_CLASSES = "dynet_deploy.classes"
META_DATASET = "dynet_deploy.dataset"
SERVING_KEYS = (META_MEAN, META_STD, META_PREPROCESS, META_NUM_CLASSES, META_CLASSES, META_DATASET)
PREPROCESS = "x = (pixel / 255 - mean) / std, per channel, NCHW"


def _per_channel(value: Any, channels: int) -> list[float] | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return [float(value)] * channels
    if (
        isinstance(value, list)
        and value
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
    ):
        if len(value) == channels:
            return [float(v) for v in value]
        if len(value) == 1:
            return [float(value[0])] * channels
    return None


def serving_metadata(config: Mapping[str, Any] | None, model=None) -> dict[str, str]:
    """``metadata_props`` entries (module docstring) from a checkpoint's config (``read_checkpoint_config``) and the
    model (its ``num_classes``); ``{}`` where nothing is known."""
    config = config or {}
    meta = config.get("metadata") or {}
    args = config.get("model_args") or {}
    if not isinstance(meta, Mapping):
        meta = {}
    out: dict[str, str] = {}
    channels = args.get("in_chans") if isinstance(args.get("in_chans"), int) else meta.get("in_chans")
    channels = channels if isinstance(channels, int) and channels > 0 else 3
    norm = meta.get("normalisation") or meta.get("normalization")
    if isinstance(norm, Mapping):
        mean, std = _per_channel(norm.get("mean"), channels), _per_channel(norm.get("std"), channels)
        if mean is not None and std is not None:
            out[META_MEAN] = json.dumps(mean)
            out[META_STD] = json.dumps(std)
            out[META_PREPROCESS] = PREPROCESS
    num = args.get("num_classes", getattr(model, "num_classes", None))
    classes = meta.get("classes")
    dataset = meta.get("dataset") if isinstance(meta.get("dataset"), str) else None
    if classes is None and dataset is not None:
        from .data import dataset_info
        from .errors import DataError

        try:
            classes = list(dataset_info(dataset).classes)
        except DataError:
            classes = None
    if isinstance(classes, list) and all(isinstance(c, str) for c in classes):
        if num is None or num == len(classes):
            out[META_CLASSES] = json.dumps(classes)
            num = len(classes)
    if isinstance(num, int) and not isinstance(num, bool) and num > 0:
        out[META_NUM_CLASSES] = str(num)
    if dataset is not None:
        out[META_DATASET] = dataset
    return out


def read_serving_metadata(proto) -> dict[str, str]:
    """The serving entries of an ONNX ModelProto's ``metadata_props``."""
    return {p.key: p.value for p in proto.metadata_props if p.key in SERVING_KEYS}


__all__ = ["SERVING_KEYS", "read_serving_metadata", "serving_metadata"]
