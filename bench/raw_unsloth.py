"""Reference (b): a minimal hand-written Unsloth + TRL script, the way the Unsloth notebooks do it.

    python bench/raw_unsloth.py MODEL DATA.jsonl OUT.json --seq 2048 --bs 2 --steps 16 --warmup 4
    python bench/raw_unsloth.py MODEL CHAT.jsonl OUT.json --chat --epochs 1   # Unsloth's defaults, one epoch
    python bench/raw_unsloth.py MODEL CHAT.jsonl OUT.json --chat --bs 2 --ga 4 --steps 12 --warmup 3
    python bench/raw_unsloth.py ... --backend hf    # transformers + PEFT + TRL: a dry run without a GPU

With --chat the rows are conversations (`messages`, or ShareGPT `conversations` mapped to roles as
the notebooks' standardize_sharegpt does), rendered with the tokenizer's chat template, trained on
responses only, and batched however Unsloth decides by default (auto padding-free).

Real tokens per micro-batch are counted as the model is called (a forward pre-hook summing the
attention mask on the device, read at the end: no sync), so that --steps can time a few steps of a large dataset: tokens/s is then measured over
the steps after --warmup, like slothctl's. Without --steps, one epoch (--epochs): all tokens over
the whole run.
"""

import argparse
import json
import time

p = argparse.ArgumentParser()
p.add_argument("model"), p.add_argument("data"), p.add_argument("out")
p.add_argument("--seq", type=int, default=2048)
p.add_argument("--bs", type=int, default=2)
p.add_argument("--ga", type=int, default=1, help="gradient accumulation steps")
p.add_argument("--steps", type=int, default=0, help="optimizer steps (0: one epoch with --chat, 16 without)")
p.add_argument("--warmup", type=int, default=4)
p.add_argument("--chat", action="store_true")
p.add_argument("--epochs", type=float, default=1.0)
p.add_argument("--backend", choices=("unsloth", "hf"), default="unsloth",
               help="hf: transformers + PEFT + TRL, for a dry run without a GPU")
args = p.parse_args()
steps = args.steps or (0 if args.chat else 16)

if args.backend == "unsloth":
    from unsloth import FastLanguageModel  # first, as the notebooks do
    from unsloth.chat_templates import train_on_responses_only

import torch  # noqa: E402
from datasets import load_dataset  # noqa: E402
from trl import SFTConfig, SFTTrainer  # noqa: E402

from _shared import StepTimer, steady_rate, step_profile  # noqa: E402

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
ROLES = {"human": "user", "gpt": "assistant", "system": "system", "user": "user", "assistant": "assistant"}
cuda = torch.cuda.is_available()

if args.backend == "unsloth":
    model, tokenizer = FastLanguageModel.from_pretrained(model_name=args.model, max_seq_length=args.seq,
                                                         dtype=None, load_in_4bit=False)
    model = FastLanguageModel.get_peft_model(
        model, r=16, lora_alpha=16, lora_dropout=0, bias="none", use_gradient_checkpointing="unsloth",
        target_modules=TARGETS, random_state=3407)
else:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.bfloat16 if cuda else torch.float32)
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=16, lora_dropout=0.0, bias="none",
                                             target_modules=TARGETS, task_type="CAUSAL_LM"))
dataset = load_dataset("json", data_files=args.data, split="train")
if args.chat:
    def render(row):
        turns = row.get("messages") or [{"role": ROLES[t["from"]], "content": t["value"]}
                                        for t in row["conversations"]]
        return {"text": tokenizer.apply_chat_template(turns, tokenize=False)}

    dataset = dataset.map(render, remove_columns=dataset.column_names)
trainer_class = SFTTrainer
if not cuda:  # the dry run: TRL's fused log-prob loss needs Triton; transformers' own loss instead
    from transformers import Trainer

    class trainer_class(SFTTrainer):  # noqa: N801
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            return Trainer.compute_loss(self, model, inputs, return_outputs=return_outputs,
                                        num_items_in_batch=num_items_in_batch)
timer = StepTimer()
trainer = trainer_class(
    model=model, processing_class=tokenizer, train_dataset=dataset, callbacks=[timer],
    args=SFTConfig(dataset_text_field="text", max_length=args.seq, per_device_train_batch_size=args.bs,
                   gradient_accumulation_steps=args.ga, warmup_steps=5, learning_rate=2e-4, logging_steps=1,
                   optim="adamw_8bit" if cuda else "adamw_torch", weight_decay=0.01, lr_scheduler_type="linear",
                   seed=3407, max_steps=steps or -1, num_train_epochs=args.epochs, bf16=cuda, use_cpu=not cuda,
                   output_dir="/tmp/raw_unsloth", report_to=[], save_strategy="no"))
if args.chat and args.backend == "unsloth":
    trainer = train_on_responses_only(trainer, instruction_part="<|im_start|>user\n",
                                      response_part="<|im_start|>assistant\n")

batch_tokens: list = []  # real tokens of each micro-batch (device tensors until the end: no sync)


def count_tokens(module, positional, kwargs):
    mask = kwargs.get("attention_mask")
    ids = kwargs.get("input_ids", positional[0] if positional else None)
    batch_tokens.append(mask.sum() if mask is not None else torch.tensor(ids.numel() if ids is not None else 0))


trainer.model.register_forward_pre_hook(count_tokens, with_kwargs=True)
if cuda:
    torch.cuda.reset_peak_memory_stats()
start = time.perf_counter()
output = trainer.train()
seconds = time.perf_counter() - start
batch_tokens = [int(t) for t in batch_tokens]
step_tokens = [sum(batch_tokens[i * args.ga:(i + 1) * args.ga]) for i in range(len(timer.marks))]
result = {"variant": "raw_unsloth", "backend": args.backend,
          "peak_vram_gb": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
          "padding_free": bool(getattr(trainer.args, "padding_free", False)),
          "train_loss": output.training_loss, "seconds": seconds, "steps": len(timer.marks),
          "batch_size": args.bs, "gradient_accumulation_steps": args.ga, "micro_batches_counted": len(batch_tokens)}
if len(batch_tokens) < len(timer.marks) * args.ga:
    raise SystemExit(f"counted {len(batch_tokens)} micro-batches for {len(timer.marks)} steps of {args.ga}")
result["tokens_per_s"] = (steady_rate(timer.marks, step_tokens, args.warmup) if steps
                          else sum(batch_tokens) / seconds)  # a whole epoch: all of it
result.update(step_profile([b - a for (_, a), (_, b) in zip(timer.marks, timer.marks[1:])]))
json.dump(result, open(args.out, "w"))
print(json.dumps(result))
