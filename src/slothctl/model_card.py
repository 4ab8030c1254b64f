"""The model card (README.md) that `slothctl push` writes: Hub metadata, how the model was trained,
its results, its chat template and how to use it.

Everything comes from the run folder (config.toml, summary.json, the adapter's slothctl_adapter.json
and chat template), so the card describes the files next to it, not the project file as it is now.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slothctl import models
from slothctl.config import Config
from slothctl.runs import adapter_info

LIBRARY = {"adapter": "peft", "merged": "transformers", "gguf": "gguf"}
RELATION = {"adapter": "adapter", "merged": "finetune", "gguf": "finetune"}
DATA_SUFFIXES = {".jsonl", ".json", ".csv", ".parquet", ".txt", ".arrow"}


@dataclass
class BaseModel:
    """The model that was fine-tuned, as the Hub knows it (`hub_id`), with what is known about it."""

    name: str  # as written in [model] name
    hub_id: str | None = None
    license: str | None = None
    note: str = ""


@dataclass
class RunInfo:
    """What a run folder records about how an artifact was made (any part may be missing)."""

    config: Config | None = None
    summary: dict = field(default_factory=dict)
    adapter: dict = field(default_factory=dict)
    chat_template: str | None = None


def _front_matter(readme: Path) -> dict:
    if not readme.is_file():
        return {}
    from huggingface_hub import metadata_load

    try:
        return metadata_load(readme) or {}
    except Exception:  # noqa: BLE001 - a malformed card only means we know less
        return {}


def describe_base(name: str, project_dir: Path | None = None, lookup: bool = False) -> BaseModel:
    """The Hub id and license of a base model: from slothctl's registry for embedded models, the
    folder's own card for local folders, and (with `lookup`) the Hub for hub ids."""
    if models.is_embedded(name):
        spec = models.EMBEDDED.get(name[len(models.EMBEDDED_PREFIX):])
        if spec is None:
            return BaseModel(name)
        note = (f"slothctl's bundled `{name}`: {spec.description}. Its weights are de-quantized from the "
                f"package's `{spec.gguf_file}`, so they differ slightly from `{spec.origin}`.")
        return BaseModel(name, spec.origin or None, spec.license or None, note)
    path = Path(name).expanduser()
    if not path.is_absolute() and project_dir is not None:
        path = project_dir / path
    if path.is_dir():
        meta = _front_matter(path / "README.md")
        origin = meta.get("base_model")
        return BaseModel(name, origin if isinstance(origin, str) else None, meta.get("license"),
                         f"a local model folder (`{path.name}`)")
    if models.HUB_ID.match(name):
        return BaseModel(name, name, _hub_license(name) if lookup else None)
    return BaseModel(name)


def _hub_license(repo_id: str) -> str | None:
    """Best effort: the license on the base model's Hub card (None offline or on any error)."""
    from huggingface_hub import constants, model_info

    if constants.is_offline_mode():
        return None
    try:
        data = model_info(repo_id, timeout=10).card_data
    except Exception:  # noqa: BLE001 - no network, private, gated: the card just says less
        return None
    return getattr(data, "license", None) if data else None


def read_run(run_root: Path | None, folder: Path) -> RunInfo:
    """The run's config and summary, and the adapter's record and chat template."""
    info = RunInfo()
    if run_root is not None:
        if (run_root / "config.toml").is_file():
            from slothctl import config as config_mod

            info.config = config_mod.load(run_root / "config.toml")
        if (run_root / "summary.json").is_file():
            info.summary = json.loads((run_root / "summary.json").read_text(encoding="utf-8"))
    for place in [folder] + ([run_root / "adapter"] if run_root is not None else []):
        if not info.adapter:
            info.adapter = adapter_info(place)
        if info.chat_template is None:
            info.chat_template = _chat_template(place)
    return info


def _chat_template(folder: Path) -> str | None:
    if (folder / "chat_template.jinja").is_file():
        return (folder / "chat_template.jinja").read_text(encoding="utf-8")
    config = folder / "tokenizer_config.json"
    if config.is_file():
        template = json.loads(config.read_text(encoding="utf-8")).get("chat_template")
        return template if isinstance(template, str) else None
    return None


def _is_hub_dataset(source: str, project_dir: Path) -> bool:
    """`org/name` that is not a local file or folder of the project (those are not on the Hub)."""
    local = Path(source).expanduser()
    if local.suffix.lower() in DATA_SUFFIXES or (project_dir / local).exists():
        return False
    return bool(models.HUB_ID.match(source))


def metadata(what: str, base: BaseModel, run: RunInfo, project_dir: Path) -> dict[str, Any]:
    """The card's YAML metadata, as the Hub reads it. Relative paths in the run's config are relative to
    the project folder (`project_dir`), not to the run folder that stores the config."""
    cfg = run.config
    tags = ["slothctl", "text-generation", "sft", "trl"]
    tags += ["lora", "peft"] if what == "adapter" else (["gguf", "llama.cpp"] if what == "gguf" else ["lora"])
    if run.summary.get("backend") == "unsloth" or run.adapter.get("backend") == "unsloth":
        tags.append("unsloth")
    data: dict[str, Any] = {"library_name": LIBRARY[what], "pipeline_tag": "text-generation", "tags": tags}
    if base.hub_id:
        data["base_model"] = base.hub_id
        data["base_model_relation"] = RELATION[what]
    if base.license:
        data["license"] = base.license
    if cfg is not None and _is_hub_dataset(cfg.data.source, project_dir):
        data["datasets"] = [cfg.data.source]
    return data


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def _training_rows(run: RunInfo) -> list[tuple[str, str]]:
    cfg, summary = run.config, run.summary
    rows: list[tuple[str, str]] = []
    if cfg is not None:
        lora, train, data = cfg.lora, cfg.train, cfg.data
        quant = "4-bit (QLoRA)" if cfg.model.load_in_4bit else ("8-bit" if cfg.model.load_in_8bit else "none")
        rows += [
            ("method", f"LoRA r={lora.r}, alpha={lora.alpha}, dropout={lora.dropout}"
                       + (", rsLoRA" if lora.use_rslora else "")),
            ("target modules", ", ".join(lora.target_modules)),
            ("base model quantization", quant),
            ("data", f"`{data.source}` ("
                     + (f"{summary['data']['train_rows']} training rows, " if "train_rows" in summary.get("data", {})
                        else "") + f"format {run.adapter.get('format') or data.format})"),
            ("loss on", "assistant replies only" if data.train_on_responses_only else "whole conversations"),
            ("max sequence length", str(cfg.model.max_seq_length)),
            ("batch", f"{train.batch_size} x {train.gradient_accumulation_steps} gradient accumulation"),
            ("learning rate", f"{train.learning_rate:g}, {train.lr_scheduler} schedule, "
                              f"warmup ratio {train.warmup_ratio:g}"),
            ("optimizer", f"{train.optim}, weight decay {train.weight_decay:g}"),
            ("seed", str(train.seed)),
        ]
    if summary:
        rows.append(("backend", f"{summary.get('backend', '-')} on {summary.get('device', '-')}"))
    return rows


def _results_rows(summary: dict) -> list[tuple[str, str]]:
    if not summary:
        return []
    tokens_per_s = summary.get("tokens_per_s")
    return [
        ("final train loss", _fmt(summary.get("final_loss"))),
        ("first train loss", _fmt(summary.get("first_loss"))),
        ("eval loss", _fmt(summary.get("eval_loss"))),
        ("steps", _fmt(summary.get("steps"))),
        ("training tokens/s", f"{tokens_per_s:,.0f}" if isinstance(tokens_per_s, (int, float)) else "-"),
        ("training time", f"{summary['train_seconds']:.0f} s" if "train_seconds" in summary else "-"),
    ]


def _table(rows: list[tuple[str, str]]) -> str:
    return "\n".join(["| | |", "|---|---|"] + [f"| {k} | {v.replace('|', '/')} |" for k, v in rows])


def _usage(what: str, repo_id: str, base: BaseModel, gguf_files: list[str]) -> str:
    if what == "adapter":
        base_id = base.hub_id or "<the base model>"
        return f"""With PEFT (the adapter's config names the base model):

```python
from peft import AutoPeftModelForCausalLM
from transformers import AutoTokenizer

model = AutoPeftModelForCausalLM.from_pretrained("{repo_id}")
tokenizer = AutoTokenizer.from_pretrained("{repo_id}")  # carries the chat template used in training
messages = [{{"role": "user", "content": "Hello!"}}]
inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
print(tokenizer.decode(model.generate(**inputs, max_new_tokens=128)[0][inputs["input_ids"].shape[1]:],
                       skip_special_tokens=True))
```

Or on top of an already loaded `{base_id}`: `PeftModel.from_pretrained(base, "{repo_id}")`;
`model.merge_and_unload()` folds the adapter into the weights."""
    if what == "merged":
        return f"""With transformers:

```python
from transformers import pipeline

chat = pipeline("text-generation", model="{repo_id}")
print(chat([{{"role": "user", "content": "Hello!"}}], max_new_tokens=128)[0]["generated_text"][-1]["content"])
```"""
    first = gguf_files[0] if gguf_files else "model.gguf"
    return f"""With llama.cpp:

```bash
llama-cli -hf {repo_id} -p "Hello!"
```

With llama-cpp-python:

```python
from llama_cpp import Llama

llm = Llama.from_pretrained(repo_id="{repo_id}", filename="{first}")
print(llm.create_chat_completion([{{"role": "user", "content": "Hello!"}}])["choices"][0]["message"]["content"])
```

With Ollama: `ollama run hf.co/{repo_id}`."""


def render_card(what: str, repo_id: str, base: BaseModel, run: RunInfo, files: list[str], project_dir: Path) -> str:
    """The whole README.md: YAML metadata, then the description."""
    from huggingface_hub import ModelCardData

    meta = metadata(what, base, run, project_dir)
    yaml = ModelCardData(**meta).to_yaml()
    kind = {"adapter": "A LoRA adapter", "merged": "A LoRA fine-tune, merged into full weights,",
            "gguf": "GGUF files of a LoRA fine-tune"}[what]
    on = f"[{base.hub_id}](https://huggingface.co/{base.hub_id})" if base.hub_id else f"`{base.name}`"
    parts = [f"---\n{yaml}\n---\n", f"# {repo_id.split('/')[-1]}\n",
             f"{kind} for {on}, trained with slothctl "
             f"(LoRA fine-tuning with TRL{' and Unsloth' if 'unsloth' in meta['tags'] else ''}).\n"]
    if base.note:
        parts.append(f"Base model: {base.note}\n")
    training = _training_rows(run)
    if training:
        parts.append("## Training\n\n" + _table(training) + "\n")
    results = _results_rows(run.summary)
    if results:
        parts.append("## Results\n\n" + _table(results) + "\n")
    if run.chat_template:
        name = run.adapter.get("chat_template")
        label = f" (`{name}`)" if name and name != "tokenizer" else " (the base model's own)" if name else ""
        parts.append(f"## Chat template\n\nConversations were rendered with this template{label}; use it for "
                     f"prompts too.\n\n```jinja\n{run.chat_template.strip()}\n```\n")
    parts.append("## Usage\n\n" + _usage(what, repo_id, base, [f for f in files if f.endswith(".gguf")]) + "\n")
    versions = run.summary.get("versions") or {}
    if versions:
        parts.append("## Framework versions\n\n" + "\n".join(f"- {k} {v}" for k, v in versions.items()) + "\n")
    return "\n".join(parts)
