"""Checkpoints with no pickles: safetensors for tensors, JSON for everything else.

A checkpoint is three files in a folder, written as one unit (see `save_checkpoint`):

    model.safetensors           the weights (tied weights stored once)
    training_state.safetensors  AdamW moments per parameter + RNG and data-position states
    checkpoint.json             model class and config, train config, step, optimizer
                                hyper-parameters, data position counters, history

Resuming from it restores everything a training step reads, so a resumed run computes the
same losses as a run that never stopped.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, load_model, save_file, save_model

MODEL_FILE = "model.safetensors"
STATE_FILE = "training_state.safetensors"
META_FILE = "checkpoint.json"
FORMAT_VERSION = 1
CHECKPOINT_FILES = (MODEL_FILE, STATE_FILE, META_FILE)


def model_config_dict(model: torch.nn.Module) -> dict[str, Any] | None:
    """The model's `config` as a plain dict (None when the model has no dataclass config)."""
    cfg = getattr(model, "config", None)
    if cfg is None:
        return None
    if dataclasses.is_dataclass(cfg):
        return dataclasses.asdict(cfg)
    if hasattr(cfg, "to_dict"):
        return cfg.to_dict()
    return None


def _jsonable(d: dict[str, Any] | None) -> dict[str, Any] | None:
    """Round-trip through JSON so tuples become lists, as they will after loading."""
    return None if d is None else json.loads(json.dumps(d))


def check_model_config(saved: dict[str, Any] | None, model: torch.nn.Module, where: str) -> None:
    """Raise a ValueError naming every field where the checkpoint's config differs from the model's."""
    current = _jsonable(model_config_dict(model))
    if saved is None or current is None:
        return
    diffs = [
        f"{k}: checkpoint {saved.get(k)!r} vs model {current.get(k)!r}"
        for k in sorted(set(saved) | set(current))
        if saved.get(k) != current.get(k)
    ]
    if diffs:
        raise ValueError(f"checkpoint {where} does not match the model's config (" + "; ".join(diffs) + ")")


def _flatten_optimizer(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list]:
    """Split an optimizer state_dict into flat tensors (`opt.<param>.<name>`) and JSON groups."""
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    for pid, state in sd["state"].items():
        for name, value in state.items():
            t = value if isinstance(value, torch.Tensor) else torch.tensor(value)
            tensors[f"opt.{pid}.{name}"] = t.detach().cpu().contiguous()
    return tensors, sd["param_groups"]


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], groups: list) -> dict[str, Any]:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, t in tensors.items():
        if key.startswith("opt."):
            _, pid, name = key.split(".", 2)
            state.setdefault(int(pid), {})[name] = t
    for g in groups:  # JSON turned tuples into lists
        if "betas" in g:
            g["betas"] = tuple(g["betas"])
    return {"state": state, "param_groups": groups}


def rng_state() -> dict[str, torch.Tensor]:
    """The global RNG states a training step reads (dropout): CPU and, if present, CUDA."""
    states = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            states[f"rng.cuda.{i}"] = s
    return states


def set_rng_state(states: dict[str, torch.Tensor]) -> None:
    """Restore what `rng_state` returned."""
    torch.set_rng_state(states["rng.torch"])
    cuda = [states[k] for k in sorted(k for k in states if k.startswith("rng.cuda."))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)


def _qualname(obj: Any) -> str | None:
    return None if obj is None else f"{type(obj).__module__}.{type(obj).__qualname__}"


def _import(qualname: str) -> Any:
    """Import a class named in checkpoint.json; only classes of this package are allowed."""
    module_name, _, name = qualname.rpartition(".")
    if not module_name.startswith("companion."):
        raise ValueError(
            f"refusing to import {qualname!r} named in a checkpoint: only "
            "companion.* classes are rebuilt automatically; build the model yourself "
            "and call load_checkpoint(dir, model)"
        )
    return getattr(importlib.import_module(module_name), name)


NEW = ".new"  # suffix of a file of the checkpoint being written
COMMIT_FILE = "checkpoint.commit"  # exists while a complete new checkpoint is being renamed in


def _fsync_dir(path: Path) -> None:
    """Flush a folder's entries to disk (where the OS supports it)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def checkpoint_file(ckpt_dir: str | os.PathLike, name: str) -> Path:
    """The path of checkpoint file `name` of the last complete checkpoint in `ckpt_dir`.

    While a save is being committed (``checkpoint.commit`` present) the complete new files are
    the ``*.new`` ones not yet renamed; otherwise the files with their plain names.
    """
    folder = Path(ckpt_dir)
    new = folder / (name + NEW)
    if (folder / COMMIT_FILE).is_file() and new.is_file():
        return new
    return folder / name


def _roll_forward(folder: Path) -> None:
    """Finish a commit a killed process left half done, or drop the files of an unfinished write."""
    if (folder / COMMIT_FILE).is_file():
        for name in CHECKPOINT_FILES:
            if (folder / (name + NEW)).is_file():
                os.replace(folder / (name + NEW), folder / name)
        _fsync_dir(folder)
        (folder / COMMIT_FILE).unlink()
    for name in CHECKPOINT_FILES:
        (folder / (name + NEW)).unlink(missing_ok=True)


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def save_checkpoint(
    out_dir: str | os.PathLike,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    *,
    step: int = 0,
    train_config: dict[str, Any] | None = None,
    data_state: dict[str, Any] | None = None,
    rng: dict[str, torch.Tensor] | None = None,
    history: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write a checkpoint into `out_dir` atomically, as one unit, and return the folder.

    The three files are first written as ``*.new``; then ``checkpoint.commit`` is created and
    the new files are renamed over the old ones. A run killed before the commit file exists
    leaves the previous checkpoint untouched; one killed after it leaves a complete new one
    (readers and the next save finish the renames). Other files in the folder are left alone.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out_dir} exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    _roll_forward(out)
    save_model(model, str(out / (MODEL_FILE + NEW)))

    tensors: dict[str, torch.Tensor] = {}
    groups: list = []
    if optimizer is not None:
        tensors, groups = _flatten_optimizer(optimizer)
    for k, v in (rng or {}).items():
        tensors[k] = v.detach().cpu().contiguous()
    data_meta: dict[str, Any] = {}
    for k, v in (data_state or {}).items():
        if isinstance(v, torch.Tensor):
            tensors[f"data.{k}"] = v.detach().cpu().contiguous()
        else:
            data_meta[k] = v
    save_file(tensors, str(out / (STATE_FILE + NEW)))

    meta = {
        "format_version": FORMAT_VERSION,
        "model_class": _qualname(model),
        "model_config": model_config_dict(model),
        "config_class": _qualname(getattr(model, "config", None)),
        "train_config": train_config,
        "step": step,
        "optimizer_param_groups": groups,
        "data_state": data_meta,
        "history": history,
        "extra": extra or {},
    }
    _write_synced(out / (META_FILE + NEW), json.dumps(meta, indent=1).encode("utf-8"))
    for name in (MODEL_FILE, STATE_FILE):
        with open(out / (name + NEW), "rb") as f:
            os.fsync(f.fileno())
    _fsync_dir(out)
    _write_synced(out / (COMMIT_FILE + NEW), f"step {step}\n".encode())
    os.replace(out / (COMMIT_FILE + NEW), out / COMMIT_FILE)  # the commit point
    _roll_forward(out)
    return out


def read_meta(ckpt_dir: str | os.PathLike) -> dict[str, Any]:
    """Read checkpoint.json, with a clear error when the folder is not a checkpoint."""
    path = checkpoint_file(ckpt_dir, META_FILE)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint in {ckpt_dir}: {META_FILE} is missing")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON ({err}): the checkpoint is damaged") from None
    if not isinstance(meta, dict) or "model_class" not in meta:
        raise ValueError(f"{path} is not a companion checkpoint description (no 'model_class')")
    return meta


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """Load a safetensors file; a missing, truncated or garbage file raises a ValueError naming it."""
    if not path.is_file():
        raise ValueError(f"{path} is missing: the checkpoint is incomplete")
    try:
        return load_file(str(path))
    except Exception as err:  # SafetensorError, or an OSError while reading
        raise ValueError(f"{path} is not a readable safetensors file ({err})") from None


def load_weights(ckpt_dir: str | os.PathLike, model: torch.nn.Module) -> dict[str, Any]:
    """Load only the weights of a checkpoint (no optimizer state needed) into `model`; return its metadata.

    Raises ValueError if the checkpoint's model config or tensor shapes do not match `model`,
    or if a file is damaged.
    """
    meta = read_meta(ckpt_dir)
    check_model_config(meta.get("model_config"), model, str(ckpt_dir))
    path = checkpoint_file(ckpt_dir, MODEL_FILE)
    _read_tensors(path)  # a clear error for a damaged file before safetensors' own
    try:
        missing, unexpected = load_model(model, str(path), strict=False)
    except RuntimeError as err:  # shape mismatch
        raise ValueError(f"checkpoint {ckpt_dir} does not match the model: {err}") from None
    if missing or unexpected:
        raise ValueError(
            f"checkpoint {ckpt_dir} does not match the model: missing weights "
            f"{sorted(missing)[:5]}, unexpected weights {sorted(unexpected)[:5]}"
        )
    return meta


def load_checkpoint(
    ckpt_dir: str | os.PathLike, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None
) -> dict[str, Any]:
    """Load weights and training state into `model` (and `optimizer`); return the metadata plus `rng`/`data_state`.

    Raises ValueError if the checkpoint's model config or tensor shapes do not match `model`,
    or if a file is missing or damaged.
    """
    meta = load_weights(ckpt_dir, model)
    tensors = _read_tensors(checkpoint_file(ckpt_dir, STATE_FILE))
    if optimizer is not None:
        sd = _unflatten_optimizer(tensors, meta["optimizer_param_groups"])
        try:
            optimizer.load_state_dict(sd)
        except ValueError as err:
            raise ValueError(f"checkpoint {ckpt_dir}: optimizer state does not fit: {err}") from None
    meta["rng"] = {k: v for k, v in tensors.items() if k.startswith("rng.")}
    data_state = dict(meta.get("data_state") or {})
    data_state.update({k[len("data.") :]: v for k, v in tensors.items() if k.startswith("data.")})
    meta["data_state"] = data_state
    return meta


def model_from_checkpoint(ckpt_dir: str | os.PathLike) -> torch.nn.Module:
    """A new model of the class named in the checkpoint, built from its config (weights: `load_pretrained`)."""
    meta = read_meta(ckpt_dir)
    if meta.get("model_config") is None or meta.get("config_class") is None:
        raise ValueError(f"checkpoint {ckpt_dir} holds no model config: cannot rebuild the model")
    cls, cfg_cls = _import(meta["model_class"]), _import(meta["config_class"])
    cfg_dict = meta["model_config"]
    fields = {f.name for f in dataclasses.fields(cfg_cls)}
    return cls(cfg_cls(**{k: v for k, v in cfg_dict.items() if k in fields}))


def load_pretrained(ckpt_dir: str | os.PathLike, device: str | torch.device = "cpu") -> torch.nn.Module:
    """Rebuild the model class named in the checkpoint from its config and load the weights.

    Needs only ``checkpoint.json`` and ``model.safetensors``: a folder without the training
    state (optimizer moments, RNG) loads for inference.
    """
    model = model_from_checkpoint(ckpt_dir)
    load_weights(ckpt_dir, model)
    return model.to(device).eval()
