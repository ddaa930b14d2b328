"""Training: the seeded loop on a tiny subset, its checkpoint, the CLI, and the bundled model's real accuracy."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch

from dynet_deploy import data
from dynet_deploy.checkpoint import load_checkpoint, read_checkpoint_config
from dynet_deploy.cli import main as cli_main
from dynet_deploy.train import (
    BUNDLED_BASELINE,
    BUNDLED_MODEL,
    TrainConfig,
    augment_batch,
    bundled_checkpoint,
    evaluate_top1,
    one_cycle_lr,
    save_training_outputs,
    train,
)

HAVE_FASHION_MNIST = data.fashion_mnist_available(data.FASHION_MNIST_DEFAULT_ROOT)

# A tiny Dy-ResNet18 (block widths 2..16 channels) on a few hundred digits: seconds, not minutes.
# Digits ships with scikit-learn, so these tests run on any machine.
TINY = dict(
    model="dy_resnet18",
    model_args={"width_mult": 0.0625},
    dataset="digits",
    epochs=1,
    batch_size=64,
    train_limit=256,
    test_limit=128,
    seed=3,
    threads=1,  # tiny layers gain nothing from a second thread, and one thread never waits on another
)


@pytest.fixture(scope="module")
def tiny_run():
    return train(TrainConfig(**TINY))


def test_tiny_training_runs_and_records_history(tiny_run):
    assert tiny_run.dataset == "digits" and tiny_run.test_samples == 128
    (rec,) = tiny_run.history
    assert rec.epoch == 1 and torch.isfinite(torch.tensor(rec.train_loss))
    assert 0.0 <= rec.test_top1 <= 1.0 and rec.test_top1 == tiny_run.test_top1
    assert not tiny_run.model.training
    assert tiny_run.model.zoo_kwargs == {"width_mult": 0.0625, "num_classes": 10, "in_chans": 1, "small_input": True}


def test_same_seed_gives_identical_weights_and_loss(tiny_run):
    again = train(TrainConfig(**TINY))
    assert again.history[0].train_loss == tiny_run.history[0].train_loss
    a, b = tiny_run.model.state_dict(), again.model.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_other_seed_gives_other_weights(tiny_run):
    other = train(TrainConfig(**{**TINY, "seed": 4}))
    a, b = tiny_run.model.state_dict(), other.model.state_dict()
    assert any(not torch.equal(a[k], b[k]) for k in a if a[k].is_floating_point())


def test_training_loss_decreases_over_epochs():
    run = train(TrainConfig(**{**TINY, "epochs": 3, "batch_size": 32}))
    losses = [r.train_loss for r in run.history]
    assert losses[-1] < losses[0], losses


def test_checkpoint_and_report_round_trip(tiny_run, tmp_path):
    weights, report_path = save_training_outputs(tiny_run, tmp_path / "tiny.safetensors")
    assert report_path == tmp_path / "tiny.report.json"
    loaded = load_checkpoint(weights)
    x = torch.randn(5, 1, 28, 28)
    with torch.no_grad():
        ref, out = tiny_run.model(x), loaded(x)
    err = (out - ref).abs().max().item()
    assert err <= 1e-6, f"max-abs {err} (tolerance 1e-6: the same weights, the same forward path)"
    x_test, y_test = data.load_dataset("digits", "test", limit=128)
    assert evaluate_top1(loaded, x_test, y_test) == tiny_run.test_top1

    config = read_checkpoint_config(weights)
    assert config["model"] == "dy_resnet18" and config["metadata"]["dataset"] == "digits"
    assert config["metadata"]["normalisation"] == {
        "mean": data.NORMALISATION["digits"][0],
        "std": data.NORMALISATION["digits"][1],
    }
    report = json.loads(report_path.read_text())
    assert report["test_top1"] == tiny_run.test_top1 and report["epochs"] == 1
    assert report["params"] == sum(p.numel() for p in tiny_run.model.parameters())
    assert report["mflops_total"] > report["mflops_conv_linear"] > 0  # the Dy model has CPM + fusion overhead
    prov = report["provenance"]  # what made the checkpoint, and the checkpoint's own sha256
    assert prov["tool"]["name"] == "dynet-deploy" and prov["versions"]["torch"] == torch.__version__
    assert prov["checkpoint"]["path"] == str(weights.absolute())
    assert prov["checkpoint"]["sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()


def test_one_cycle_schedule_warms_up_then_decays_to_zero():
    total, peak = 100, 0.1
    lrs = [one_cycle_lr(s, total, peak, 0.2) for s in range(total + 1)]
    assert lrs[0] == pytest.approx(peak / 25)
    assert max(lrs) == pytest.approx(peak) and lrs.index(max(lrs)) == 20
    assert all(a <= b for a, b in zip(lrs[:20], lrs[1:21]))
    assert all(a >= b for a, b in zip(lrs[20:], lrs[21:]))
    assert lrs[-1] == pytest.approx(0.0, abs=1e-12)


def test_augmentation_is_a_shift_and_optional_flip_of_each_image():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(16, 1, 28, 28)
    out = augment_batch(x, pad=2, background=-7.0, gen=gen)
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2), value=-7.0)
    for i in range(len(x)):
        candidates = [
            padded[i, :, dy : dy + 28, dx : dx + 28].flip(-1) if flip else padded[i, :, dy : dy + 28, dx : dx + 28]
            for dy in range(5)
            for dx in range(5)
            for flip in (False, True)
        ]
        assert any(torch.equal(out[i], c) for c in candidates), i
    assert not torch.equal(out, x)  # 16 images all drawn as "no shift, no flip" has probability 50^-16


def test_cli_trains_and_writes_checkpoint(tmp_path, capsys):
    out = tmp_path / "cli.safetensors"
    rc = cli_main(
        [
            "train",
            "--model",
            "dy_resnet18",
            "--model-args",
            '{"width_mult": 0.0625}',
            "--dataset",
            "digits",
            "--epochs",
            "1",
            "--batch-size",
            "64",
            "--train-limit",
            "128",
            "--test-limit",
            "64",
            "--seed",
            "1",
            "--threads",
            "1",
            "-o",
            str(out),
        ]
    )
    assert rc == 0
    assert out.exists() and out.with_suffix(".json").exists() and (tmp_path / "cli.report.json").exists()
    assert "test top-1" in capsys.readouterr().out
    assert isinstance(load_checkpoint(out), torch.nn.Module)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--model-args", "{not json"], "--model-args is not valid JSON"),
        (["--model-args", "[1, 2]"], "must be a JSON object"),
        (["--epochs", "0"], "--epochs must be >= 1"),
        (["-o", "/nonexistent-folder/x.safetensors"], "does not exist"),
        (["--model", "dy_resnet19"], "unknown model 'dy_resnet19'"),
    ],
)
def test_cli_bad_input_is_a_clear_error(tmp_path, capsys, args, message):
    base = {"--dataset": "digits", "--train-limit": "64", "--test-limit": "32", "-o": str(tmp_path / "x.safetensors")}
    for i in range(0, len(args), 2):
        base[args[i]] = args[i + 1]
    argv = ["train"] + [tok for kv in base.items() for tok in kv]
    assert cli_main(argv) == 1
    assert message in capsys.readouterr().err
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_unknown_bundled_checkpoint_is_a_clear_error():
    from dynet_deploy.errors import CheckpointError

    with pytest.raises(CheckpointError, match="no bundled checkpoint 'nope'"):
        bundled_checkpoint("nope")


def _bundled_or_skip(name: str):
    if not HAVE_FASHION_MNIST:
        pytest.skip(
            f"Fashion-MNIST not installed in {data.FASHION_MNIST_DEFAULT_ROOT} (apt-get install dataset-fashion-mnist)"
        )
    path = bundled_checkpoint(name)
    config = read_checkpoint_config(path)
    meta = config["metadata"]
    assert meta["dataset"] == "fashion-mnist"
    assert (meta["normalisation"]["mean"], meta["normalisation"]["std"]) == data.NORMALISATION["fashion-mnist"]
    size_mib = path.stat().st_size / 2**20
    assert size_mib < 5, f"{name}: {size_mib:.1f} MiB is too big to bundle"
    return load_checkpoint(path), meta


@pytest.mark.slow
@pytest.mark.parametrize("name", [BUNDLED_MODEL, BUNDLED_BASELINE])
def test_bundled_checkpoint_real_accuracy(name):
    """The shipped weights, evaluated now on the first 2000 Fashion-MNIST test images: >= 91 % top-1."""
    model, _ = _bundled_or_skip(name)
    x, y = data.load_dataset("fashion-mnist", "test", limit=2000)
    top1 = evaluate_top1(model, x, y)
    assert top1 >= 0.91, f"{name}: top-1 {top1:.4f} on the first 2000 test images"


def test_training_restores_the_callers_thread_count():
    before = torch.get_num_threads()
    train(TrainConfig(**{**TINY, "threads": before + 1, "train_limit": 64, "test_limit": 32}))
    assert torch.get_num_threads() == before


def test_diverging_training_stops_with_a_clear_error_and_saves_nothing(tmp_path, capsys):
    out = tmp_path / "d.safetensors"
    rc = cli_main(
        [
            "train",
            "--model",
            "dy_resnet18",
            "--model-args",
            '{"width_mult": 0.0625}',
            "--dataset",
            "digits",
            "--epochs",
            "1",
            "--batch-size",
            "32",
            "--train-limit",
            "96",
            "--test-limit",
            "16",
            "--threads",
            "1",
            "--lr",
            "1e30",
            "-o",
            str(out),
        ]
    )
    err = capsys.readouterr().err
    last = err.splitlines()[-1]  # after the progress lines (stderr), one error line
    assert rc == 1
    assert last.startswith("error (train): ") and "diverged, nothing was saved" in last and "Traceback" not in err
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    "field, value", [("lr", float("nan")), ("lr", float("inf")), ("lr", 0.0), ("batch_size", 0), ("threads", 0)]
)
def test_config_values_training_cannot_use_are_refused(field, value):
    from dynet_deploy.errors import TrainError

    with pytest.raises(TrainError, match=field.replace("_", "-")):
        train(TrainConfig(**{**TINY, field: value}))


def test_checkpoint_records_input_size_and_channels(tiny_run, tmp_path):
    weights, _ = save_training_outputs(tiny_run, tmp_path / "t.safetensors")
    meta = read_checkpoint_config(weights)["metadata"]
    assert meta["input_size"] == [28, 28] and meta["in_chans"] == 1 and meta["dataset"] == "digits"
