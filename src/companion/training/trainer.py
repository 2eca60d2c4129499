"""The training loop over a token stream (pre-training, chapters 5-8): AdamW or Muon, warm-up +
cosine schedule, clipping, evaluation, progress bar, checkpoints that resume exactly, a clean stop
on Ctrl-C, gradient accumulation, and data parallelism (DDP) when it runs under `torchrun` (see
`companion.training.distributed`). Its step is the package's one step (`companion.training.loop`:
`set_lr`, `clip_and_check`); runs over examples held in memory use `loop.run_steps`.

    cfg = TrainConfig(steps=2000, batch_size=12, block_size=64, lr=1e-3)
    history = train(model, train_ids, val_ids, cfg)            # next-token prediction
    history = train(encoder, train_ids, val_ids, cfg, objective=MaskedLM(mask_id, vocab_size))

`model(inputs, targets)` must return an object with `.loss`, as every model of the package does
(`companion.nn.ModelOutput`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from companion.threads import policy as thread_policy
from companion.training.batching import BlockSampler, as_token_tensor
from companion.training.checkpoint import load_checkpoint, read_meta, rng_state, save_checkpoint, set_rng_state
from companion.training.history import History
from companion.training.loop import clip_and_check, set_lr
from companion.training.objectives import Objective, resolve_objective
from companion.training.optim import OPTIMIZERS, make_optimizer, param_groups  # noqa: F401 (re-exported)
from companion.training.schedule import lr_at
from companion.utils import get_device, set_seed

DTYPES = {"fp32": None, "bf16": torch.bfloat16}
SDPA_BACKENDS = (None, "auto", "math", "flash", "efficient")


@dataclass
class TrainConfig:
    """Everything a training run needs besides the model and the data."""

    steps: int = 2000  # optimizer steps in all (a resumed run continues up to this)
    batch_size: int = 12  # the global batch: all micro-batches and all data-parallel ranks together
    grad_accum_steps: int = 1  # split each batch into this many micro-batches (same update, less memory)
    block_size: int = 64  # context length of each training example
    lr: float = 1e-3  # peak learning rate, reached at the end of warm-up
    min_lr: float = 1e-4  # learning rate at the end of the cosine decay
    warmup_steps: int = 100
    decay_steps: int | None = None  # cosine decay ends here (None: at `steps`)
    weight_decay: float = 0.1  # decoupled (AdamW); not applied to biases, norms, embeddings
    optimizer: str = "adamw"  # or "muon": Muon for the blocks' matrices, AdamW for the rest
    muon_lr: float = 0.02  # Muon's peak learning rate (follows the same schedule as lr)
    muon_momentum: float = 0.95
    betas: tuple[float, float] = (0.9, 0.99)
    eps: float = 1e-8
    grad_clip: float = 1.0  # max global gradient norm (0: no clipping)
    eval_interval: int = 250  # evaluate every this many steps (0: only at start and end)
    eval_steps: int = 20  # batches averaged per evaluation
    eval_batch_size: int | None = None  # None: batch_size
    device: str | None = None  # None: companion.get_device() picks cuda, mps or cpu
    dtype: str = "fp32"  # "fp32" or "bf16" (autocast; weights stay fp32)
    compile: bool = False  # torch.compile the model
    fused: bool | None = None  # fused AdamW kernel (None: on CUDA only; optimizer="adamw" only)
    attention_backend: str | None = "auto"  # SDPA kernel: "math", "flash", "efficient", None
    # (PyTorch's choice) or "auto": "math" for bf16 on a CPU, whose flash backward is slow there
    seed: int = 0
    out_dir: str | None = None  # checkpoint folder (None: no checkpoints)
    ckpt_interval: int = 0  # also save every this many steps (0: only at the end / on Ctrl-C)
    log_interval: int = 10  # progress-bar refresh every this many steps

    def __post_init__(self) -> None:
        self.betas = tuple(self.betas)  # type: ignore[assignment]
        if self.attention_backend not in SDPA_BACKENDS:
            raise ValueError(f"attention_backend must be one of {list(SDPA_BACKENDS)}, got {self.attention_backend!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {list(OPTIMIZERS)}, got {self.optimizer!r}")
        if self.muon_lr <= 0 or not 0.0 <= self.muon_momentum < 1.0:
            raise ValueError(
                f"need muon_lr > 0 and 0 <= muon_momentum < 1, got muon_lr={self.muon_lr}, "
                f"muon_momentum={self.muon_momentum}"
            )
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {self.dtype!r}")
        for name in ("steps", "batch_size", "block_size", "eval_steps", "grad_accum_steps", "log_interval"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("warmup_steps", "eval_interval", "ckpt_interval", "weight_decay", "grad_clip"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.decay_steps is not None and self.decay_steps < 1:
            raise ValueError(f"decay_steps must be None or >= 1, got {self.decay_steps}")
        if self.eval_batch_size is not None and self.eval_batch_size < 1:
            raise ValueError(f"eval_batch_size must be None or >= 1, got {self.eval_batch_size}")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas) or not self.eps > 0:
            raise ValueError(f"need two betas in [0, 1) and eps > 0, got betas={self.betas}, eps={self.eps}")
        if self.lr <= 0 or self.min_lr < 0 or self.min_lr > self.lr:
            raise ValueError(f"need 0 <= min_lr <= lr and lr > 0, got lr={self.lr}, min_lr={self.min_lr}")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly dict."""
        return dataclasses.asdict(self)


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside torch.compile's and DistributedDataParallel's wrappers."""
    while True:
        if hasattr(model, "_orig_mod"):  # torch.compile
            model = model._orig_mod
        elif isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        else:
            return model


def model_loss(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The scalar loss `model(inputs, targets).loss` (ValueError if the model reports none)."""
    loss = getattr(model(inputs, targets), "loss", None)
    if loss is None:
        raise ValueError(
            f"{type(unwrap(model)).__name__}(inputs, targets) returned no .loss: a model trained here must "
            "compute its loss from the targets, as every companion model does (companion.nn.ModelOutput)"
        )
    return loss


def _vocab_size(model: nn.Module) -> int | None:
    return getattr(getattr(model, "config", None), "vocab_size", None)


def check_fits(model: nn.Module, data: torch.Tensor, name: str, tokenizer: Any = None) -> None:
    """Raise if token ids or the tokenizer's vocabulary do not fit the model's vocab_size."""
    vocab = _vocab_size(model)
    if vocab is None:
        return
    if tokenizer is not None:
        tok_vocab = getattr(tokenizer, "vocab_size", None)
        tok_vocab = len(tokenizer) if tok_vocab is None else tok_vocab
        if tok_vocab > vocab:
            raise ValueError(
                f"the tokenizer has {tok_vocab} tokens but the model's vocab_size is "
                f"{vocab}: make vocab_size >= {tok_vocab}"
            )
    if data.numel() and int(data.max()) >= vocab:
        raise ValueError(
            f"{name} holds token id {int(data.max())} but the model's vocab_size is {vocab}: ids must be < vocab_size"
        )


def precision_context(device: torch.device, cfg: TrainConfig) -> contextlib.ExitStack:
    """Autocast (bf16) and the attention-kernel choice of `cfg`, as one context manager."""
    stack = contextlib.ExitStack()
    if DTYPES[cfg.dtype] is not None:
        stack.enter_context(torch.autocast(device_type=device.type, dtype=DTYPES[cfg.dtype]))
    backend = cfg.attention_backend
    if backend == "auto":
        backend = "math" if device.type == "cpu" and cfg.dtype == "bf16" else None
    if backend is not None:
        from torch.nn.attention import SDPBackend, sdpa_kernel

        names = {
            "math": SDPBackend.MATH,
            "flash": SDPBackend.FLASH_ATTENTION,
            "efficient": SDPBackend.EFFICIENT_ATTENTION,
        }
        stack.enter_context(sdpa_kernel(names[backend]))
    return stack


def _progress(total: int, initial: int, enabled: bool):
    """A progress bar: a widget in a notebook with ipywidgets, else a text bar (one live line).

    When other processes already keep the CPUs busy, one line before the bar says so (the run
    is slower than the book's figures) and the bar's description shows the threads used.
    """
    if not enabled:
        return None
    thread_policy.check(force=True)
    busy = thread_policy.describe()
    if busy is not None:
        print(busy, flush=True)
    # always the text bar: a Jupyter widget bar (tqdm.auto, once ipywidgets is installed, as nbgrader installs it)
    # would make the built book load the widget manager from a CDN
    from tqdm.std import tqdm

    return tqdm(total=total, initial=initial, desc=_bar_label(), dynamic_ncols=True)


def _bar_label() -> str:
    """The bar's description: "train", with the thread count while the CPUs are shared."""
    if thread_policy.describe() is None:
        return "train"
    return f"train (CPUs shared: {torch.get_num_threads()} of {thread_policy.cpus} threads)"


def train(
    model: nn.Module,
    train_data: Any,
    val_data: Any,
    cfg: TrainConfig,
    *,
    objective: Objective | str | Callable = "clm",
    resume_from: str | Path | None = None,
    progress: bool = True,
    callback: Callable[[int, History], Any] | None = None,
    tokenizer: Any = None,
) -> History:
    """Train `model` on token ids `train_data`, evaluating on `val_data` (may be None).

    `objective`: "clm" (next token), "mlm" (from model.config.mask_token_id), an `Objective`
    such as `MaskedLM(...)`, or a function `(window, generator) -> (inputs, targets)`.
    `resume_from`: a checkpoint folder; the run continues from its step with identical results.
    `callback(step, history)` runs after every step; returning True stops training early.
    Ctrl-C stops cleanly: the last consistent state is saved to `cfg.out_dir` (if set) and the
    history so far is returned with `interrupted=True`.

    With `cfg.grad_accum_steps = k` each batch of `cfg.batch_size` rows is run as k micro-batches
    whose gradients (of loss / k) add up to the gradient of the whole batch's mean loss. Under an
    initialised process group (`torchrun`), each of the W ranks takes its own rows of every global
    batch and DistributedDataParallel averages the gradients, so the run computes what one process
    computes with `grad_accum_steps = W * k`; only rank 0 shows progress and writes checkpoints.
    """
    obj = resolve_objective(objective, model)
    device = get_device(cfg.device)
    window = obj.window_length(cfg.block_size)
    train_data = as_token_tensor(train_data, "train data")
    what = "block_size+1" if obj.extra_tokens == 1 else f"block_size+{obj.extra_tokens}"
    if len(train_data) < window:
        raise ValueError(f"train data has {len(train_data)} tokens, fewer than {what} = {window}")
    if val_data is not None:
        val_data = as_token_tensor(val_data, "val data")
        if len(val_data) < window:
            raise ValueError(f"val data has {len(val_data)} tokens, fewer than {what} = {window}")
    model_block = getattr(getattr(model, "config", None), "block_size", None)
    if model_block is not None and cfg.block_size > model_block:
        raise ValueError(f"block_size {cfg.block_size} exceeds the model's block_size {model_block}")
    check_fits(model, train_data, "train data", tokenizer)
    if val_data is not None:
        check_fits(model, val_data, "val data")
    obj.check_vocab(_vocab_size(model) or 2**62)

    from companion.training.distributed import micro_batches, process_group, wrap_ddp
    from companion.training.evaluation import evaluate

    rank, world_size = process_group()
    n_micro = world_size * cfg.grad_accum_steps
    if n_micro > 1:
        if obj.extra_tokens != 1:
            raise ValueError(
                f"gradient accumulation and data parallelism need a next-token objective, "
                f"got {obj.name!r}: the micro-batches of a masked LM hold different "
                "numbers of targets, so their mean losses do not add up to the batch's"
            )
        if cfg.batch_size % n_micro:
            raise ValueError(
                f"batch_size {cfg.batch_size} is not divisible by world_size {world_size} x "
                f"grad_accum_steps {cfg.grad_accum_steps} = {n_micro}: every micro-batch "
                "needs the same number of rows"
            )

    set_seed(cfg.seed)  # the same on every rank: the ranks draw the same global batches
    model.to(device).train()
    optimizer = make_optimizer(model, cfg, device)
    sampler = BlockSampler(train_data, cfg.batch_size, window, seed=cfg.seed)
    history, start = History(), 0
    if resume_from is not None:
        saved = (read_meta(resume_from).get("train_config") or {}).get("optimizer", "adamw")
        if saved != cfg.optimizer:
            raise ValueError(
                f"checkpoint {resume_from} was trained with optimizer {saved!r}; resume it "
                f"with optimizer={saved!r}, not {cfg.optimizer!r}"
            )
        meta = load_checkpoint(resume_from, model, optimizer)
        sampler.load_state_dict(meta["data_state"])
        set_rng_state(meta["rng"])
        history = History.from_dict(meta["history"] or {})
        history.interrupted = False
        start = int(meta["step"])
    ddp = wrap_ddp(model, device) if world_size > 1 else None
    run_model = ddp if ddp is not None else model
    run_model = torch.compile(run_model) if cfg.compile else run_model
    eval_model = model if world_size > 1 else run_model  # every rank evaluates its identical copy
    t_offset = history.wall_time[-1] if history.wall_time else 0.0
    t0 = time.perf_counter()

    def clock() -> float:
        return t_offset + time.perf_counter() - t0

    def run_eval(step: int) -> None:
        if val_data is None or (history.eval_step and history.eval_step[-1] == step):
            return
        loss = evaluate(eval_model, val_data, cfg, obj, device)
        history.eval_step.append(step)
        history.val_loss.append(loss)
        history.eval_wall_time.append(clock())

    def checkpoint(step: int, snap: tuple) -> None:
        if cfg.out_dir is not None and rank == 0:
            save_checkpoint(
                cfg.out_dir,
                model,
                optimizer,
                step=step,
                train_config=cfg.to_dict(),
                data_state=snap[0],
                rng=snap[1],
                history=history.to_dict(),
                extra={"objective": obj.name},
            )

    tokens = cfg.batch_size * cfg.block_size
    decay_steps = cfg.decay_steps if cfg.decay_steps is not None else cfg.steps
    bar = _progress(cfg.steps, start, progress and rank == 0)
    step, updating = start, False
    snap = (sampler.state_dict(), rng_state())  # state after `step` completed steps
    try:
        if start == 0:
            run_eval(0)
        while step < cfg.steps:
            thread_policy.check()  # fewer threads while other processes keep the CPUs busy
            t_step = time.perf_counter()
            lr = lr_at(step, lr=cfg.lr, min_lr=cfg.min_lr, warmup_steps=cfg.warmup_steps, decay_steps=decay_steps)
            set_lr(optimizer, lr)  # each group at lr * its lr_scale (Muon's matrices: muon_lr / lr)
            x, y = obj(sampler.next(), sampler.generator)  # (B, T) each: the global batch
            optimizer.zero_grad(set_to_none=True)
            loss_sum = None
            for xm, ym, no_sync in micro_batches(x, y, rank, world_size, cfg.grad_accum_steps, ddp):
                # xm, ym: (B / (W k), T), this rank's rows; `no_sync` holds back DDP's all-reduce
                # of the gradients until the last micro-batch
                with no_sync:
                    with precision_context(device, cfg):
                        loss = model_loss(run_model, xm.to(device, non_blocking=True), ym.to(device, non_blocking=True))
                    if cfg.grad_accum_steps > 1:
                        loss = loss / cfg.grad_accum_steps
                    loss.backward()  # adds to .grad; under DDP, averaged over the ranks at the last one
                loss_sum = loss.detach() if loss_sum is None else loss_sum + loss.detach()
            if world_size > 1:  # the mean loss over the global batch, for the history
                torch.distributed.all_reduce(loss_sum)
                loss_sum /= world_size
            loss_value = loss_sum.item()
            norm = clip_and_check(model.parameters(), cfg.grad_clip, loss_value, step, lr)
            updating = True  # from here until `updating = False` the state is not saveable
            optimizer.step()
            history.step.append(step + 1)
            history.train_loss.append(loss_value)
            history.lr.append(lr)
            history.grad_norm.append(float(norm))
            history.tokens_per_s.append(tokens / max(time.perf_counter() - t_step, 1e-9))
            history.wall_time.append(clock())
            snap = (sampler.state_dict(), rng_state())
            step += 1
            updating = False
            if (cfg.eval_interval and step % cfg.eval_interval == 0) or step == cfg.steps:
                run_eval(step)
            if cfg.ckpt_interval and step % cfg.ckpt_interval == 0:
                checkpoint(step, snap)
            if bar is not None and (step % cfg.log_interval == 0 or step == cfg.steps):
                post = {"loss": f"{loss_value:.4f}", "tok/s": f"{history.tokens_per_s[-1]:,.0f}"}
                if history.val_loss:
                    post["val"] = f"{history.val_loss[-1]:.4f}"
                bar.set_description(_bar_label(), refresh=False)
                bar.set_postfix(post, refresh=False)
                bar.update(step - bar.n)
            if callback is not None and callback(step, history):
                break
        run_eval(step)
        checkpoint(step, snap)
    except KeyboardInterrupt:
        history.interrupted = True
        if not updating:  # parameters are those after `step` steps: save them with their state
            checkpoint(step, snap)
    finally:
        if bar is not None:
            bar.close()
    model.eval()
    return history
