"""`slothctl train` and `slothctl resume`: from the config's sections to a trained adapter in the run folder.

    run.py          train(): plan → checks → setup_data / setup_model / setup_lora / setup_trainer → fit → finish
    plan.py         which run folder, start or resume (and from which checkpoint), already finished?
    checks.py       refusals before the model loads: unwritable folder, too little disk
    arguments.py    every [train] key → TRL's SFTConfig, the step count, batching, optimizer, early stopping
    batching.py     how rows share batches: packing and padding measured on the rows, the length-grouped sampler
    layout.py       micro-batch, accumulation and checkpointing of the run (micro_batch "auto": the memory
                    estimate's choice), recorded in checkpoints
    out_of_memory.py  CUDA out of memory: halve the micro-batch and go on (auto), else exit 1 with the changes
    preview.py      `train --dry-run`: the layout and the memory and time estimate, before anything loads
    trainer.py      the SFTTrainer subclass both backends train with, and the datasets it gets
    checkpoints.py  what a checkpoint holds, how it is completed, when a run may continue from one
    callbacks.py    progress events and metrics.jsonl, run control (signals, early-stopping saves)
    trackers.py     TensorBoard and wandb ([train] report_to)
    private.py      the private transformers/TRL/Unsloth hooks still used, each with its reason

Entry point: `slothctl.training.run.train`. The backend (slothctl/backends) loads the model and adds
LoRA; nothing here differs between CPU and GPU.
"""
