"""What both backends share: dtype and optimizer choice, TRL's SFTConfig, the trainer subclass,
and the datasets the trainer consumes."""

from __future__ import annotations

import math
from typing import Any

from slothctl.config import Config
from slothctl.data.encode import Encoded


FUSED_PROJECTIONS = {"qkv_proj": ("q_proj", "k_proj", "v_proj"), "gate_up_proj": ("gate_proj", "up_proj")}


def lora_targets(model, names: list[str]) -> list[str]:
    """[lora] target_modules as this architecture names its layers: Phi 3 fuses q/k/v into `qkv_proj`
    and gate/up into `gate_up_proj`, so the usual seven names would adapt only o_proj and down_proj
    (PEFT is silent when some names match). A fused layer replaces the separate names it holds."""
    present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    targets = list(names)
    for fused, parts in FUSED_PROJECTIONS.items():
        missing = [p for p in parts if p in targets and p not in present]
        if fused in present and missing and fused not in targets:
            targets = [t for t in targets if t not in missing] + [fused]
    return targets


def on_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX: bfloat16 matmuls run about twice as fast as float32 on such CPUs."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            flags = next((line for line in handle if line.startswith("flags")), "").split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def compute_dtype(cfg: Config):
    """`auto`: bfloat16 where the GPU supports it, float16 on older GPUs, float32 on CPU.

    On CPU the weights stay float32; `cpu_mixed_precision` decides whether to autocast to bf16.
    """
    import torch

    if not torch.cuda.is_available():
        return torch.float32
    if cfg.model.dtype != "auto":
        return getattr(torch, cfg.model.dtype)
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def cpu_mixed_precision(cfg: Config) -> bool:
    """bf16 autocast on CPU: with dtype = "bfloat16", or `auto` on a CPU with native bf16."""
    return cfg.model.dtype == "bfloat16" or (cfg.model.dtype == "auto" and cpu_has_native_bf16())


def optimizer_name(cfg: Config) -> str:
    if cfg.train.optim != "auto":
        return cfg.train.optim
    return "adamw_8bit" if on_cuda() else "adamw_torch"


def to_dataset(examples: list[Encoded]):
    """The tokenized rows as a `datasets.Dataset` with input_ids and labels: TRL then skips its own
    tokenization and trains on exactly these tokens and this mask."""
    from datasets import Dataset

    return Dataset.from_dict({"input_ids": [e.input_ids for e in examples],
                              "labels": [e.labels for e in examples]})


def planned_steps(cfg: Config, lengths: list[int], max_steps: int | None) -> int:
    """Optimizer steps of the run: max_steps, else epochs over the rows the trainer will see (with
    packing, the packed rows: counting the unpacked ones would train several epochs instead of one)."""
    steps = max_steps if max_steps is not None else cfg.train.max_steps
    if steps:
        return steps
    rows = packed_rows(lengths, cfg.model.max_seq_length) if cfg.train.packing else len(lengths)
    per_epoch = math.ceil(rows / (cfg.train.batch_size * cfg.train.gradient_accumulation_steps))
    return max(1, math.ceil(per_epoch * cfg.train.epochs))


def packed_rows(lengths: list[int], seq_length: int) -> int:
    """How many rows TRL's packing (best-fit decreasing, the SFTTrainer default) makes of rows of
    these lengths: TRL's own pack_dataset, run on placeholder tokens."""
    import numpy as np
    import pyarrow as pa
    from datasets import Dataset
    from trl.data_utils import pack_dataset

    offsets = np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)])
    ids = pa.LargeListArray.from_arrays(pa.array(offsets), pa.array(np.zeros(int(offsets[-1]), dtype=np.int32)))
    return len(pack_dataset(Dataset(pa.table({"input_ids": ids})), seq_length, "bfd"))


def varlen_attention_available() -> bool:
    """A variable-length attention kernel (FlashAttention) that makes padding-free batches cheap."""
    import importlib.util

    return on_cuda() and importlib.util.find_spec("flash_attn") is not None


def padding_fraction(lengths: list[int], batch_size: int) -> float:
    """Share of pad tokens when rows of similar length share batches (what length grouping achieves)."""
    ordered = sorted(lengths)
    padded = sum(max(chunk) * len(chunk) for chunk in
                 (ordered[i:i + batch_size] for i in range(0, len(ordered), batch_size)))
    return 1 - sum(ordered) / padded if padded else 0.0


def batching_strategy(cfg: Config, lengths: list[int] | None = None) -> str:
    """`auto` picks what measured fastest (bench/results, README "Speed"):

    - padding-free where a varlen attention kernel (FlashAttention) is installed;
    - padding-free when the rows are all (nearly) one length, e.g. long texts truncated to
      max_seq_length: there is nothing to pad, and it was 26% faster than padded batches
      (Qwen3-1.7B shape, H200);
    - otherwise padded batches of similar lengths: without a varlen kernel padding-free runs
      attention segment by segment and was 2.2x slower on chat data;
    - on CPU, plain padded batches in shuffled order.
    """
    if cfg.train.packing:
        return "packed"
    if cfg.train.batching != "auto":
        return cfg.train.batching
    if varlen_attention_available():
        return "padding_free"
    if not on_cuda():
        return "padded"  # measured on GPUs only; on CPU, the plain shuffled order
    if lengths and padding_fraction(lengths, cfg.train.batch_size) < 0.02:
        return "padding_free"
    return "length_grouped"


def batching_args(strategy: str) -> dict[str, Any]:
    """SFTConfig arguments of a strategy. padding_free is always explicit: Unsloth turns it on by
    itself when it is left unset."""
    return {
        "padded": {"padding_free": False, "packing": False},
        "length_grouped": {"padding_free": False, "packing": False, "train_sampling_strategy": "group_by_length"},
        "padding_free": {"padding_free": True, "packing": False},
        "packed": {"packing": True},
    }[strategy]


def sft_config(cfg: Config, output_dir: str, *, total_steps: int, has_eval: bool,
               lengths: list[int] | None = None, **extra: Any):
    """TRL arguments from the TOML: one place maps every [train] key to the trainer."""
    import torch
    from trl import SFTConfig

    t = cfg.train
    dtype = compute_dtype(cfg)
    evaluate = has_eval and not t.skip_eval
    eval_every = t.eval_steps or t.save_steps or max(1, total_steps // 10)
    warmup = t.warmup_ratio if t.warmup_ratio < 1 else total_steps
    args = dict(
        output_dir=output_dir,
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
        optim=optimizer_name(cfg),
        save_strategy="steps" if t.save_steps else "no",
        save_steps=t.save_steps or 500,
        save_total_limit=t.save_total_limit,
        eval_strategy="steps" if evaluate else "no",
        eval_steps=eval_every,
        logging_steps=t.logging_steps,
        logging_first_step=True,
        seed=t.seed,
        data_seed=t.seed,
        gradient_checkpointing=t.gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False} if t.gradient_checkpointing else None,
        bf16=dtype == torch.bfloat16 if on_cuda() else cpu_mixed_precision(cfg),
        fp16=dtype == torch.float16 and on_cuda(),
        use_cpu=not on_cuda(),
        report_to=[] if t.report_to == "none" else [t.report_to],
        max_length=cfg.model.max_seq_length,
        dataset_num_proc=None,
        disable_tqdm=True,
        dataloader_num_workers=0,
        remove_unused_columns=True,
    )
    args.update(batching_args(batching_strategy(cfg, lengths)))
    args.update(extra)
    return SFTConfig(**args)


def count_tokens(inputs: dict) -> int:
    """Real (non-pad) tokens in a batch: attention mask when padded, the flat length when padding-free."""
    if "attention_mask" in inputs:
        return int(inputs["attention_mask"].sum())
    if "position_ids" in inputs:
        return int(inputs["position_ids"].numel())
    return int(inputs["input_ids"].numel())


class LengthGroupedBatches:
    """A sampler whose batches hold rows of similar length, in random batch order.

    Rows are shuffled, cut into windows of 50 batches, sorted by length inside each window and cut
    into batches; then the batches are shuffled. (transformers' LengthGroupedSampler keeps each
    window in descending length, so the loss curve follows the lengths.) The order depends only on
    the seed and the epoch (`set_epoch`), so a resumed run sees the same batches.
    """

    WINDOW = 50

    def __init__(self, lengths: list[int], batch_size: int, seed: int):
        self.lengths, self.batch_size, self.seed, self.epoch = lengths, batch_size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def batches(self) -> list[list[int]]:
        import torch

        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(len(self.lengths), generator=generator).tolist()
        window = self.WINDOW * self.batch_size
        batches = []
        for start in range(0, len(order), window):
            rows = sorted(order[start:start + window], key=self.lengths.__getitem__, reverse=True)
            batches += [rows[i:i + self.batch_size] for i in range(0, len(rows), self.batch_size)]
        full, last = (batches[:-1], batches[-1:]) if len(batches[-1]) < self.batch_size else (batches, [])
        shuffled = [full[i] for i in torch.randperm(len(full), generator=generator).tolist()]
        return shuffled + last  # a short batch stays last, where the data loader expects it

    def __iter__(self):
        return iter([i for batch in self.batches() for i in batch])


def make_trainer_class(base: type, plain_loss: bool) -> type:
    """Subclass a (possibly Unsloth-patched) SFTTrainer to count tokens for tokens/s.

    `plain_loss` uses transformers' own loss instead of TRL's fused log-prob loss, which needs
    Triton and so fails on CPU.
    """
    from transformers import Trainer

    class SlothctlTrainer(base):
        tokens_seen = 0

        def _get_train_sampler(self, train_dataset=None):
            dataset = train_dataset if train_dataset is not None else self.train_dataset
            if self.args.train_sampling_strategy == "group_by_length" and dataset is not None:
                return LengthGroupedBatches([len(ids) for ids in dataset["input_ids"]],
                                            self.args.per_device_train_batch_size, self.args.seed)
            return super()._get_train_sampler(train_dataset)

        def training_step(self, model, inputs, num_items_in_batch=None):
            self.tokens_seen += count_tokens(inputs)
            return super().training_step(model, inputs, num_items_in_batch)

        if plain_loss:
            def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
                return Trainer.compute_loss(self, model, inputs, return_outputs=return_outputs,
                                            num_items_in_batch=num_items_in_batch)

    return SlothctlTrainer
