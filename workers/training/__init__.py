"""LoRA fine-tuning: a recipe run in a spawned child process, driven from the worker.

Importing this package does not import torch: the worker's process only spawns and relays.

    config = TrainConfig.from_hyperparams(resolved, model_dir=...)
    result = run_training(config, train, val, ctx.artifact_dir, callbacks)

Modules: config (TrainConfig), spawn (run_training, TrainingCallbacks, TrainResult; the child
process), recipe (setup/train/save_checkpoint/cleanup), collate (chat template, completion-only
labels, length grouping), loss (supervised-only logits, shared prefix), model (LoRA, device),
checkpoint (atomic, weights_only), monitor (early stopping, overfitting), estimate, plots.
"""

from workers.training.config import TrainConfig
from workers.training.estimate import estimate
from workers.training.spawn import TrainingCallbacks, TrainResult, run_training

__all__ = ["TrainConfig", "TrainResult", "TrainingCallbacks", "estimate", "run_training"]
