"""Training: stages as data, one loop, atomic checkpoints, resumable runs."""

from .config import ConfigError, DataSpec, ExperimentConfig, StageConfig, adapter_config, load_experiment, load_stage
from .pipeline import load_data, run_experiment
from .trainer import Trainer, lr_at

__all__ = [
    "ConfigError", "DataSpec", "ExperimentConfig", "StageConfig", "Trainer", "adapter_config", "load_data",
    "load_experiment", "load_stage", "lr_at", "run_experiment",
]
