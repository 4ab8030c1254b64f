"""How much GPU memory and time a LoRA run needs, from the model's config alone (no weights, no torch).

    shape = ModelShape.from_config(load_model_config(path))          # config.json -> sizes
    setup = TrainSetup.from_config(cfg.model, cfg.lora, cfg.train, backend=..., optimizer=...,
                                   batching=..., on_cuda=..., lengths=prepared.train_lengths)
    gpu = gpus.lookup("H100") or gpus.for_device(torch name, total bytes)
    est = estimate(shape, setup, gpu, steps=planned)                  # breakdown, peak, time, fits
    choice = choose_micro_batch(shape, setup, gpu)                     # micro_batch = "auto"
    changes = fixes(shape, setup, gpu)                                 # what makes a run fit

Modules: `shape` (config -> ModelShape, parameter counts), `gpus` (the GPU table), `tokens`
(tokens per micro-batch for each batching strategy), `estimate` (memory and time), `plan`
(micro-batch choice and fixes).
"""

from slothctl.memory.estimate import Estimate, TrainSetup, estimate
from slothctl.memory.gpus import GIB, Gpu, for_device, lookup
from slothctl.memory.plan import Change, MicroBatchChoice, choose_micro_batch, fixes
from slothctl.memory.shape import EstimateUnavailable, ModelShape, load_model_config

__all__ = ["GIB", "Change", "Estimate", "EstimateUnavailable", "Gpu", "MicroBatchChoice", "ModelShape", "TrainSetup",
           "choose_micro_batch", "estimate", "fixes", "for_device", "load_model_config", "lookup"]
