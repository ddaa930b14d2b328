"""``dynet-deploy fuse``: rewrite every dynamic conv of an ONNX graph into one DyNetDynamicConv2d node."""

from __future__ import annotations

from pathlib import Path


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "fuse",
        help="fuse each dynamic-conv subgraph into one DyNetDynamicConv2d node (onnx-graphsurgeon) and make the batch dynamic",
        description="Recognises our exports (both forms, both torch exporters) and the batch-as-groups conv of public "
        "implementations (CondConv, DY-CNN, ODConv-style). Subgraphs it cannot prove to be a dynamic conv are left "
        "untouched and listed. A graph with no dynamic conv is copied unchanged. --precision fp16 writes the fused graph "
        "in fp16 (fp32 inputs and outputs unless --io-dtype fp16); an already fused graph is converted as it is. "
        "A residual Add (with its ReLU / ReLU6) and a GlobalAveragePool after a fused node are folded into it (op "
        "version 2) unless --no-fold; --bank-dtype narrows the weight banks of an fp32 graph.",
    )
    p.add_argument("model", metavar="MODEL.onnx", help="ONNX graph written by `dynet-deploy export` (or any exporter)")
    p.add_argument("-o", "--output", required=True, help="output path, e.g. model.plugin.onnx (its folder must exist)")
    p.add_argument("--keep-batch", action="store_true", help="keep a fixed export batch instead of making it dynamic")
    p.add_argument(
        "--verify", action="store_true", help="run both graphs on onnxruntime with a random input and compare"
    )
    p.add_argument(
        "--precision",
        choices=["fp32", "fp16"],
        default="fp32",
        help="fp16: convert the fused graph to fp16 math (weights and every DyNetDynamicConv2d input fp16, "
        "onnxconverter-common); onnxruntime runs it with the op library's fp16 kernel (default fp32)",
    )
    p.add_argument(
        "--io-dtype",
        choices=["fp32", "fp16"],
        help="with --precision fp16: the graph's input and output dtype (default fp32: Casts at the edges, so it "
        "takes the same arrays as the fp32 graph)",
    )
    p.add_argument(
        "--bank-dtype",
        choices=["fp32", "fp16", "bf16"],
        default="fp32",
        help="store each DyNetDynamicConv2d node's weight bank in this type while the graph computes in fp32 (op "
        "version 2; the onnxruntime CPU op library only, not TensorRT): half the bytes a call streams, at the "
        "rounding of the bank (validated at its own tolerance, fp16-bank / bf16-bank); default fp32, exact",
    )
    p.add_argument(
        "--no-fold",
        action="store_true",
        help="keep a residual Add (and its ReLU / ReLU6) and a GlobalAveragePool after a fused node as they are "
        "instead of folding them into it (folded: op version 2; kept: a graph a version-1 runtime runs)",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="print only the summary line")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..errors import FuseError
    from ..fileio import check_output_path
    from ..graph import check_readable_file

    check_readable_file(args.model, FuseError, "ONNX model")
    check_output_path(args.output, FuseError, inputs=[args.model], suffixes=(".onnx",), why="an ONNX graph")
    fp16 = args.precision == "fp16"
    if args.io_dtype is not None and not fp16:
        from ..guards import refuse_unused_flags

        refuse_unused_flags(
            (("--io-dtype", True),), "an fp32 graph takes and returns fp32; add --precision fp16", FuseError
        )
    bank = args.bank_dtype != "fp32"
    if bank and fp16:
        raise FuseError(
            f"--bank-dtype {args.bank_dtype} narrows the bank of an fp32 graph (the onnxruntime CPU library widens it "
            "to fp32); an fp16 graph stores its bank in fp16 already: drop one of --bank-dtype and --precision fp16"
        )
    from ..fuse import fuse_dynamic_convs

    report = fuse_dynamic_convs(
        args.model,
        None if fp16 or bank else args.output,
        make_dynamic_batch=not args.keep_batch,
        fold=not args.no_fold,
        bank_dtype=args.bank_dtype,
    )
    from ..op.spec import OP_TYPE

    already = 0
    if report.candidates == 0 and report.model is not None:
        already = sum(n.op_type == OP_TYPE for n in report.model.graph.node)
    if bank:  # written here: an already fused graph gets its bank narrowed as it is, first
        from ..fileio import atomic_write_bytes
        from ..fuse.bank import apply_bank
        from ..provenance import stamp_producer

        if already:
            report.model, _ = apply_bank(report.model, args.bank_dtype, FuseError)
        stamp_producer(report.model)
        atomic_write_bytes(args.output, report.model.SerializeToString(), FuseError)
        report.path = Path(args.output)
    if fp16:
        from ..precision import convert_to_fp16

        keep_io = (args.io_dtype or "fp32") == "fp32"
        report.model = convert_to_fp16(report.model, args.output, keep_io_types=keep_io, error=FuseError)
        report.path = Path(args.output)
    if not args.quiet and not already:
        for line in report.details:
            print(line)
    if already:
        print(
            f"the graph is already fused ({already} {OP_TYPE} node{'s' if already != 1 else ''}); "
            + (
                "converted as it is"
                if fp16
                else f"its bank narrowed to {args.bank_dtype}"
                if bank
                else "nothing to fuse"
            )
        )
    else:
        print(report.summary())
    if fp16:
        io = "fp32 inputs and outputs" if keep_io else "fp16 inputs and outputs"
        print(f"wrote {report.path} (fp16: weights and {OP_TYPE} inputs fp16, {io})")
    elif report.candidates == 0 and not (already and bank):
        print(f"wrote an unchanged copy to {report.path}")
    else:
        print(f"wrote {report.path}")
    if args.verify and (report.matched or fp16 or (already and bank)):
        from ..errors import DynetDeployError

        try:
            from ..fuse.verify import verify_fused

            precision = f"{args.bank_dtype}-bank" if bank else args.precision
            print("\n".join(verify_fused(args.model, str(report.path), precision=precision)))
        except FuseError:
            Path(report.path).unlink(missing_ok=True)  # a fused graph that computes something else is no artifact
            raise
        except DynetDeployError as exc:  # the check could not run here (e.g. the op library is not built)
            raise FuseError(f"wrote {report.path}, but --verify could not run it: {exc}") from None
    return 0
