"""[train], key by key: where each key of the TOML's training section goes. Every key is read here
(tests/test_training_layout.py checks it), mostly into TRL's SFTConfig:

    batch_size, gradient_accumulation_steps, learning_rate, lr_scheduler,
    warmup_ratio, weight_decay, max_grad_norm, eval_steps, skip_eval,
    logging_steps, gradient_checkpointing, seed           → sft_config
    max_steps, epochs                                      → planned_steps (with packing: over packed rows)
    packing, batching                                      → batching_choice → sft_config (and the
                                                             status line and start event that say why)
    optim                                                  → optimizer_name → sft_config (also the
                                                             dry run's and doctor's plans)
    save_steps                                             → sft_config; early stopping saves where it stops
    save_total_limit                                       → keep_checkpoints (checkpoints.py rotates)
    early_stopping_patience                                → early_stopping (transformers' callback)
    report_to                                              → tracker (trackers.py)
    gpus                                                   → launcher.ranks_wanted (the number of ranks);
                                                             planned_steps and sft_config read the ranks
    seed, gradient_checkpointing                           → also LoRA and model loading (lora_options,
                                                             backends.LoadOptions)
    micro_batch, max_vram_fraction                         → micro_batch_request → layout.py, which sets
                                                             batch_size, accumulation and checkpointing
                                                             of the run (Layout.applied) before all else
"""

from __future__ import annotations

import math
from typing import Any, Sequence

from slothctl.backends.device import compute_dtype, cpu_mixed_precision, on_cuda
from slothctl.config import ModelConfig, TrainConfig
from slothctl.training.batching import Choice, fastest, packed_rows
from slothctl.training.ranks import distributed


def optimizer_name(train: TrainConfig, cuda: bool | None = None) -> str:
    """`auto`: torch's fused AdamW on CUDA, AdamW on CPU; `cuda` says for which (None: this machine).

    Fused rather than the notebooks' 8-bit AdamW (bitsandbytes): that one launches its kernels weight
    by weight, ~400 launches a step for LoRA on every linear layer, and the steps of a 1.7B model on an
    H200 wait for the CPU to launch them. With one fused update (and rows of one length in padded
    batches, batching.py) slothctl ran 1.22x as fast on the Qwen3-1.7B shape and 1.06x on Llama-3-8B's
    (README "Speed"). Its float32 moments take 6 bytes more per LoRA weight (0.1 GiB for Qwen3-1.7B
    at rank 16), which the memory plan counts; `optim = "adamw_8bit"` saves them."""
    if train.optim != "auto":
        return train.optim
    return "adamw_torch_fused" if (on_cuda() if cuda is None else cuda) else "adamw_torch"


def planned_steps(train: TrainConfig, lengths: Sequence[int], seq_length: int, ranks: int = 1) -> int:
    """Optimizer steps of the run: max_steps, else epochs over the rows the trainer will see (with
    packing, the packed rows: counting the unpacked ones would train several epochs instead of one),
    in global batches (each of the `ranks` trains its own share of a step's rows)."""
    if train.max_steps:
        return train.max_steps
    rows = packed_rows(lengths, seq_length) if train.packing else len(lengths)
    per_epoch = math.ceil(rows / (train.batch_size * train.gradient_accumulation_steps * ranks))
    return max(1, math.ceil(per_epoch * train.epochs))


def batching_choice(train: TrainConfig, lengths: Sequence[int] | None = None, cuda: bool | None = None) -> Choice:
    """packing wins; else [train] batching, where `auto` is what measured fastest on the batches the
    sampler will form (batching.fastest), for a CUDA or CPU run (`cuda`; None: this machine). The
    reason is what `train` reports."""
    if train.packing:
        return Choice("packed", "[train] packing = true: rows packed into full sequences")
    if train.batching != "auto":
        return Choice(train.batching, f"[train] batching = \"{train.batching}\"")
    return fastest(lengths, train.batch_size, train.seed, cuda)


def gpus_requested(train: TrainConfig) -> int | str:
    """[train] gpus: how many ranks launcher.py starts (an integer, or "auto": every visible GPU)."""
    return train.gpus


def micro_batch_request(train: TrainConfig) -> tuple[int | str, float]:
    """What layout.choose_layout decides from: `micro_batch` ("auto" or rows) and the VRAM share "auto" plans for."""
    return train.micro_batch, train.max_vram_fraction


def batching_args(strategy: str) -> dict[str, Any]:
    """SFTConfig arguments of a strategy. padding_free is always explicit: Unsloth turns it on by
    itself when it is left unset."""
    return {
        "padded": {"padding_free": False, "packing": False},
        "length_grouped": {"padding_free": False, "packing": False, "train_sampling_strategy": "group_by_length"},
        "padding_free": {"padding_free": True, "packing": False},
        "packed": {"packing": True},
    }[strategy]


def evaluates(train: TrainConfig, has_eval: bool) -> bool:
    return has_eval and not train.skip_eval


def early_stopping(train: TrainConfig, has_eval: bool) -> int:
    """Patience of early stopping in evaluations; 0 when it is off (or nothing is evaluated)."""
    return train.early_stopping_patience if evaluates(train, has_eval) else 0


def save_on_early_stop(train: TrainConfig) -> bool:
    """Early stopping ends the run with a checkpoint when checkpoints are written at all."""
    return train.save_steps > 0


def keep_checkpoints(train: TrainConfig) -> int:
    """How many complete checkpoints stay; checkpoints.completion deletes older ones once a new one counts."""
    return train.save_total_limit


def tracker(train: TrainConfig) -> str:
    return train.report_to


def lora_options(train: TrainConfig) -> dict[str, Any]:
    """What adding LoRA takes from [train]: LoRA's A matrices are initialised from the seed; with
    gradient checkpointing the inputs must require gradients (or Unsloth sets up its own)."""
    return {"seed": train.seed, "gradient_checkpointing": train.gradient_checkpointing}


def sft_config(train: TrainConfig, model: ModelConfig, *, output_dir: str, run_name: str, total_steps: int,
               has_eval: bool, optim: str, batching: Choice, overrides: dict[str, Any] | None = None):
    """TRL's SFTConfig from [train] (and [model] dtype and max_seq_length); `overrides` are the backend's."""
    import torch
    from trl import SFTConfig

    t = train
    dtype = compute_dtype(model)
    eval_every = t.eval_steps or t.save_steps or max(1, total_steps // 10)
    warmup = t.warmup_ratio if t.warmup_ratio < 1 else total_steps
    args = dict(
        output_dir=output_dir,
        run_name=run_name,
        per_device_train_batch_size=t.batch_size,
        per_device_eval_batch_size=t.batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        learning_rate=t.learning_rate,
        lr_scheduler_type=t.lr_scheduler,
        warmup_steps=warmup,
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
        max_steps=total_steps,
        num_train_epochs=t.epochs,
        optim=optim,  # optimizer_name, or the one a resumed run started with
        save_strategy="steps" if t.save_steps else "no",
        save_steps=t.save_steps or 500,
        save_total_limit=None,  # keep_checkpoints: checkpoints.completion rotates, after the marker
        eval_strategy="steps" if evaluates(t, has_eval) else "no",
        eval_steps=eval_every,
        logging_steps=t.logging_steps,
        logging_first_step=True,
        logging_nan_inf_filter=False,  # a host sync per micro-step, to hide a NaN loss (trainer.py)
        seed=t.seed,
        data_seed=t.seed,
        gradient_checkpointing=t.gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False} if t.gradient_checkpointing else None,
        bf16=dtype == torch.bfloat16 if on_cuda() else cpu_mixed_precision(model),
        fp16=dtype == torch.float16 and on_cuda(),
        use_cpu=not on_cuda(),
        report_to=["wandb"] if tracker(t) == "wandb" else [],  # wandb through transformers; TensorBoard is ours
        max_length=model.max_seq_length,
        dataset_num_proc=None,
        disable_tqdm=True,
        dataloader_num_workers=0,
        remove_unused_columns=True,
    )
    if early_stopping(t, has_eval):
        args.update(metric_for_best_model="eval_loss", greater_is_better=False)
    if distributed():
        args["ddp_find_unused_parameters"] = False  # every LoRA weight gets a gradient (as Unsloth's CLI sets)
    args.update(batching_args(batching.strategy))
    args.update(overrides or {})
    return SFTConfig(**args)
