"""Seeded, reproducible CPU training of zoo classifiers on Fashion-MNIST (or the digits fallback).

Reproducible means: the same config, seed, thread count and torch build give the same weights. Every
random draw (initialisation, data order, augmentation) comes from generators seeded by ``seed``; the
thread count is fixed (float reductions can change with it).

Recipe: SGD with Nesterov momentum, a one-cycle learning-rate schedule (linear warm-up over the first
``warmup_fraction`` of the steps, then cosine to zero), weight decay on conv/linear weights only (not
on BatchNorm parameters and biases), light augmentation (random shifts of up to ``pad`` pixels and
horizontal flips, both fine for clothing and for the paper's CIFAR-style training).

Dynamic convs train in the ``"kernel"`` path by default: on an idle 2-core CPU it measured about 1.8x faster
per step than ``"feature"`` for Dy-ResNet18 at width 0.25 (314 vs 581 ms per batch of 128); both compute
the same function, and the checkpoint does not record the path.

How the bundled model was trained, and its numbers: docs/training.md.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .data import dataset_info, load_dataset, resolve_dataset
from .errors import CheckpointError, ModelError, TrainError
from .fileio import atomic_write_text, check_output_path
from .resources import ASSETS_DIR

REPORT_FORMAT = "dynet-deploy-training-report"


@dataclass
class TrainConfig:
    model: str = "dy_resnet18"
    model_args: dict[str, Any] = field(default_factory=dict)
    dataset: str = "fashion-mnist"  # or "digits", "auto"
    epochs: int = 8
    batch_size: int = 128
    optimizer: str = "sgd"  # or "adamw"
    lr: float = 0.1  # peak learning rate (SGD); AdamW would want about 2e-3
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_fraction: float = 0.15
    label_smoothing: float = 0.0
    augment: bool = True
    pad: int = 2  # random-shift augmentation range, pixels
    seed: int = 0
    threads: int = 2
    conv_mode: str = "kernel"  # dynamic-conv forward path while training
    train_limit: int | None = None  # first N training images only (tests, quick runs)
    test_limit: int | None = None
    data_root: str | None = None
    log_every: int | None = None  # progress line every N steps (0: once per epoch; None: see log_interval)


@dataclass
class EpochRecord:
    epoch: int
    train_loss: float
    train_top1: float
    test_top1: float
    lr_end: float
    seconds: float


@dataclass
class TrainResult:
    model: nn.Module
    config: TrainConfig
    dataset: str
    history: list[EpochRecord]
    test_top1: float
    test_samples: int
    train_seconds: float


def check_config(cfg: TrainConfig) -> None:
    """Refuse values training cannot use, before any data is read (TrainError naming the value)."""

    def need(ok: bool, what: str) -> None:
        if not ok:
            raise TrainError(what)

    def finite(x) -> bool:
        return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)

    need(isinstance(cfg.epochs, int) and cfg.epochs >= 1, f"--epochs must be >= 1, got {cfg.epochs}")
    need(isinstance(cfg.batch_size, int) and cfg.batch_size >= 1, f"--batch-size must be >= 1, got {cfg.batch_size}")
    need(finite(cfg.lr) and cfg.lr > 0, f"--lr must be a positive finite number, got {cfg.lr}")
    need(finite(cfg.momentum) and 0 <= cfg.momentum < 1, f"momentum must be in [0, 1), got {cfg.momentum}")
    need(
        finite(cfg.weight_decay) and cfg.weight_decay >= 0,
        f"--weight-decay must be a finite number >= 0, got {cfg.weight_decay}",
    )
    need(
        finite(cfg.warmup_fraction) and 0 <= cfg.warmup_fraction <= 1,
        f"warmup_fraction must be in [0, 1], got {cfg.warmup_fraction}",
    )
    need(
        finite(cfg.label_smoothing) and 0 <= cfg.label_smoothing < 1,
        f"label_smoothing must be in [0, 1), got {cfg.label_smoothing}",
    )
    need(isinstance(cfg.threads, int) and cfg.threads >= 1, f"--threads must be >= 1, got {cfg.threads}")
    need(cfg.optimizer in ("sgd", "adamw"), f"--optimizer must be 'sgd' or 'adamw', got {cfg.optimizer!r}")
    need(cfg.conv_mode in ("kernel", "feature"), f"--conv-mode must be 'kernel' or 'feature', got {cfg.conv_mode!r}")
    for flag, value in (("--train-limit", cfg.train_limit), ("--test-limit", cfg.test_limit)):
        need(value is None or (isinstance(value, int) and value >= 1), f"{flag} must be >= 1, got {value}")
    need(
        cfg.log_every is None or (isinstance(cfg.log_every, int) and cfg.log_every >= 0),
        f"--log-every must be >= 0, got {cfg.log_every}",
    )
    need(isinstance(cfg.pad, int) and cfg.pad >= 0, f"pad must be >= 0, got {cfg.pad}")
    check_model_fits_data(cfg)


def check_model_fits_data(cfg: TrainConfig) -> None:
    """A classifier whose input channels match the data set's images, before any data is read."""
    from .models import list_models, model_info

    info = model_info(cfg.model)  # an unknown name says so, with close matches
    if info.task != "classification":
        raise TrainError(
            f"--model {cfg.model} is a {info.task} model; train fits classifiers on image labels only "
            f"({', '.join(list_models(task='classification'))})"
        )
    images = dataset_info("fashion-mnist" if cfg.dataset == "auto" else cfg.dataset)
    chans = (cfg.model_args or {}).get("in_chans", images.in_chans)
    if chans != images.in_chans:
        raise TrainError(
            f"--model-args in_chans {chans!r} does not match {images.name}'s images, which have {images.in_chans} "
            f"channel(s); drop in_chans (it is filled in from the data set) or give {images.in_chans}"
        )


def non_finite_parameters(model: nn.Module) -> list[str]:
    """Names of the parameters and buffers holding NaN or Inf."""
    return [k for k, t in model.state_dict().items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]


def default_model_args(model_args: dict[str, Any], dataset: str) -> dict[str, Any]:
    """Fill in what the data set dictates (classes, channels, the 28x28 stem) unless given."""
    info = dataset_info(dataset)
    args = dict(model_args)
    args.setdefault("num_classes", len(info.classes))
    args.setdefault("in_chans", info.in_chans)
    args.setdefault("small_input", True)
    return args


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    # Decay conv/linear weights (and basis kernels) only; BatchNorm scales and biases are 1-D.
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim > 1 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    groups = _param_groups(model, cfg.weight_decay)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr)
    raise ValueError(f"optimizer must be 'sgd' or 'adamw', got {cfg.optimizer!r}")


def one_cycle_lr(step: int, total_steps: int, peak: float, warmup_fraction: float) -> float:
    """Linear warm-up from peak/25 to ``peak``, then cosine to 0, over ``total_steps``."""
    warmup = max(1, int(round(total_steps * warmup_fraction)))
    if step < warmup:
        start = peak / 25
        return start + (peak - start) * step / warmup
    progress = (step - warmup) / max(1, total_steps - warmup)
    return 0.5 * peak * (1 + math.cos(math.pi * min(1.0, progress)))


def augment_batch(x: torch.Tensor, pad: int, background: float, gen: torch.Generator) -> torch.Tensor:
    """Random shift by up to ``pad`` pixels (filling with ``background``) and random horizontal flip."""
    n, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad), value=background)
    offsets = torch.randint(0, 2 * pad + 1, (n, 2), generator=gen).tolist()
    flips = torch.rand(n, generator=gen).lt(0.5).tolist()
    out = torch.empty_like(x)
    for i, ((dy, dx), flip) in enumerate(zip(offsets, flips)):
        crop = padded[i, :, dy : dy + h, dx : dx + w]
        out[i] = crop.flip(-1) if flip else crop
    return out


@torch.no_grad()
def evaluate_top1(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 500) -> float:
    """Top-1 accuracy in eval mode; the model's train/eval mode is restored afterwards."""
    was_training = model.training
    model.eval()
    correct = 0
    for i in range(0, len(labels), batch_size):
        correct += int((model(images[i : i + batch_size]).argmax(1) == labels[i : i + batch_size]).sum())
    model.train(was_training)
    return correct / max(1, len(labels))


def train(cfg: TrainConfig) -> TrainResult:
    """Train ``cfg.model`` from scratch; returns the model (eval mode), per-epoch history and test top-1.

    Runs with ``cfg.threads`` torch threads and restores the caller's thread count afterwards. Progress goes to the
    ``dynet_deploy.train`` logger (a line per epoch, and every :func:`log_interval` steps within one) and, where
    stderr is a terminal, a bar over each epoch's steps (:mod:`dynet_deploy.progress`).
    """
    check_config(cfg)
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        return _train(cfg)
    finally:
        torch.set_num_threads(previous_threads)


def log_interval(log_every: int | None, steps_per_epoch: int) -> tuple[int, str]:
    """(steps between in-epoch progress lines, 0 for none; a note where the asked interval was changed).

    ``None`` (the default): about four lines per epoch. An interval of an epoch or more would never print within
    one: the epoch's own line is the progress then, and the note says so.
    """
    if log_every is None:
        return (max(1, steps_per_epoch // 4) if steps_per_epoch >= 8 else 0), ""
    if log_every and log_every >= steps_per_epoch:
        return 0, (
            f"--log-every {log_every} is not shorter than an epoch ({steps_per_epoch} steps): progress is the line "
            f"after each epoch"
        )
    return log_every, ""


def _train(cfg: TrainConfig) -> TrainResult:
    from .models import create_model, model_info
    from .nn import set_dynamic_conv_mode
    from .progress import get_logger, progress

    log = get_logger(__name__).info
    check_config(cfg)
    model_info(cfg.model)  # an unknown name fails before the data is read
    dataset = resolve_dataset(cfg.dataset, cfg.data_root)
    torch.manual_seed(cfg.seed)

    x_train, y_train = load_dataset(dataset, "train", cfg.data_root, cfg.train_limit)
    x_test, y_test = load_dataset(dataset, "test", cfg.data_root, cfg.test_limit)
    info = dataset_info(dataset)
    background = (0.0 - info.mean) / info.std  # a black pixel after normalisation

    args = default_model_args(cfg.model_args, dataset)
    try:
        model = create_model(cfg.model, **args)
    except ModelError:
        raise
    except (TypeError, ValueError, RuntimeError, ZeroDivisionError, IndexError, KeyError) as exc:
        raise ModelError(f"{cfg.model!r} rejected model arguments {args}: {type(exc).__name__}: {exc}") from None
    set_dynamic_conv_mode(model, cfg.conv_mode)
    optimizer = _make_optimizer(model, cfg)

    # Separate generators: the data order and the augmentation do not depend on how many random
    # numbers the model's construction drew.
    order_gen = torch.Generator().manual_seed(cfg.seed + 1)
    aug_gen = torch.Generator().manual_seed(cfg.seed + 2)
    steps_per_epoch = math.ceil(len(y_train) / cfg.batch_size)
    total_steps = steps_per_epoch * cfg.epochs
    history: list[EpochRecord] = []
    step = 0
    start = time.perf_counter()
    log_every, note = log_interval(cfg.log_every, steps_per_epoch)
    log(
        f"training {cfg.model}({', '.join(f'{k}={v}' for k, v in args.items())}) on {dataset}: "
        f"{len(y_train)} train / {len(y_test)} test images, {cfg.epochs} epochs of {steps_per_epoch} steps, seed {cfg.seed}"
    )
    if note:
        log(f"note: {note}")
    for epoch in range(1, cfg.epochs + 1):
        t0 = time.perf_counter()
        model.train()
        perm = torch.randperm(len(y_train), generator=order_gen)
        loss_sum, correct, seen = 0.0, 0, 0
        lr = cfg.lr
        for b in progress(range(steps_per_epoch), desc=f"epoch {epoch}/{cfg.epochs}", unit="step"):
            idx = perm[b * cfg.batch_size : (b + 1) * cfg.batch_size]
            xb, yb = x_train[idx], y_train[idx]
            if cfg.augment and cfg.pad >= 0:
                xb = augment_batch(xb, cfg.pad, background, aug_gen)
            lr = one_cycle_lr(step, total_steps, cfg.lr, cfg.warmup_fraction)
            for g in optimizer.param_groups:
                g["lr"] = lr
            logits = model(xb)
            loss = F.cross_entropy(logits, yb, label_smoothing=cfg.label_smoothing)
            if not torch.isfinite(loss):
                raise TrainError(
                    f"the loss became {loss.item()} at epoch {epoch}, step {b + 1} (learning rate {lr:.3g}): training "
                    f"diverged, nothing was saved; lower --lr (now {cfg.lr:g}) or the weight decay"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            loss_sum += loss.item() * len(yb)
            correct += int((logits.argmax(1) == yb).sum())
            seen += len(yb)
            if log_every and (b + 1) % log_every == 0 and b + 1 < steps_per_epoch:
                log(
                    f"  epoch {epoch} step {b + 1}/{steps_per_epoch}: loss {loss_sum / seen:.4f}, {time.perf_counter() - t0:.0f} s"
                )
        bad = non_finite_parameters(model)
        if bad:  # the last step's update can overflow after a finite loss
            raise TrainError(
                f"after epoch {epoch}, {len(bad)} weight tensor(s) hold NaN/Inf ({', '.join(bad[:3])}): training "
                f"diverged, nothing was saved; lower --lr (now {cfg.lr:g})"
            )
        test_top1 = evaluate_top1(model, x_test, y_test)
        rec = EpochRecord(epoch, loss_sum / seen, correct / seen, test_top1, lr, time.perf_counter() - t0)
        history.append(rec)
        log(
            f"epoch {epoch}/{cfg.epochs}: loss {rec.train_loss:.4f}, train top-1 {rec.train_top1:.4f}, "
            f"test top-1 {rec.test_top1:.4f}, {rec.seconds:.0f} s"
        )
    model.eval()
    return TrainResult(model, cfg, dataset, history, history[-1].test_top1, len(y_test), time.perf_counter() - start)


def model_complexity(model: nn.Module, input_size: tuple[int, int, int, int] = (1, 1, 28, 28)) -> dict[str, Any]:
    """Parameters and per-image MFLOPs (multiply-adds, the paper's convention) from :mod:`dynet_deploy.flops`."""
    from .flops import count_flops

    rep = count_flops(model, input_size)
    return {
        "params": rep.params,
        "input_size": list(input_size),
        "mflops_conv_linear": rep.conv_linear_macs / 1e6,
        "mflops_dynamic_overhead": rep.dynamic_overhead_macs / 1e6,
        "mflops_total": rep.total_macs / 1e6,
    }


def training_report(result: TrainResult) -> dict[str, Any]:
    """The JSON-ready record of a run: numbers, config and per-epoch history."""
    info = dataset_info(result.dataset)
    return {
        "format": REPORT_FORMAT,
        "version": 1,
        "model": result.model.zoo_name,  # type: ignore[attr-defined]
        "model_args": result.model.zoo_kwargs,  # type: ignore[attr-defined]
        "dataset": result.dataset,
        "normalisation": {"mean": info.mean, "std": info.std},
        "test_top1": result.test_top1,
        "test_samples": result.test_samples,
        "epochs": result.config.epochs,
        "train_seconds": round(result.train_seconds, 1),
        **model_complexity(result.model),
        "config": asdict(result.config),
        "history": [asdict(r) for r in result.history],
        "torch": torch.__version__,
    }


def save_training_outputs(
    result: TrainResult, out_path: str | Path, report_path: str | Path | None = None
) -> tuple[Path, Path]:
    """Write the checkpoint (``save_checkpoint``) and the JSON report (default: ``<stem>.report.json``)."""
    from .checkpoint import save_checkpoint

    out_path = Path(out_path)
    report = training_report(result)
    if report_path is None:
        stem = out_path.name[: -len(".safetensors")] if out_path.name.endswith(".safetensors") else out_path.name
        report_path = out_path.with_name(stem + ".report.json")
    info = dataset_info(result.dataset)
    meta = {
        "dataset": result.dataset,
        "input_size": list(info.image_size),
        "in_chans": info.in_chans,
        "normalisation": report["normalisation"],
        "test_top1": result.test_top1,
        "test_samples": result.test_samples,
        "epochs": result.config.epochs,
        "seed": result.config.seed,
        "trained_with": "dynet_deploy.train",
    }
    bad = non_finite_parameters(result.model)
    if bad:
        raise TrainError(f"refusing to save: {len(bad)} weight tensor(s) hold NaN/Inf ({', '.join(bad[:3])})")
    weights = save_checkpoint(result.model, out_path, metadata=meta)
    from .provenance import provenance

    report["provenance"] = provenance(weights)
    report_path = Path(report_path)
    atomic_write_text(report_path, json.dumps(report, indent=2) + "\n", CheckpointError)
    return weights, report_path


def check_outputs_writable(out_path: str | Path, report_path: str | Path | None = None, force: bool = True) -> None:
    """Fail before a long run, not after it: a missing folder, a wrong suffix, the report on the checkpoint, and
    (``force`` off) a checkpoint that already exists."""
    from .checkpoint import checkpoint_output_paths
    from .fileio import refuse_existing

    weights, config = checkpoint_output_paths(out_path)
    refuse_existing([weights, config], force, CheckpointError, "checkpoint")
    check_output_path(weights, CheckpointError)
    check_output_path(config, CheckpointError)
    if report_path is not None:
        check_output_path(report_path, CheckpointError, inputs=[weights, config])


BUNDLED_MODEL = "dy_resnet18_fmnist"  # the demo's default model
BUNDLED_BASELINE = "resnet18_fmnist"  # its static baseline, for latency comparisons


def bundled_checkpoint(name: str = BUNDLED_MODEL) -> Path:
    """Path of a checkpoint shipped in the package's assets (``NAME.safetensors``, its .json beside it)."""
    path = ASSETS_DIR / f"{name}.safetensors"
    if not path.is_file():
        known = sorted(p.name[: -len(".safetensors")] for p in ASSETS_DIR.glob("*.safetensors"))
        raise CheckpointError(
            f"no bundled checkpoint {name!r} in {ASSETS_DIR} (bundled: {', '.join(known) or 'none'}); "
            "reinstall the package, or train one with 'dynet-deploy train' (see docs/training.md)"
        )
    return path
