"""Reference (f): a hand-written Unsloth training loop, no TRL and no transformers Trainer.

    python bench/raw_loop.py MODEL DATA.jsonl OUT.json --seq 2048 --bs 4 --steps 14 --warmup 4 [--ga 1]
    python bench/raw_loop.py MODEL DATA.jsonl OUT.json --backend hf ...   # transformers + PEFT (CPU dry run)

What a careful user writes by hand: FastLanguageModel + get_peft_model (LoRA r16 on all linear
layers, Unsloth's gradient checkpointing), then a plain torch loop that does what slothctl's trainer
does per optimizer step and nothing else: the same optimizer (8-bit AdamW from bitsandbytes, weight
decay 0.01), the same schedule (cosine after 6% warmup, transformers' get_scheduler), gradient
accumulation with the loss summed over the window's tokens, clipping at norm 1.0, bf16 autocast.
Rows are texts truncated to --seq tokens (fixed-length batches, no attention mask). Losses and step
times stay on the GPU (CUDA events) until the end: the loop never waits for the GPU.

`_shared.STEP_HOOKS` are called around each optimizer step, so bench/profile_steps.py can profile
this loop like the Trainer-based scripts.
"""

import argparse
import json
import math
import time

p = argparse.ArgumentParser()
p.add_argument("model"), p.add_argument("data"), p.add_argument("out")
p.add_argument("--seq", type=int, default=2048)
p.add_argument("--bs", type=int, default=2)
p.add_argument("--ga", type=int, default=1, help="gradient accumulation steps")
p.add_argument("--steps", type=int, default=14)
p.add_argument("--warmup", type=int, default=4, help="steps left out of tokens/s (compilation, allocator)")
p.add_argument("--lr", type=float, default=2e-4)
p.add_argument("--backend", choices=("unsloth", "hf"), default="unsloth",
               help="hf: transformers + PEFT, for a dry run without a GPU")
args = p.parse_args()

if args.backend == "unsloth":
    from unsloth import FastLanguageModel  # first, as the notebooks do

import torch  # noqa: E402
from transformers import AutoTokenizer, get_scheduler  # noqa: E402

from _shared import STEP_HOOKS  # noqa: E402

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
cuda = torch.cuda.is_available()
device = torch.device("cuda" if cuda else "cpu")
torch.manual_seed(3407)

if args.backend == "unsloth":
    model, tokenizer = FastLanguageModel.from_pretrained(model_name=args.model, max_seq_length=args.seq,
                                                         dtype=None, load_in_4bit=False)
    model = FastLanguageModel.get_peft_model(model, r=16, lora_alpha=16, lora_dropout=0, bias="none",
                                             target_modules=TARGETS, use_gradient_checkpointing="unsloth",
                                             random_state=3407, max_seq_length=args.seq)
else:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.bfloat16 if cuda else torch.float32,
                                                 device_map={"": 0} if cuda else None)
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=16, lora_dropout=0.0, bias="none",
                                             target_modules=TARGETS, task_type="CAUSAL_LM"))
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.enable_input_require_grads()
if args.backend == "unsloth":
    FastLanguageModel.for_training(model)  # what the Trainer's wrapper does before train()
else:
    model.train()

# Every row truncated to --seq tokens: one (rows, seq) tensor, pinned so copies to the GPU are asynchronous.
micro_batches = args.steps * args.ga
texts = [json.loads(line)["text"] for line in open(args.data)][: micro_batches * args.bs]
ids = tokenizer(texts, truncation=True, max_length=args.seq, add_special_tokens=True)["input_ids"]
short = [len(row) for row in ids if len(row) < args.seq]
if short or len(ids) < micro_batches * args.bs:
    raise SystemExit(f"need {micro_batches * args.bs} rows of at least {args.seq} tokens "
                     f"({len(ids)} rows, {len(short)} shorter)")
rows = torch.tensor(ids, dtype=torch.long)
rows = rows.pin_memory() if cuda else rows

trainable = [param for param in model.parameters() if param.requires_grad]
if cuda:
    from bitsandbytes.optim import AdamW8bit

    optimizer = AdamW8bit(trainable, lr=args.lr, weight_decay=0.01)  # the Trainer's optim="adamw_8bit"
else:
    optimizer = torch.optim.AdamW(trainable, lr=args.lr, weight_decay=0.01)  # slothctl's CPU default
scheduler = get_scheduler("cosine", optimizer, num_warmup_steps=math.ceil(0.06 * args.steps),
                          num_training_steps=args.steps)
autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda)

if cuda:
    torch.cuda.reset_peak_memory_stats()
    step_ends = [torch.cuda.Event(enable_timing=True) for _ in range(args.steps)]
wall = []  # CPU only: step ends as the CPU sees them
losses = []  # per optimizer step, on the device until the end
grad_norms = []
start = time.perf_counter()
for step in range(args.steps):
    for hook in STEP_HOOKS:
        hook.on_step_begin(step)
    window = [rows[(step * args.ga + i) * args.bs:(step * args.ga + i + 1) * args.bs].to(device, non_blocking=True)
              for i in range(args.ga)]
    items = sum((batch[:, 1:] != -100).sum() for batch in window)  # tokens the window trains on, on the device
    step_loss = torch.zeros((), device=device)
    for batch in window:
        with autocast:
            loss = model(input_ids=batch, labels=batch, num_items_in_batch=items).loss
        loss.backward()
        step_loss += loss.detach()
    grad_norms.append(torch.nn.utils.clip_grad_norm_(trainable, 1.0))
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    losses.append(step_loss)
    if cuda:
        step_ends[step].record()
    wall.append(time.perf_counter())
    for hook in STEP_HOOKS:
        hook.on_step_end(step + 1)
if cuda:
    torch.cuda.synchronize()
seconds = time.perf_counter() - start

tokens_per_step = args.bs * args.seq * args.ga
if cuda:
    timed = step_ends[args.warmup - 1].elapsed_time(step_ends[-1]) / 1e3
else:
    timed = wall[-1] - wall[args.warmup - 1]
step_losses = torch.stack(losses).tolist()
result = {"variant": "raw_loop", "backend": args.backend, "seconds": seconds,
          "tokens_per_s": tokens_per_step * (args.steps - args.warmup) / timed,
          "peak_vram_gb": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
          "train_loss": sum(step_losses) / len(step_losses), "losses": step_losses,
          "grad_norms": torch.stack(grad_norms).tolist()}
json.dump(result, open(args.out, "w"))
print(json.dumps({k: v for k, v in result.items() if k not in ("losses", "grad_norms")}))
