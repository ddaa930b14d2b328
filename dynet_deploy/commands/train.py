"""``dynet-deploy train``: seeded CPU training of a zoo classifier on Fashion-MNIST (or digits)."""

from __future__ import annotations

import json
import os
import sys


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train a zoo classifier on Fashion-MNIST (or sklearn's digits), seeded, on the CPU",
        description="Train from scratch with SGD + one-cycle schedule and light augmentation; evaluate top-1 on the "
        "test split; write OUT.safetensors + OUT.json (the checkpoint) and OUT.report.json (numbers, FLOPs, history). "
        "num_classes, in_chans and small_input are filled in from the data set unless given in --model-args.",
    )
    parser.add_argument("--model", default="dy_resnet18", help="zoo model name (default: dy_resnet18)")
    parser.add_argument(
        "--model-args", default="{}", help="create_model keyword arguments as JSON, e.g. '{\"width_mult\": 0.25}'"
    )
    parser.add_argument(
        "--dataset",
        default="fashion-mnist",
        choices=["fashion-mnist", "digits", "auto"],
        help="training and test data (default: fashion-mnist; auto: Fashion-MNIST where installed, else digits)",
    )
    parser.add_argument(
        "--data-root", help="folder with the Fashion-MNIST IDX files (default: $DYNET_DEPLOY_FASHION_MNIST or Debian's)"
    )
    parser.add_argument("--epochs", type=int, default=8, help="passes over the training set (default: 8)")
    parser.add_argument("--batch-size", type=int, default=128, help="images per training step (default: 128)")
    parser.add_argument(
        "--optimizer",
        default="sgd",
        choices=["sgd", "adamw"],
        help="sgd (with Nesterov momentum) or adamw (default: sgd)",
    )
    parser.add_argument("--lr", type=float, default=0.1, help="peak learning rate of the one-cycle schedule")
    parser.add_argument(
        "--weight-decay",
        type=float,
        default=5e-4,
        help="on conv and linear weights only, not BN or biases (default: 5e-4)",
    )
    parser.add_argument("--no-augment", action="store_true", help="no random shifts and flips")
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the weights, data order and augmentation (default: 0)"
    )
    parser.add_argument("--threads", type=int, default=2, help="torch threads (fixed, for reproducibility)")
    parser.add_argument(
        "--conv-mode", default="kernel", choices=["kernel", "feature"], help="dynamic-conv path while training"
    )
    parser.add_argument("--train-limit", type=int, help="use the first N training images only")
    parser.add_argument("--test-limit", type=int, help="evaluate on the first N test images only")
    parser.add_argument(
        "--log-every",
        type=int,
        default=None,
        metavar="N",
        help="a progress line every N steps within an epoch (default: about four per epoch; 0, or N of an epoch or "
        "more: only the line after each epoch, with a note)",
    )
    parser.add_argument("--report", help="report path (default: OUT stem + .report.json)")
    parser.add_argument("-o", "--output", required=True, metavar="OUT", help="checkpoint path, NAME.safetensors")
    parser.add_argument("--force", action="store_true", help="replace an existing checkpoint (and its .json, report)")
    parser.set_defaults(func=run)


def run(args) -> int:
    if "torch" not in sys.modules:
        # OpenMP's default spin-waiting makes two threads up to 4x slower than one when other
        # processes share the cores (measured: 2965 vs 762 ms per step); passive waiting costs nothing
        # when the machine is idle. It must be set before torch loads libgomp; numerics are unchanged.
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from ..errors import ModelError, TrainError
    from ..train import TrainConfig, check_config, check_outputs_writable, save_training_outputs, train

    try:
        model_args = json.loads(args.model_args)
    except json.JSONDecodeError as exc:
        raise ModelError(
            f"--model-args is not valid JSON ({exc.msg}); give an object, e.g. '{{\"width_mult\": 0.25}}'"
        ) from None
    if not isinstance(model_args, dict):
        raise ModelError(f"--model-args must be a JSON object of keyword arguments, got a {type(model_args).__name__}")
    if args.epochs < 1:
        raise ModelError(f"--epochs must be >= 1, got {args.epochs}")
    from ..guards import check_threads

    check_threads(args.threads, TrainError)
    check_outputs_writable(args.output, args.report, force=args.force)
    cfg = TrainConfig(
        model=args.model,
        model_args=model_args,
        dataset=args.dataset,
        epochs=args.epochs,
        batch_size=args.batch_size,
        optimizer=args.optimizer,
        lr=args.lr,
        weight_decay=args.weight_decay,
        augment=not args.no_augment,
        seed=args.seed,
        threads=args.threads,
        conv_mode=args.conv_mode,
        train_limit=args.train_limit,
        test_limit=args.test_limit,
        data_root=args.data_root,
        log_every=args.log_every,
    )
    check_config(cfg)
    result = train(cfg)
    weights, report_path = save_training_outputs(result, args.output, args.report)
    report = json.loads(report_path.read_text())
    print(
        f"{report['model']}: test top-1 {report['test_top1']:.4f} on {report['test_samples']} images, "
        f"{report['params'] / 1e6:.2f} M params, {report['mflops_total']:.1f} MFLOPs, {report['train_seconds']:.0f} s; "
        f"wrote {weights} and {report_path}",
        file=sys.stdout,
    )
    return 0
