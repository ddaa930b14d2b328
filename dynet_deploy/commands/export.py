"""``dynet-deploy export``: a checkpoint (or a randomly initialised zoo model) to a standard-op ONNX graph."""

from __future__ import annotations

import json


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "export",
        help="export a checkpoint (or --model NAME, randomly initialised) to ONNX with standard ops only",
        description="Export to ONNX (opset >= 17, BatchNorms folded). --form feature (default): feature-map fusion, "
        "any batch size; --form kernel: kernel fusion + batch-as-groups conv at a fixed batch, as public "
        "implementations export. Either form is what `dynet-deploy fuse` rewrites into DyNetDynamicConv2d nodes.",
    )
    p.add_argument("ckpt", nargs="?", metavar="CKPT", help="NAME.safetensors / NAME.json checkpoint, or a .pt/.pth state dict")
    p.add_argument("-o", "--output", required=True, help="output .onnx path (its folder must exist)")
    p.add_argument("--model", help="zoo model name: for a state dict without config, or alone for a random model")
    p.add_argument("--model-args", help='create_model keyword arguments as JSON, e.g. \'{"num_classes": 10}\'')
    p.add_argument("--form", choices=("feature", "kernel"), default="feature", help="export form of the dynamic convs (default: feature)")
    p.add_argument("--batch", type=int, default=1, help="example batch; the fixed batch of a --static graph (default 1)")
    dyn = p.add_mutually_exclusive_group()
    dyn.add_argument("--dynamic-batch", dest="dynamic_batch", action="store_true", default=None, help="symbolic batch (default for --form feature)")
    dyn.add_argument("--static", dest="dynamic_batch", action="store_false", help="fixed batch (default, and the only choice, for --form kernel)")
    hw = p.add_mutually_exclusive_group()
    hw.add_argument("--dynamic-hw", dest="dynamic_hw", action="store_true", default=None, help="symbolic H and W (default for segmentation models)")
    hw.add_argument("--static-hw", dest="dynamic_hw", action="store_false", help="fixed H and W")
    p.add_argument("--exporter", choices=("torchscript", "dynamo"), default="torchscript", help="torch.onnx exporter (default: torchscript)")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset, >= 17 (the dynamo exporter emits >= 18)")
    p.add_argument("--input-size", type=int, nargs=2, metavar=("H", "W"), help="input height and width (default: the zoo entry's)")
    p.add_argument("--no-check", action="store_true", help="skip the onnxruntime-vs-PyTorch check on a random input")
    p.set_defaults(func=run)


def _model_args(text: str | None) -> dict | None:
    from ..errors import ExportError

    if text is None:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ExportError(f"--model-args is not valid JSON ({exc.msg}); give an object, e.g. '{{\"num_classes\": 10}}'") from None
    if not isinstance(value, dict):
        raise ExportError(f"--model-args must be a JSON object, got a {type(value).__name__}")
    return value


def load_model(ckpt: str | None, model: str | None, model_args_json: str | None):
    """(model, zoo name, model args, how it was obtained) from a checkpoint or a zoo name."""
    from ..errors import ExportError
    from ..models import create_model

    args = _model_args(model_args_json)
    if ckpt:
        from ..checkpoint import load_checkpoint, read_checkpoint_config

        net = load_checkpoint(ckpt, model_name=model, model_args=args)
        name = getattr(net, "zoo_name", model)
        zoo_args = getattr(net, "zoo_kwargs", args or {})
        if name is None:
            try:
                name = read_checkpoint_config(ckpt).get("model")
            except Exception:
                name = None
        return net, name, zoo_args, f"checkpoint {ckpt}"
    if not model:
        raise ExportError("give a checkpoint (CKPT) or a zoo model name (--model NAME) to export a randomly initialised model")
    net = create_model(model, **(args or {})).eval()
    return net, model, args or {}, "randomly initialised weights (no checkpoint given)"


def run(args) -> int:
    import numpy as np

    from ..errors import ExportError
    from ..export import export_onnx
    from ..fileio import check_output_path
    from ..models import model_info

    check_output_path(args.output, ExportError)  # before loading anything
    net, name, zoo_args, source = load_model(args.ckpt, args.model, args.model_args)
    info = model_info(name) if name else None
    if source.startswith("randomly"):
        print(f"note: exporting {name} with RANDOM weights (no checkpoint given)")
    if args.batch < 1:
        raise ExportError(f"--batch must be >= 1, got {args.batch}")
    size = tuple(args.input_size) if args.input_size else (info.input_size if info else (224, 224))
    in_chans = int((zoo_args or {}).get("in_chans", 3))
    seg = info is not None and info.task == "segmentation"
    dynamic_hw = seg if args.dynamic_hw is None else args.dynamic_hw
    report = export_onnx(
        net, args.output, (args.batch, in_chans, *size), form=args.form, dynamic_batch=args.dynamic_batch,
        dynamic_hw=dynamic_hw, exporter=args.exporter, opset=args.opset, model_name=name, model_args=zoo_args,
    )
    print(f"exported {name or 'model'} ({source})")
    print(report.summary())
    if not args.no_check:
        import torch

        from ..runtimes.onnxruntime_runtime import OnnxruntimeRunner
        from ..runtimes.torch_runtime import TorchRunner

        x = np.random.default_rng().standard_normal((args.batch, in_chans, *size)).astype(np.float32)
        ort_out = OnnxruntimeRunner(report.path).run({report.input_names[0]: x})
        ref = TorchRunner(net, report.input_names, report.output_names).run({report.input_names[0]: x})
        for out_name in report.output_names:
            diff = np.abs(ort_out[out_name].astype(np.float64) - ref[out_name])
            rel = np.linalg.norm(diff) / max(np.linalg.norm(ref[out_name]), 1e-30)
            print(f"check {out_name} at batch {args.batch}: onnxruntime vs PyTorch max-abs {diff.max():.2e}, relative {rel:.2e}")
        del torch
    return 0
