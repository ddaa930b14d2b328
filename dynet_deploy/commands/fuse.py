"""``dynet-deploy fuse``: rewrite every dynamic conv of an ONNX graph into one DyNetDynamicConv2d node."""

from __future__ import annotations


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "fuse",
        help="fuse each dynamic-conv subgraph into one DyNetDynamicConv2d node (onnx-graphsurgeon) and make the batch dynamic",
        description="Recognises our exports (both forms, both torch exporters) and the batch-as-groups conv of public "
        "implementations (CondConv, DY-CNN, ODConv-style). Subgraphs it cannot prove to be a dynamic conv are left "
        "untouched and listed. A graph with no dynamic conv is copied unchanged.",
    )
    p.add_argument("model", metavar="MODEL.onnx", help="ONNX graph written by `dynet-deploy export` (or any exporter)")
    p.add_argument("-o", "--output", required=True, help="output path, e.g. model.plugin.onnx (its folder must exist)")
    p.add_argument("--keep-batch", action="store_true", help="keep a fixed export batch instead of making it dynamic")
    p.add_argument("--verify", action="store_true", help="run both graphs on onnxruntime with a random input and compare")
    p.add_argument("-q", "--quiet", action="store_true", help="print only the summary line")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..fuse import fuse_dynamic_convs

    report = fuse_dynamic_convs(args.model, args.output, make_dynamic_batch=not args.keep_batch)
    if not args.quiet:
        for line in report.details:
            print(line)
    print(report.summary())
    if report.candidates == 0:
        print(f"wrote an unchanged copy to {report.path}")
    else:
        print(f"wrote {report.path}")
    if args.verify and report.matched:
        verify(args.model, str(report.path))
    return 0


def verify(original: str, fused: str) -> None:
    import numpy as np

    from ..runtimes.onnxruntime_runtime import OnnxruntimeRunner

    ref = OnnxruntimeRunner(original)
    new = OnnxruntimeRunner(fused)
    feeds = {}
    for name, (shape, dtype) in ref.input_spec().items():
        dims = [d if isinstance(d, int) and d > 0 else 2 for d in shape]
        feeds[name] = np.random.default_rng().standard_normal(dims).astype(dtype)
    a, b = ref.run(feeds), new.run(feeds)
    for name in ref.output_names:
        diff = np.abs(a[name].astype(np.float64) - b[name])
        rel = np.linalg.norm(diff) / max(np.linalg.norm(a[name]), 1e-30)
        print(f"verify {name}: fused vs original on onnxruntime, max-abs {diff.max():.2e}, relative {rel:.2e}")
