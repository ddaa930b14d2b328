"""``dynet-deploy build``: a TensorRT engine from a plugin ONNX (needs TensorRT and the built plugin library)."""

from __future__ import annotations

import argparse

from ..errors import BuildError


def _hw(text: str) -> tuple[int, int]:
    try:
        h, w = text.lower().split("x")
        return int(h), int(w)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected HxW (e.g. 224x224), got {text!r}") from exc


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "build",
        help="build a TensorRT engine from a plugin ONNX (DyNetDynamicConv2d nodes), fp32 or fp16",
        description="Loads the DyNetDynamicConv2d plugin library, parses MODEL.plugin.onnx, sets one optimisation "
        "profile (batch, and H/W when the input's spatial dims are dynamic) and writes the engine atomically. "
        "fp16 converts the ONNX to fp16 first (the plugin node is kept and runs in fp16) and builds a strongly "
        "typed network, the only kind TensorRT 11 has. Needs TensorRT; see 'dynet-deploy doctor'.",
    )
    p.add_argument("onnx", metavar="MODEL.plugin.onnx", help="fused ONNX from 'dynet-deploy fuse'")
    p.add_argument("-o", "--output", help="engine path (default: the ONNX name with .engine)")
    p.add_argument(
        "--recipe",
        metavar="RECIPE.json",
        help="take the batch profile from a deployment recipe (dynet_deploy/recipes/*.json); flags still override it",
    )
    p.add_argument("--min-batch", type=int, default=None, help="default: the recipe's, else 1")
    p.add_argument("--opt-batch", type=int, default=None, help="default: the recipe's, else max-batch")
    p.add_argument("--max-batch", type=int, default=None, help="default: the recipe's, else 8")
    p.add_argument("--min-hw", type=_hw, help="min HxW for inputs with dynamic H and W (segmentation)")
    p.add_argument("--opt-hw", type=_hw, help="opt HxW (default: max-hw)")
    p.add_argument("--max-hw", type=_hw, help="max HxW")
    p.add_argument("--fp16", action="store_true", help="fp16 engine via an fp16 ONNX conversion (plugin node kept)")
    p.add_argument(
        "--legacy-fp16-flag",
        action="store_true",
        help="TensorRT 10.x only: fp32 ONNX + BuilderFlag.FP16 instead of the fp16 ONNX",
    )
    p.add_argument("--save-fp16-onnx", metavar="PATH", help="also write the fp16 ONNX used for the build")
    p.add_argument("--plugin-lib", metavar="PATH", help="TensorRT plugin library (default: the one in build/)")
    p.add_argument("--timing-cache", metavar="PATH", help="timing cache to read and update")
    p.add_argument("--workspace-mib", type=int, help="workspace memory pool limit in MiB")
    p.add_argument("--verbose", action="store_true", help="print TensorRT's verbose log")
    p.set_defaults(func=run)


# The batch profile without flags or a recipe; the bundled recipe states the same (a test holds them equal).
DEFAULT_MIN_BATCH = 1
DEFAULT_MAX_BATCH = 8


def profile_from_args(args: argparse.Namespace):
    """The optimisation profile: flags, else the recipe's (``--recipe``), else min 1, opt = max, max 8; checked."""
    from ..backends.tensorrt import Profile

    recipe = None
    if getattr(args, "recipe", None):
        from ..recipe import load_recipe

        recipe = load_recipe(args.recipe).profile
    min_batch = args.min_batch if args.min_batch is not None else (recipe.min if recipe else DEFAULT_MIN_BATCH)
    max_batch = args.max_batch if args.max_batch is not None else (recipe.max if recipe else DEFAULT_MAX_BATCH)
    if args.opt_batch is not None:
        opt_batch = args.opt_batch
    elif recipe is not None and args.max_batch is None:
        opt_batch = recipe.opt
    else:
        opt_batch = max_batch
    if min(min_batch, opt_batch, max_batch) < 1 or not min_batch <= opt_batch <= max_batch:
        raise BuildError(
            f"batch sizes must be 1 <= --min-batch <= --opt-batch <= --max-batch, got {min_batch}, {opt_batch}, {max_batch}"
        )
    for flag, value in (("--min-hw", args.min_hw), ("--opt-hw", args.opt_hw), ("--max-hw", args.max_hw)):
        if value is not None and min(value) < 1:
            raise BuildError(f"{flag} must be positive, got {value[0]}x{value[1]}")
    hw = [args.min_hw, args.opt_hw or args.max_hw, args.max_hw]
    height = width = None
    if any(v is not None for v in hw):
        if args.min_hw is None or args.max_hw is None:
            raise BuildError("give both --min-hw and --max-hw (and optionally --opt-hw)")
        height = tuple(v[0] for v in hw)
        width = tuple(v[1] for v in hw)
    return Profile(batch=(min_batch, opt_batch, max_batch), height=height, width=width)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..backends.tensorrt import build_engine, default_engine_path
    from ..fileio import check_output_path
    from ..graph import check_readable_file

    if not Path(args.onnx).exists() and not Path(args.onnx).is_symlink():
        raise BuildError(f"ONNX file {args.onnx} does not exist; create it with 'dynet-deploy fuse'")
    onnx_path = check_readable_file(args.onnx, BuildError, "ONNX file")
    if args.legacy_fp16_flag and not args.fp16:
        raise BuildError("--legacy-fp16-flag needs --fp16")
    profile = profile_from_args(args)
    if args.workspace_mib is not None and args.workspace_mib < 1:
        raise BuildError(f"--workspace-mib must be >= 1, got {args.workspace_mib}")
    inputs = [onnx_path, args.plugin_lib]
    if args.save_fp16_onnx:
        check_output_path(
            args.save_fp16_onnx,
            BuildError,
            inputs=[*inputs, args.timing_cache],
            suffixes=(".onnx",),
            why="an ONNX graph",
        )
    if args.timing_cache:
        check_output_path(args.timing_cache, BuildError, inputs=inputs)
    out = Path(args.output) if args.output else default_engine_path(onnx_path)
    check_output_path(out, BuildError, inputs=[*inputs, args.timing_cache, args.save_fp16_onnx])
    res = build_engine(
        onnx_path,
        out,
        profile=profile,
        fp16=args.fp16,
        legacy_fp16_flag=args.legacy_fp16_flag,
        plugin_library=args.plugin_lib,
        timing_cache=args.timing_cache,
        workspace_mib=args.workspace_mib,
        save_fp16_onnx=args.save_fp16_onnx,
        verbose=args.verbose,
    )
    precision = "fp16" if res.fp16 else "fp32"
    typing = "strongly typed" if res.strongly_typed else "weakly typed"
    print(
        f"wrote {res.engine_path} (TensorRT {res.tensorrt_version}, {precision}, {typing}, "
        f"batch {profile.batch}, plugin {res.plugin_library})"
    )
    if res.timing_cache:
        print(f"timing cache: {res.timing_cache}")
    return 0
