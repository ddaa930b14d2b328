"""Checkpoints: safetensors weights plus a JSON config naming the zoo model, and plain PyTorch state dicts.

The format (``docs/checkpoints.md``) is two files with one stem:

* ``NAME.safetensors``: the model's state dict, tensors only;
* ``NAME.json``: ``{"format": "dynet-deploy-checkpoint", "version": 1, "model": <zoo name>,
  "model_args": {...}, "metadata": {...}, "weights_sha256": <hex digest of NAME.safetensors>}``.

``save_checkpoint`` writes both atomically; ``load_checkpoint`` rebuilds the model with ``create_model`` and
loads the weights after checking every key and shape itself, so a mismatch is reported as one
:class:`CheckpointError` listing what differs. Plain PyTorch state dicts (``.pt``/``.pth``, e.g.
torchvision's) load with ``torch.load(weights_only=True)``: nothing but tensors and containers is ever
unpickled, and a pickle that would import code is refused and named.

The file's content, not its suffix, decides how it is read, so a misnamed file still gets a precise error.
"""

from __future__ import annotations

import difflib
import hashlib
import io
import json
import logging
import os
import pickletools
import struct
import warnings
import zipfile
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from .errors import CheckpointError, ModelError
from .fileio import atomic_path

log = logging.getLogger(__name__)

FORMAT_NAME = "dynet-deploy-checkpoint"
FORMAT_VERSION = 1
WEIGHTS_SUFFIX = ".safetensors"
CONFIG_SUFFIX = ".json"
TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")

# Keys whose absence is harmless: BatchNorm's update counter (only used when momentum=None); torch fills
# it in, and torchvision's older checkpoints lack it.
_OPTIONAL_KEY_SUFFIXES = ("num_batches_tracked",)
# Training scripts often save {"epoch": ..., "state_dict": {...}, "optimizer": ...}.
_WRAPPER_KEYS = ("state_dict", "model")
_LIST_AT_MOST = 5
# safetensors refuses headers above 100 MB; anything bigger is not a safetensors file.
_MAX_SAFETENSORS_HEADER = 100 * 1024 * 1024
_SAFE_PICKLE_MODULES = ("torch", "collections", "_codecs", "numpy")


# --------------------------------------------------------------------------------------------- paths


def _weights_path_for_save(path: str | os.PathLike) -> Path:
    p = Path(path)
    if p.suffix in (WEIGHTS_SUFFIX, CONFIG_SUFFIX):
        return p.with_suffix(WEIGHTS_SUFFIX)
    if p.suffix == "":
        return p.with_name(p.name + WEIGHTS_SUFFIX)
    raise CheckpointError(
        f"checkpoint path {str(p)!r} should end in {WEIGHTS_SUFFIX} (its config goes beside it as "
        f"{p.stem}{CONFIG_SUFFIX}); a plain PyTorch state dict is written with torch.save, not save_checkpoint"
    )


def checkpoint_output_paths(path: str | os.PathLike) -> tuple[Path, Path]:
    """(weights, config) that ``save_checkpoint(model, path)`` writes; refuses a path of another kind."""
    weights = _weights_path_for_save(path)
    return weights, weights.with_suffix(CONFIG_SUFFIX)


def checkpoint_input_paths(path: str | os.PathLike | None) -> list[Path]:
    """Every file reading checkpoint ``path`` may read: the path itself and its .json / weights partner."""
    if path is None:
        return []
    p = Path(path)
    found = [p]
    if p.suffix == CONFIG_SUFFIX:
        found += [p.with_suffix(s) for s in (WEIGHTS_SUFFIX, *TORCH_SUFFIXES)]
    else:
        found.append(p.with_suffix(CONFIG_SUFFIX))
    return [f for f in found if f == p or f.exists()]


def _config_path_of(path: Path) -> Path:
    return path if path.suffix == CONFIG_SUFFIX else path.with_suffix(CONFIG_SUFFIX)


def _weights_path_of_config(config_path: Path) -> Path:
    """The weights beside a config: NAME.safetensors, else a NAME.pt/.pth state dict."""
    for suffix in (WEIGHTS_SUFFIX, *TORCH_SUFFIXES):
        candidate = config_path.with_suffix(suffix)
        if candidate.is_file():
            return candidate
    raise CheckpointError(
        f"weights file {str(config_path.with_suffix(WEIGHTS_SUFFIX))!r} is missing (the config "
        f"{str(config_path)!r} has no {WEIGHTS_SUFFIX} or .pt/.pth beside it); copy both files of the checkpoint"
    )


def _check_is_file(path: Path, what: str = "checkpoint") -> None:
    from .graph import check_readable_file

    check_readable_file(path, CheckpointError, what)  # names a folder, a link loop, an unreadable file as such


# --------------------------------------------------------------------------------------------- config


def _validate_config(config: Any, source: str) -> dict:
    if not isinstance(config, dict):
        raise CheckpointError(
            f"config {source!r} holds a JSON {type(config).__name__}, not an object; it is not a {FORMAT_NAME} config"
        )
    fmt = config.get("format")
    if fmt != FORMAT_NAME:
        raise CheckpointError(
            f"config {source!r} has format {fmt!r}, expected {FORMAT_NAME!r}; it was not written by save_checkpoint"
        )
    version = config.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise CheckpointError(f"config {source!r} has version {version!r}; expected the integer {FORMAT_VERSION}")
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"config {source!r} is format version {version}, newer than this dynet-deploy reads "
            f"(version {FORMAT_VERSION}); upgrade dynet-deploy"
        )
    model = config.get("model")
    if not isinstance(model, str) or not model:
        raise CheckpointError(
            f'config {source!r} has no model name (field "model" is {model!r}); it should name a zoo model'
        )
    model_args = config.setdefault("model_args", {})
    if not isinstance(model_args, dict):
        raise CheckpointError(
            f'config {source!r}: "model_args" must be an object of create_model keyword arguments, '
            f"got a JSON {type(model_args).__name__}"
        )
    metadata = config.setdefault("metadata", {})
    if not isinstance(metadata, dict):
        raise CheckpointError(f'config {source!r}: "metadata" must be an object, got a JSON {type(metadata).__name__}')
    digest = config.get("weights_sha256")
    if digest is not None and not (isinstance(digest, str) and len(digest) == 64):
        raise CheckpointError(f'config {source!r}: "weights_sha256" must be a 64-digit hex string, got {digest!r}')
    return config


def read_checkpoint_config(path: str | os.PathLike) -> dict:
    """Read and validate the JSON config of a checkpoint (given the .json or the weights path).

    Fills in ``model_args`` and ``metadata`` as ``{}`` when absent.
    """
    config_path = _config_path_of(Path(path))
    if not config_path.exists() and not config_path.is_symlink():
        raise CheckpointError(
            f"checkpoint config {str(config_path)!r} is missing; it names the model the weights belong to. "
            f"Copy it beside the weights, or pass the model name (model_name=..., CLI --model)"
        )
    _check_is_file(config_path, "checkpoint config")
    try:
        text = config_path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise CheckpointError(
            f"checkpoint config {str(config_path)!r} is not UTF-8 text; it is not a {FORMAT_NAME} config"
        ) from None
    try:
        config = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CheckpointError(
            f"checkpoint config {str(config_path)!r} is not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})"
        ) from None
    return _validate_config(config, str(config_path))


# --------------------------------------------------------------------------------------------- reading tensors


def _describe_content(head: bytes, path: Path) -> str:
    """A few words on what a file that is not a checkpoint looks like, for the error message."""
    if not head:
        return "an empty file"
    if path.suffix == ".onnx" or (head[:1] == b"\x08" and len(head) > 1 and head[1] < 0x20):
        return "an ONNX model (protobuf), not weights"
    if head.startswith(b"\x7fELF"):
        return "an executable or shared library"
    if head.startswith((b"\x89PNG", b"\xff\xd8\xff", b"GIF8")):
        return "an image"
    sample = head[:512]
    if _looks_like_text_pickle(sample):
        return "a Python pickle in its text protocol (not a torch.save file; it was not unpickled)"
    if b"\x00" not in sample:
        try:
            sample.decode("utf-8")
            return "a text file"
        except UnicodeDecodeError as exc:
            if exc.start >= len(sample) - 3:  # cut in the middle of a character
                return "a text file"
    return "binary data of unknown kind"


def _looks_like_text_pickle(sample: bytes) -> bool:
    """Pickle protocols 0 and 1 are printable: a dict, list or tuple mark, or a global, then a newline-ended op."""
    return sample.startswith((b"(dp", b"(lp", b"(tp", b"(i", b"(c", b"c__builtin__\n", b"ccopy_reg\n", b"}q", b"]q"))


def _content_kind(path: Path) -> tuple[str, bytes]:
    with path.open("rb") as f:
        head = f.read(4096)
    if head.startswith(b"PK\x03\x04"):
        return "torch-zip", head
    if head[:1] == b"\x80":  # pickle protocol >= 2: torch.save's legacy format
        return "pickle", head
    if len(head) >= 10 and head[8:9] == b"{":
        return "safetensors", head
    return "other", head


def _not_a_checkpoint(path: Path, head: bytes) -> CheckpointError:
    return CheckpointError(
        f"{str(path)!r} is not a checkpoint: it looks like {_describe_content(head, path)}. Expected a "
        f"{WEIGHTS_SUFFIX} file written by dynet-deploy (with its {CONFIG_SUFFIX} config) or a PyTorch state "
        f"dict saved with torch.save (.pt/.pth)"
    )


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    size = path.stat().st_size
    with path.open("rb") as f:
        (header_len,) = struct.unpack("<Q", f.read(8))
        if header_len > _MAX_SAFETENSORS_HEADER:
            raise CheckpointError(
                f"{str(path)!r} is not a safetensors file (its first 8 bytes give a header of {header_len} bytes)"
            )
        if 8 + header_len > size:
            raise CheckpointError(
                f"{str(path)!r} is truncated: its safetensors header needs {8 + header_len} bytes, the file has {size}; "
                f"copy or save it again"
            )
        raw = f.read(header_len)
    try:
        header = json.loads(raw)
        data_end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    except (ValueError, KeyError, TypeError, IndexError, AttributeError):
        raise CheckpointError(
            f"{str(path)!r} is not a valid safetensors file (its header is not a tensor table)"
        ) from None
    if 8 + header_len + data_end > size:
        raise CheckpointError(
            f"{str(path)!r} is truncated: its tensors end at byte {8 + header_len + data_end}, the file has {size}; "
            f"copy or save it again"
        )
    try:
        return load_file(str(path), device="cpu")
    except SafetensorError as exc:
        raise CheckpointError(f"{str(path)!r} is a corrupt safetensors file: {exc}") from None


def _pickle_globals(data: bytes) -> list[str]:
    """Names of every global (module.name) a pickle stream imports, read without unpickling anything.

    Diagnosis only: torch's weights-only unpickler is what keeps code from running.
    """
    found: list[str] = []
    stream = io.BytesIO(data)
    for _ in range(4):  # torch.save's legacy format is several pickles in a row
        if stream.tell() >= len(data):
            break
        memo: dict[int, Any] = {}
        recent: list[Any] = []
        try:
            for op, arg, _pos in pickletools.genops(stream):
                if op.name in ("GLOBAL", "INST") and isinstance(arg, str):
                    found.append(arg.replace(" ", "."))
                elif op.name == "STACK_GLOBAL" and len(recent) >= 2:
                    found.append(f"{recent[-2]}.{recent[-1]}")
                if op.name == "MEMOIZE" and recent:
                    memo[len(memo)] = recent[-1]
                elif op.name in ("BINPUT", "LONG_BINPUT", "PUT") and recent and isinstance(arg, int):
                    memo[arg] = recent[-1]
                elif op.name in ("BINGET", "LONG_BINGET", "GET") and isinstance(arg, int):
                    recent.append(memo.get(arg))
                elif isinstance(arg, str):
                    recent.append(arg)
                elif op.name != "FRAME":
                    recent.append(None)
                if op.name == "STOP":
                    break
        except Exception:  # a damaged stream: report what was found so far
            break
    return list(dict.fromkeys(found))


def _code_globals(path: Path, kind: str) -> list[str]:
    try:
        if kind == "torch-zip":
            with zipfile.ZipFile(path) as zf:
                data = b"".join(zf.read(n) for n in zf.namelist() if n.endswith("data.pkl"))
        else:
            data = path.read_bytes()
    except Exception:
        return []
    return [g for g in _pickle_globals(data) if not g.startswith(_SAFE_PICKLE_MODULES)]


def _read_torch_file(path: Path, kind: str) -> Any:
    if kind == "torch-zip" and not zipfile.is_zipfile(path):
        raise CheckpointError(
            f"{str(path)!r} is truncated or corrupt: it starts like a torch.save zip archive but its directory at the end "
            f"is missing; copy or save it again"
        )
    try:
        with warnings.catch_warnings():
            # torch warns about pickle protocols it did not write itself; the load's outcome says enough.
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, OSError, KeyError ... here
        code = _code_globals(path, kind)
        if code:
            raise CheckpointError(
                f"refused {str(path)!r}: its pickle would import and call Python code ({', '.join(code[:_LIST_AT_MOST])}); "
                f"only tensors are ever unpickled, so nothing was run. If it is your own file holding extra objects, "
                f"re-save just the weights: torch.save(model.state_dict(), path)"
            ) from None
        reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        if kind == "pickle" and "magic number" in str(exc):
            reason = "it is a plain Python pickle, not a file torch.save wrote (those start with torch's own header)"
        if "weights_only" in str(exc) or "Unsupported" in str(exc):
            reason = "it holds objects other than tensors and plain containers, or uses a pickle feature torch refuses"
        raise CheckpointError(
            f"cannot read {str(path)!r} as a PyTorch state dict with torch.load(weights_only=True): {reason}. "
            f"It may be truncated, corrupt, or not a checkpoint"
        ) from None


def _as_state_dict(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    """Accept a dict of tensors, or a training checkpoint holding one under "state_dict" or "model"."""
    if not isinstance(obj, Mapping):
        raise CheckpointError(
            f"{str(path)!r} holds a {type(obj).__name__}, not a state dict (a dict of parameter name -> tensor); "
            f"save model.state_dict()"
        )
    if not all(isinstance(v, torch.Tensor) for v in obj.values()):
        for key in _WRAPPER_KEYS:
            if isinstance(obj.get(key), Mapping):
                ignored = sorted(str(k) for k in obj if k != key)
                log.warning(
                    "note: %s is a training checkpoint; using its %r entry%s",
                    path,
                    key,
                    f" and ignoring {', '.join(ignored[:_LIST_AT_MOST])}" if ignored else "",
                )
                obj = obj[key]
                break
    bad = [f"{k} ({type(v).__name__})" for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(
            f"{str(path)!r} is not a state dict: {len(bad)} {'entry is not a tensor' if len(bad) == 1 else 'entries are not tensors'}: "
            f'{_short_list(bad)}; save model.state_dict() (or a dict with it under "state_dict")'
        )
    bad_keys = [repr(k) for k in obj if not isinstance(k, str)]
    if bad_keys:
        raise CheckpointError(f"{str(path)!r} is not a state dict: keys must be strings, found {_short_list(bad_keys)}")
    state = dict(obj)
    if state and all(k.startswith("module.") for k in state):
        log.warning(
            "note: stripped the 'module.' prefix (saved from DataParallel/DistributedDataParallel) from the keys of %s",
            path,
        )
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read the tensors of a checkpoint's weights (.safetensors, or a .pt/.pth state dict) without a model.

    Given a .json config, reads the weights beside it. Unwraps ``{"state_dict": ...}`` / ``{"model": ...}``
    and strips a DataParallel ``module.`` prefix (logging a note for each).
    """
    p = Path(path)
    if p.suffix == CONFIG_SUFFIX:
        read_checkpoint_config(p)
        p = _weights_path_of_config(p)
    _check_is_file(p)
    kind, head = _content_kind(p)
    if kind == "safetensors":
        return _read_safetensors(p)
    if kind in ("torch-zip", "pickle"):
        return _as_state_dict(_read_torch_file(p, kind), p)
    raise _not_a_checkpoint(p, head)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# --------------------------------------------------------------------------------------------- matching


def _short_list(items: list[str]) -> str:
    shown = ", ".join(items[:_LIST_AT_MOST])
    return shown + (f", ... and {len(items) - _LIST_AT_MOST} more" if len(items) > _LIST_AT_MOST else "")


def _call_str(name: str, args: Mapping[str, Any]) -> str:
    return f"{name}({', '.join(f'{k}={v!r}' for k, v in args.items())})"


def _match_state_dict(
    model: nn.Module, state: Mapping[str, torch.Tensor], strict: bool, source: str, model_desc: str
) -> None:
    expected = model.state_dict()
    missing = [k for k in expected if k not in state and not k.endswith(_OPTIONAL_KEY_SUFFIXES)]
    unexpected = [k for k in state if k not in expected]
    misshaped = [
        f"{k}: checkpoint {list(state[k].shape)} vs model {list(expected[k].shape)}"
        for k in expected
        if k in state and state[k].shape != expected[k].shape
    ]
    problems = []
    if missing and strict:
        problems.append(f"{len(missing)} missing key{'s' if len(missing) != 1 else ''} ({_short_list(missing)})")
    if unexpected and strict:
        problems.append(
            f"{len(unexpected)} unexpected key{'s' if len(unexpected) != 1 else ''} ({_short_list(unexpected)})"
        )
    if misshaped:
        problems.append(
            f"{len(misshaped)} mis-shaped tensor{'s' if len(misshaped) != 1 else ''} ({_short_list(misshaped)})"
        )
    if problems:
        hint = "Check the model name and its arguments (num_classes, in_chans, width_mult, ...)"
        if unexpected and missing and len(misshaped) == 0:
            close = difflib.get_close_matches(unexpected[0], missing, n=1)
            if close:
                hint += f"; e.g. checkpoint key {unexpected[0]!r} resembles model key {close[0]!r}"
        raise CheckpointError(f"checkpoint {source!r} does not fit {model_desc}: {'; '.join(problems)}. {hint}")
    if missing or unexpected:
        log.warning(
            "note: loading %s non-strictly: %d missing key(s) keep their initial values, %d unexpected key(s) ignored",
            source,
            len(missing),
            len(unexpected),
        )
    try:
        model.load_state_dict({k: v for k, v in state.items() if k in expected}, strict=False)
    except RuntimeError as exc:
        raise CheckpointError(f"checkpoint {source!r} could not be copied into {model_desc}: {exc}") from None


def _build_model(name: str, args: dict, source: str) -> nn.Module:
    from .models import create_model

    try:
        return create_model(name, **args)
    except ModelError as exc:
        raise CheckpointError(f"checkpoint {source!r}: {exc}") from None
    except (TypeError, ValueError, IndexError, KeyError) as exc:  # a builder rejecting a value
        raise CheckpointError(f"checkpoint {source!r}: model_args {args!r} rejected by {name!r}: {exc}") from None


# --------------------------------------------------------------------------------------------- public API


def save_checkpoint(
    model: nn.Module,
    path: str | os.PathLike,
    model_name: str | None = None,
    model_args: Mapping[str, Any] | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``NAME.safetensors`` and ``NAME.json`` atomically; return the .safetensors path.

    ``path`` may end in .safetensors or .json, or have no suffix. ``model_name``/``model_args`` default to
    what ``create_model`` recorded on the model. The weights are renamed into place before the config, and
    the config records their SHA-256, so an interrupted overwrite is detected on load.
    """
    from .models import model_info

    if not isinstance(model, nn.Module):
        raise CheckpointError(f"save_checkpoint needs a torch.nn.Module, got {type(model).__name__}")
    name = model_name if model_name is not None else getattr(model, "zoo_name", None)
    if not name:
        raise CheckpointError(
            "the model was not built by create_model, so its zoo name is unknown; pass model_name= (and model_args=)"
        )
    try:
        model_info(name)
    except ModelError as exc:
        raise CheckpointError(f"cannot save: {exc}") from None
    args = dict(model_args if model_args is not None else getattr(model, "zoo_kwargs", {}))
    meta = dict(metadata or {})
    for field, value in (("model_args", args), ("metadata", meta)):
        try:
            json.dumps(value, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise CheckpointError(
                f"cannot save: {field} must be JSON-serialisable (numbers, strings, lists, dicts): {exc}"
            ) from None

    weights_path = _weights_path_for_save(path)
    config_path = weights_path.with_suffix(CONFIG_SUFFIX)
    state: dict[str, torch.Tensor] = {}
    seen_storage: set[int] = set()
    for key, value in model.state_dict().items():
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"cannot save: state dict entry {key!r} is a {type(value).__name__}, not a tensor")
        tensor = value.detach().cpu().contiguous()
        ptr = tensor.untyped_storage().data_ptr()
        # safetensors refuses tensors sharing memory (tied weights); each key gets its own copy.
        if ptr in seen_storage and tensor.numel():
            tensor = tensor.clone()
        seen_storage.add(tensor.untyped_storage().data_ptr())
        state[key] = tensor

    from safetensors.torch import save_file

    # Config outside, weights inside: the weights are renamed into place first; if anything fails, the
    # config's temporary file is removed and the old pair (if any) stays.
    with atomic_path(config_path, CheckpointError) as tmp_config:
        with atomic_path(weights_path, CheckpointError) as tmp_weights:
            save_file(
                state, str(tmp_weights), metadata={"format": FORMAT_NAME, "version": str(FORMAT_VERSION), "model": name}
            )
            config = {
                "format": FORMAT_NAME,
                "version": FORMAT_VERSION,
                "model": name,
                "model_args": args,
                "metadata": meta,
                "weights_sha256": _sha256(tmp_weights),
            }
            tmp_config.write_text(json.dumps(config, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    return weights_path


def load_checkpoint(
    path: str | os.PathLike,
    model_name: str | None = None,
    model_args: Mapping[str, Any] | None = None,
    strict: bool = True,
) -> nn.Module:
    """Rebuild the zoo model a checkpoint names and load its weights; returns it in eval mode (BN not folded).

    ``path``: the .safetensors or .json of a dynet-deploy checkpoint, or a plain state dict (.pt/.pth/...).
    ``model_name`` is needed when no .json config sits beside the weights; when both are present they must
    agree. ``model_args`` are merged over the config's. ``strict=False`` tolerates missing and unexpected
    keys (logged), never mis-shaped ones.
    """
    p = Path(path)
    if p.suffix == CONFIG_SUFFIX:
        config = read_checkpoint_config(p)
        weights_path = _weights_path_of_config(p)
    else:
        _check_is_file(p)
        config_path = _config_path_of(p)
        weights_path = p
        if config_path.exists():
            config = read_checkpoint_config(config_path)
        elif model_name is not None:
            config = None
        else:
            read_state_dict(p)  # a file that is not a checkpoint at all says so first
            raise CheckpointError(
                f"{str(p)!r} has no config {str(config_path)!r} beside it, so the model it belongs to is unknown; "
                f"copy the .json written with it beside it, or name the zoo model (export and checkpoint take --model NAME, "
                f"validate --model-name NAME)"
            )
    source = str(weights_path)

    if config is not None:
        if model_name is not None and model_name != config["model"]:
            raise CheckpointError(
                f"checkpoint {source!r} is a {config['model']!r} (per its config) but model_name={model_name!r} was given; "
                f"drop model_name or use the matching checkpoint"
            )
        name = config["model"]
        args = {**config["model_args"], **(model_args or {})}
    else:
        name = model_name
        args = dict(model_args or {})
    from .models import model_info

    try:
        model_info(name)
    except ModelError as exc:
        raise CheckpointError(f"checkpoint {source!r}: {exc}") from None

    state = read_state_dict(weights_path)
    digest = config.get("weights_sha256") if config is not None else None
    if digest is not None and weights_path.suffix == WEIGHTS_SUFFIX and _sha256(weights_path) != digest:
        raise CheckpointError(
            f"checkpoint {source!r} does not match its config: the weights' SHA-256 differs from the one recorded "
            f"(an interrupted save, or one of the two files replaced); save the checkpoint again"
        )
    model = _build_model(name, args, source)
    _match_state_dict(model, state, strict, source, _call_str(name, args))
    return model.eval()


__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "load_checkpoint",
    "read_checkpoint_config",
    "read_state_dict",
    "save_checkpoint",
]
