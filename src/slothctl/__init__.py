"""slothctl: LoRA/QLoRA fine-tuning of open LLMs from one TOML file and one command."""

__version__ = "0.1.0"
