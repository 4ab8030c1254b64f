"""Reference (b): a minimal hand-written Unsloth + TRL script, the way the Unsloth notebooks do it.

    python bench/raw_unsloth.py MODEL DATA.jsonl OUT.json --seq 2048 --bs 2 --steps 16 --warmup 4
    python bench/raw_unsloth.py MODEL CHAT.jsonl OUT.json --chat --epochs 1   # Unsloth's defaults

With --chat the rows are conversations, rendered with the tokenizer's chat template, trained on
responses only, and batched however Unsloth decides by default (auto padding-free).
"""

import argparse
import json
import time

from unsloth import FastLanguageModel  # first, as the notebooks do
from unsloth.chat_templates import train_on_responses_only

import torch
from datasets import load_dataset
from trl import SFTConfig, SFTTrainer

from _shared import StepTimer, steady_rate, step_profile

p = argparse.ArgumentParser()
p.add_argument("model"), p.add_argument("data"), p.add_argument("out")
p.add_argument("--seq", type=int, default=2048)
p.add_argument("--bs", type=int, default=2)
p.add_argument("--steps", type=int, default=16)
p.add_argument("--warmup", type=int, default=4)
p.add_argument("--chat", action="store_true")
p.add_argument("--epochs", type=float, default=1.0)
args = p.parse_args()

model, tokenizer = FastLanguageModel.from_pretrained(model_name=args.model, max_seq_length=args.seq,
                                                     dtype=None, load_in_4bit=False)
model = FastLanguageModel.get_peft_model(
    model, r=16, lora_alpha=16, lora_dropout=0, bias="none", use_gradient_checkpointing="unsloth",
    target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    random_state=3407)
dataset = load_dataset("json", data_files=args.data, split="train")
if args.chat:
    dataset = dataset.map(lambda row: {"text": tokenizer.apply_chat_template(row["messages"], tokenize=False)})
timer = StepTimer()
trainer = SFTTrainer(
    model=model, processing_class=tokenizer, train_dataset=dataset, callbacks=[timer],
    args=SFTConfig(dataset_text_field="text", max_length=args.seq, per_device_train_batch_size=args.bs,
                   gradient_accumulation_steps=1, warmup_steps=5, learning_rate=2e-4, logging_steps=1,
                   optim="adamw_8bit", weight_decay=0.01, lr_scheduler_type="linear", seed=3407,
                   max_steps=-1 if args.chat else args.steps, num_train_epochs=args.epochs,
                   output_dir="/tmp/raw_unsloth", report_to=[], save_strategy="no"))
if args.chat:
    trainer = train_on_responses_only(trainer, instruction_part="<|im_start|>user\n",
                                      response_part="<|im_start|>assistant\n")
lengths = [len(ids) for ids in trainer.train_dataset["input_ids"]]
torch.cuda.reset_peak_memory_stats()
start = time.perf_counter()
output = trainer.train()
seconds = time.perf_counter() - start
result = {"variant": "raw_unsloth", "peak_vram_gb": torch.cuda.max_memory_allocated() / 2**30,
          "padding_free": bool(getattr(trainer.args, "padding_free", False)),
          "train_loss": output.training_loss, "seconds": seconds}
if args.chat:
    result["tokens_per_s"] = sum(lengths) * args.epochs / seconds
    result.update(step_profile([b - a for (_, a), (_, b) in zip(timer.marks, timer.marks[1:])]))
else:
    result["tokens_per_s"] = steady_rate(timer.marks, [args.bs * args.seq] * len(timer.marks), args.warmup)
json.dump(result, open(args.out, "w"))
print(json.dumps(result))
