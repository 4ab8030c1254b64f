"""Reference (c): plain transformers + PEFT + TRL (sdpa attention), no Unsloth anywhere.

    python bench/raw_hf.py MODEL DATA.jsonl OUT.json --seq 2048 --bs 2 --steps 16 --warmup 4 [--plain-loss]

TRL 1.15's SFTTrainer computes the loss with a fused, chunked LM head (Triton) that never holds
the whole logits tensor. --plain-loss uses transformers' own loss instead (full logits, as
transformers + PEFT scripts before it did, and the only one that runs on CPU).
"""

import argparse
import json
import time

import torch
from datasets import load_dataset
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer
from trl import SFTConfig, SFTTrainer

from _shared import StepTimer, steady_rate

p = argparse.ArgumentParser()
p.add_argument("model"), p.add_argument("data"), p.add_argument("out")
p.add_argument("--seq", type=int, default=2048)
p.add_argument("--bs", type=int, default=2)
p.add_argument("--steps", type=int, default=16)
p.add_argument("--warmup", type=int, default=4)
p.add_argument("--plain-loss", action="store_true")
args = p.parse_args()

cuda = torch.cuda.is_available()
tokenizer = AutoTokenizer.from_pretrained(args.model)
model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.bfloat16 if cuda else torch.float32,
                                             attn_implementation="sdpa", device_map={"": 0} if cuda else None)
model = get_peft_model(model, LoraConfig(
    r=16, lora_alpha=16, lora_dropout=0.0, bias="none", task_type="CAUSAL_LM",
    target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]))
model.enable_input_require_grads()


class PlainLossTrainer(SFTTrainer):
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        return Trainer.compute_loss(self, model, inputs, return_outputs=return_outputs,
                                    num_items_in_batch=num_items_in_batch)


timer = StepTimer()
trainer = (PlainLossTrainer if args.plain_loss or not cuda else SFTTrainer)(
    model=model, processing_class=tokenizer, train_dataset=load_dataset("json", data_files=args.data, split="train"),
    callbacks=[timer],
    args=SFTConfig(dataset_text_field="text", max_length=args.seq, per_device_train_batch_size=args.bs,
                   gradient_accumulation_steps=1, warmup_steps=5, learning_rate=2e-4, logging_steps=1,
                   optim="adamw_8bit" if cuda else "adamw_torch", bf16=cuda, use_cpu=not cuda,
                   gradient_checkpointing=True, gradient_checkpointing_kwargs={"use_reentrant": False},
                   max_steps=args.steps, output_dir="/tmp/raw_hf", report_to=[], save_strategy="no"))
if cuda:
    torch.cuda.reset_peak_memory_stats()
start = time.perf_counter()
output = trainer.train()
result = {"variant": "raw_hf_plain_loss" if args.plain_loss else "raw_hf", "seconds": time.perf_counter() - start,
          "train_loss": output.training_loss,
          "peak_vram_gb": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
          "tokens_per_s": steady_rate(timer.marks, [args.bs * args.seq] * len(timer.marks), args.warmup)}
json.dump(result, open(args.out, "w"))
print(json.dumps(result))
