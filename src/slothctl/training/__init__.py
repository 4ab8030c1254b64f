"""`slothctl train` and `slothctl resume`: from the config's sections to a trained adapter in the run folder.

    run.py          train(): plan → checks → setup_data / setup_model / setup_lora / setup_trainer → fit → finish
    plan.py         which run folder, start or resume (and from which checkpoint), already finished?
    checks.py       refusals before the model loads: unwritable folder, too little disk
    arguments.py    every [train] key → TRL's SFTConfig, the step count, batching, optimizer, early stopping
    batching.py     how rows share batches: packing and padding measured on the rows, the length-grouped sampler
    trainer.py      the SFTTrainer subclass both backends train with, and the datasets it gets
    checkpoints.py  what a checkpoint holds, how it is completed, when a run may continue from one
    callbacks.py    progress events and metrics.jsonl, run control (signals, early-stopping saves)
    trackers.py     TensorBoard and wandb ([train] report_to)
    signals.py      Ctrl-C / SIGTERM: the first stops cleanly, the second at once
    private.py      the private transformers/TRL/Unsloth hooks still used, each with its reason

Entry point: `slothctl.training.run.train`. The backend (slothctl/backends) loads the model and adds
LoRA; nothing here differs between CPU and GPU.
"""
