"""``dynet-deploy checkpoint``: inspect a checkpoint, or convert a PyTorch state dict to the documented format."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

from ..errors import CheckpointError


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "checkpoint",
        help="inspect a checkpoint or convert a .pt/.pth state dict to safetensors + JSON",
        description="Checkpoints are NAME.safetensors plus NAME.json (model name and arguments); "
        "plain PyTorch state dicts are read with torch.load(weights_only=True).",
    )
    actions = parser.add_subparsers(dest="checkpoint_action", metavar="ACTION")

    inspect = actions.add_parser(
        "inspect",
        help="print a checkpoint's config and tensors, and check it loads into its model",
        description="Print the config, the tensor count, parameters and dtypes, then rebuild the model and "
        "check every key and shape.",
    )
    inspect.add_argument("ckpt", metavar="CKPT", help="NAME.safetensors, NAME.json, or a .pt/.pth state dict")
    inspect.add_argument("--model", help="zoo model name (needed for a state dict without a .json beside it)")
    inspect.add_argument("--model-args", help="create_model keyword arguments as JSON, e.g. '{\"num_classes\": 10}'")
    inspect.add_argument("--json", action="store_true", help="print the summary as JSON")
    inspect.set_defaults(func=run)

    convert = actions.add_parser(
        "convert",
        help="convert a .pt/.pth state dict (e.g. torchvision's) to NAME.safetensors + NAME.json",
        description="Load IN (checked against the model's keys and shapes) and save it in the documented format.",
    )
    convert.add_argument("src", metavar="IN", help="a .pt/.pth state dict, or a checkpoint to rewrite")
    convert.add_argument("--model", help="zoo model name the weights belong to")
    convert.add_argument("--model-args", help="create_model keyword arguments as JSON")
    convert.add_argument("-o", "--output", required=True, metavar="OUT", help="output path, NAME.safetensors")
    convert.add_argument(
        "--metadata",
        metavar="JSON",
        help="entries to add to the metadata carried over from IN's config, as a JSON object, e.g. "
        '\'{"dataset": "fashion-mnist", "input_size": [28, 28]}\'',
    )
    convert.set_defaults(func=run)

    parser.set_defaults(func=lambda args: (parser.print_help(), 2)[1])


def _parse_model_args(text: str | None) -> dict | None:
    if text is None:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CheckpointError(
            f"--model-args is not valid JSON ({exc.msg}); give an object, e.g. '{{\"num_classes\": 10}}'"
        ) from None
    if not isinstance(value, dict):
        raise CheckpointError(f"--model-args must be a JSON object of keyword arguments, got a {type(value).__name__}")
    return value


def _parse_metadata(text: str | None) -> dict:
    if text is None:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CheckpointError(
            f'--metadata is not valid JSON ({exc.msg}); give an object, e.g. \'{{"dataset": "fashion-mnist"}}\''
        ) from None
    if not isinstance(value, dict):
        raise CheckpointError(f"--metadata must be a JSON object, got a {type(value).__name__}")
    try:
        json.dumps(value, allow_nan=False)
    except ValueError:
        raise CheckpointError("--metadata holds NaN or Infinity, which JSON configs cannot carry") from None
    return value


def non_finite_tensors(state: dict) -> dict[str, int]:
    """``{tensor name: count of NaN/Inf values}`` for the floating-point tensors holding any."""
    import torch

    bad = {}
    for key, tensor in state.items():
        if tensor.is_floating_point() or tensor.is_complex():
            n = int(tensor.numel() - torch.isfinite(tensor).sum())
            if n:
                bad[key] = n
    return bad


def run(args: argparse.Namespace) -> int:
    from ..checkpoint import load_checkpoint, read_checkpoint_config, read_state_dict, save_checkpoint

    model_args = _parse_model_args(args.model_args)
    if args.checkpoint_action == "convert":
        from ..checkpoint import checkpoint_input_paths, checkpoint_output_paths
        from ..fileio import check_output_path
        from ..graph import check_readable_file

        extra = _parse_metadata(args.metadata)
        check_readable_file(args.src, CheckpointError, "checkpoint")
        inputs = checkpoint_input_paths(args.src)
        for out_path in checkpoint_output_paths(args.output):  # refuses a suffix other than .safetensors/.json
            check_output_path(out_path, CheckpointError, inputs=inputs)
        model = load_checkpoint(args.src, model_name=args.model, model_args=model_args)
        # Carry the source's metadata (data set, normalisation, input size, accuracy): export and validate read it.
        src_config_path = Path(args.src).with_suffix(".json") if Path(args.src).suffix != ".json" else Path(args.src)
        metadata = (
            dict(read_checkpoint_config(src_config_path).get("metadata") or {}) if src_config_path.is_file() else {}
        )
        metadata.setdefault("converted_from", Path(args.src).name)
        metadata.update(extra)
        state = model.state_dict()
        bad = non_finite_tensors(state)
        if bad:
            raise CheckpointError(_non_finite_message(args.src, bad, state) + "; nothing was written")
        out = save_checkpoint(model, args.output, metadata=metadata)
        print(
            f"wrote {out} and {out.with_suffix('.json')} ({model.zoo_name}; metadata: {', '.join(sorted(metadata)) or 'none'})"
        )
        return 0

    from ..graph import check_readable_file

    path = check_readable_file(args.ckpt, CheckpointError, "checkpoint")
    config_path = path if path.suffix == ".json" else path.with_suffix(".json")
    config = read_checkpoint_config(config_path) if config_path.exists() else None
    model = load_checkpoint(path, model_name=args.model, model_args=model_args)
    logger = logging.getLogger("dynet_deploy.checkpoint")
    level = logger.level
    logger.setLevel(logging.ERROR)  # the load above already printed its notes
    try:
        state = read_state_dict(path)
    finally:
        logger.setLevel(level)
    dtypes: dict[str, int] = {}
    for tensor in state.values():
        dtype = str(tensor.dtype).removeprefix("torch.")
        dtypes[dtype] = dtypes.get(dtype, 0) + 1
    zoo_name: str = getattr(model, "zoo_name")
    zoo_kwargs: dict[str, Any] = getattr(model, "zoo_kwargs")
    elements = int(sum(t.numel() for t in state.values()))
    size = int(sum(t.numel() * t.element_size() for t in state.values()))
    bad = non_finite_tensors(state)
    bad_values = int(sum(bad.values()))
    summary = {
        "path": str(path),
        "config": config,
        "model": zoo_name,
        "model_args": zoo_kwargs,
        "tensors": len(state),
        "elements": elements,
        "bytes": size,
        "dtypes": dtypes,
        "loads": True,
        "non_finite": {"tensors": len(bad), "values": bad_values, "names": sorted(bad)},
    }
    if args.json:
        print(json.dumps(summary, indent=2))
        if bad:
            raise CheckpointError(_non_finite_message(path, bad, state))
        return 0
    print(f"checkpoint  {path}")
    print(f"config      {'none (model given on the command line)' if config is None else config_path}")
    if config is not None and config.get("metadata"):
        print(f"metadata    {json.dumps(config['metadata'])}")
    print(f"model       {zoo_name}({', '.join(f'{k}={v!r}' for k, v in zoo_kwargs.items())})")
    print(f"tensors     {len(state)} ({elements:,} elements, {size / 2**20:.2f} MiB)")
    print(f"dtypes      {', '.join(f'{k} x{n}' for k, n in sorted(dtypes.items()))}")
    print("loads       yes: every key and shape matches the model")
    if bad:
        print(f"finite      NO: {bad_values:,} NaN/Inf values in {len(bad)} tensors")
        raise CheckpointError(_non_finite_message(path, bad, state))
    print("finite      yes: no NaN or Inf")
    return 0


def _non_finite_message(path, bad: dict[str, int], state: dict) -> str:
    total = sum(t.numel() for t in state.values() if t.is_floating_point())
    values = sum(bad.values())
    names = ", ".join(sorted(bad, key=lambda k: -bad[k])[:5]) + (
        f", ... and {len(bad) - 5} more" if len(bad) > 5 else ""
    )
    return (
        f"checkpoint {str(path)!r} holds NaN/Inf: {values:,} of {total:,} floating-point values "
        f"({100 * values / max(total, 1):.1f} %) in {len(bad)} tensor{'s' if len(bad) != 1 else ''} ({names}); "
        f"it came from a diverged training run: retrain (e.g. with a lower --lr)"
    )
