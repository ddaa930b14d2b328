"""``dynet-deploy export``: a checkpoint (or a randomly initialised zoo model) to a standard-op ONNX graph."""

from __future__ import annotations

import json
from pathlib import Path

from ..tolerance import SUMMATION_ORDER, errors


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "export",
        help="export a checkpoint (or --model NAME, randomly initialised) to ONNX with standard ops only",
        description="Export to ONNX (opset >= 17, BatchNorms folded). --form feature (default): feature-map fusion, "
        "any batch size; --form kernel: kernel fusion + batch-as-groups conv at a fixed batch, as public "
        "implementations export. Either form is what `dynet-deploy fuse` rewrites into DyNetDynamicConv2d nodes.",
    )
    p.add_argument(
        "ckpt", nargs="?", metavar="CKPT", help="NAME.safetensors / NAME.json checkpoint, or a .pt/.pth state dict"
    )
    p.add_argument("-o", "--output", required=True, help="output .onnx path (its folder must exist)")
    p.add_argument("--model", help="zoo model name: for a state dict without config, or alone for a random model")
    p.add_argument("--model-args", help="create_model keyword arguments as JSON, e.g. '{\"num_classes\": 10}'")
    p.add_argument(
        "--form",
        choices=("feature", "kernel"),
        default="feature",
        help="export form of the dynamic convs (default: feature)",
    )
    p.add_argument(
        "--batch", type=int, default=1, help="example batch; the fixed batch of a --static graph (default 1)"
    )
    dyn = p.add_mutually_exclusive_group()
    dyn.add_argument(
        "--dynamic-batch",
        dest="dynamic_batch",
        action="store_true",
        default=None,
        help="symbolic batch (default for --form feature)",
    )
    dyn.add_argument(
        "--static",
        dest="dynamic_batch",
        action="store_false",
        help="fixed batch (default, and the only choice, for --form kernel)",
    )
    hw = p.add_mutually_exclusive_group()
    hw.add_argument(
        "--dynamic-hw",
        dest="dynamic_hw",
        action="store_true",
        default=None,
        help="symbolic H and W (default for segmentation models)",
    )
    hw.add_argument("--static-hw", dest="dynamic_hw", action="store_false", help="fixed H and W")
    p.add_argument(
        "--exporter",
        choices=("torchscript", "dynamo"),
        default="torchscript",
        help="torch.onnx exporter (default: torchscript)",
    )
    p.add_argument("--opset", type=int, default=17, help="ONNX opset, >= 17 (the dynamo exporter emits >= 18)")
    p.add_argument(
        "--input-size",
        type=int,
        nargs=2,
        metavar=("H", "W"),
        help="input height and width (default: what the checkpoint records, else the zoo entry's size, else 224 224)",
    )
    p.add_argument("--no-check", action="store_true", help="skip the onnxruntime-vs-PyTorch check on a random input")
    p.add_argument(
        "--save-checkpoint",
        metavar="PATH",
        help="with --model and no CKPT: also save the random weights as PATH (.safetensors, its .json beside it), the "
        "checkpoint validate and deploy read, so the exported graph can be validated; written after the check passes",
    )
    p.add_argument(
        "--force", action="store_true", help="with --save-checkpoint: replace an existing checkpoint at PATH"
    )
    p.set_defaults(func=run)


def _model_args(text: str | None) -> dict | None:
    from ..errors import ExportError

    if text is None:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ExportError(
            f"--model-args is not valid JSON ({exc.msg}); give an object, e.g. '{{\"num_classes\": 10}}'"
        ) from None
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
        raise ExportError(
            "give a checkpoint (CKPT) or a zoo model name (--model NAME) to export a randomly initialised model"
        )
    net = create_model(model, **(args or {})).eval()
    return net, model, args or {}, "randomly initialised weights (no checkpoint given)"


# The highest opset each torch exporter writes (torch.onnx's own limits; asking for more fails deep inside it).
def _max_opset(exporter: str) -> int:
    try:
        from torch.onnx import _constants
    except ImportError:  # torch moved it: let the exporter decide
        return 10**6
    if exporter == "torchscript":
        return int(
            getattr(_constants, "ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET", getattr(_constants, "ONNX_MAX_OPSET", 10**6))
        )
    return int(getattr(_constants, "ONNX_MAX_OPSET", 10**6))


def run(args) -> int:
    import numpy as np

    from ..checkpoint import checkpoint_input_paths
    from ..errors import ExportError
    from ..fileio import check_output_path
    from ..models import model_info

    # Before loading anything: the output must be an .onnx file that is none of the inputs.
    check_output_path(
        args.output, ExportError, inputs=checkpoint_input_paths(args.ckpt), suffixes=(".onnx",), why="an ONNX graph"
    )
    if args.batch < 1:
        raise ExportError(f"--batch must be >= 1, got {args.batch}")
    from ..input_size import check_given_size, resolve_input_size

    check_given_size(args.input_size, "--input-size", ExportError)
    if args.opset < 17:
        raise ExportError(f"--opset {args.opset} is too old: DyNet graphs need opset >= 17")
    if args.opset > _max_opset(args.exporter):
        raise ExportError(
            f"--opset {args.opset} is newer than the {args.exporter} exporter of this PyTorch writes "
            f"(at most {_max_opset(args.exporter)}); use --opset 17 (the default)"
        )
    _check_save_checkpoint(args)
    net, name, zoo_args, source = load_model(args.ckpt, args.model, args.model_args)
    info = model_info(name) if name else None
    if source.startswith("randomly"):
        print(f"note: exporting {name} with RANDOM weights (no checkpoint given)")
    size = resolve_input_size(
        args.input_size, checkpoint=args.ckpt, model_name=name, model_args=zoo_args, error=ExportError
    )
    if size.note():
        print(size.note())
    seg = info is not None and info.task == "segmentation"
    dynamic_hw = seg if args.dynamic_hw is None else args.dynamic_hw
    from ..export import export_onnx

    report = export_onnx(
        net,
        args.output,
        size.shape(args.batch),
        form=args.form,
        dynamic_batch=args.dynamic_batch,
        dynamic_hw=dynamic_hw,
        exporter=args.exporter,
        opset=args.opset,
        model_name=name,
        model_args=zoo_args,
        metadata=_serving_metadata(args.ckpt, net, zoo_args),
    )
    print(f"exported {name or 'model'} ({source})")
    print(report.summary())
    if not args.no_check:
        from ..backends.onnxruntime import OnnxruntimeRunner
        from ..backends.torch_reference import TorchRunner

        x = np.random.default_rng().standard_normal(size.shape(args.batch)).astype(np.float32)
        ort_out = OnnxruntimeRunner(report.path).run({report.input_names[0]: x})
        ref = TorchRunner(net, report.input_names, report.output_names).run({report.input_names[0]: x})
        failures = []
        for out_name in report.output_names:
            got, want = ort_out[out_name], ref[out_name]
            bad_ref = int(np.size(want) - np.isfinite(want).sum())
            bad_got = int(np.size(got) - np.isfinite(got).sum())
            if bad_ref or bad_got:
                failures.append(
                    f"output {out_name!r} has non-finite values (NaN/Inf: {bad_got} from onnxruntime, {bad_ref} from "
                    f"PyTorch); the weights hold NaN/Inf or overflow: check them with 'dynet-deploy checkpoint inspect'"
                )
                continue
            max_abs, rel = errors(got, want, ExportError)
            ok = SUMMATION_ORDER.allows_either(max_abs, rel)
            print(
                f"check {out_name} at batch {args.batch}: onnxruntime vs PyTorch max-abs {max_abs:.2e}, relative {rel:.2e} "
                f"({'ok' if ok else 'MISMATCH'}: tolerance relative {SUMMATION_ORDER.rel:g} or max-abs {SUMMATION_ORDER.max_abs:g})"
            )
            if not ok:
                failures.append(
                    f"output {out_name!r} differs from PyTorch (relative {rel:.2e} > {SUMMATION_ORDER.rel:g})"
                )
        if failures:
            Path(report.path).unlink(missing_ok=True)  # a graph that fails its check is not an artifact
            raise ExportError(
                f"the exported graph failed its check and was removed: {'; '.join(failures)} "
                f"(--no-check keeps an unchecked graph)"
            )
    if args.save_checkpoint:
        from ..checkpoint import save_checkpoint
        from ..input_size import record

        meta = {"weights": "random (dynet-deploy export --model)", **record(size)}
        weights = save_checkpoint(net, args.save_checkpoint, model_name=name, model_args=zoo_args, metadata=meta)
        print(f"saved the random weights: {weights} and {weights.with_suffix('.json')}")
    return 0


def _check_save_checkpoint(args) -> None:
    """Before anything is loaded: --save-checkpoint applies to random weights only, and replaces only with --force."""
    from ..errors import ExportError
    from ..guards import refuse_unused_flags

    if not args.save_checkpoint:
        refuse_unused_flags((("--force", args.force),), "it replaces the checkpoint of --save-checkpoint", ExportError)
        return
    if args.ckpt:
        raise ExportError(
            f"--save-checkpoint saves randomly initialised weights, and {args.ckpt!r} already holds this model's "
            "weights; drop --save-checkpoint (or CKPT, to export random weights)"
        )
    from ..checkpoint import checkpoint_output_paths
    from ..errors import CheckpointError
    from ..fileio import refuse_overwriting_inputs
    from ..train import check_outputs_writable

    try:
        check_outputs_writable(args.save_checkpoint, None, force=args.force)
    except CheckpointError as exc:
        raise ExportError(f"--save-checkpoint: {exc}") from None
    for path in checkpoint_output_paths(args.save_checkpoint):
        refuse_overwriting_inputs(args.output, [path], ExportError, "-o")


def _serving_metadata(ckpt: str | None, net, zoo_args: dict | None) -> dict[str, str]:
    """The normalisation and classes the checkpoint records, for the graph's metadata (dynet_deploy.model_card)."""
    from ..checkpoint import read_checkpoint_config
    from ..errors import DynetDeployError
    from ..model_card import serving_metadata

    config: dict = {}
    if ckpt:
        try:
            config = dict(read_checkpoint_config(ckpt))
        except DynetDeployError:
            config = {}
    config["model_args"] = zoo_args or config.get("model_args") or {}
    return serving_metadata(config, net)
