"""``dynet-deploy checkpoint``: inspect a checkpoint, or convert a PyTorch state dict to the documented format."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

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
    inspect.add_argument("--model-args", help='create_model keyword arguments as JSON, e.g. \'{"num_classes": 10}\'')
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
    convert.set_defaults(func=run)

    parser.set_defaults(func=lambda args: (parser.print_help(), 2)[1])


def _parse_model_args(text: str | None) -> dict | None:
    if text is None:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"--model-args is not valid JSON ({exc.msg}); give an object, e.g. '{{\"num_classes\": 10}}'") from None
    if not isinstance(value, dict):
        raise CheckpointError(f"--model-args must be a JSON object of keyword arguments, got a {type(value).__name__}")
    return value


def _notes_to_stderr() -> None:
    # The library logs notes (a stripped "module." prefix, an unwrapped training checkpoint); show them plainly.
    logger = logging.getLogger("dynet_deploy.checkpoint")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.propagate = False


def run(args: argparse.Namespace) -> int:
    from ..checkpoint import load_checkpoint, read_checkpoint_config, read_state_dict, save_checkpoint

    _notes_to_stderr()
    model_args = _parse_model_args(args.model_args)
    if args.checkpoint_action == "convert":
        model = load_checkpoint(args.src, model_name=args.model, model_args=model_args)
        out = save_checkpoint(model, args.output, metadata={"converted_from": Path(args.src).name})
        print(f"wrote {out} and {out.with_suffix('.json')} ({model.zoo_name})")
        return 0

    path = Path(args.ckpt)
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
    summary = {
        "path": str(path),
        "config": config,
        "model": model.zoo_name,
        "model_args": model.zoo_kwargs,
        "tensors": len(state),
        "elements": int(sum(t.numel() for t in state.values())),
        "bytes": int(sum(t.numel() * t.element_size() for t in state.values())),
        "dtypes": dtypes,
        "loads": True,
    }
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print(f"checkpoint  {path}")
    print(f"config      {'none (model given on the command line)' if config is None else config_path}")
    if config is not None and config.get("metadata"):
        print(f"metadata    {json.dumps(config['metadata'])}")
    print(f"model       {model.zoo_name}({', '.join(f'{k}={v!r}' for k, v in model.zoo_kwargs.items())})")
    print(f"tensors     {summary['tensors']} ({summary['elements']:,} elements, {summary['bytes'] / 2**20:.2f} MiB)")
    print(f"dtypes      {', '.join(f'{k} x{n}' for k, n in sorted(dtypes.items()))}")
    print("loads       yes: every key and shape matches the model")
    return 0
