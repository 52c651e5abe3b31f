"""Continual learning: a task sequence trained with one model and one adapter, the accuracy matrix R
after every task, forgetting / BWT / FWT, blank-image controls and routing statistics.

    from medqwen.continual import load_sequence, run_sequence
    config = load_sequence("benchmarks/continual/sequence.yaml", data_root="../shared/data", method="sslora")
    results = run_sequence(config)          # resumable; writes JSON, Markdown and PNGs
"""

from .config import (MethodConfig, SequenceConfig, TaskConfig, apply_limits, load_method, load_sequence,
                     parse_overrides, resolve_method)
from .metrics import (absolute_forgetting, backward_transfer, best_earlier, final_average, final_scores,
                      forward_transfer, learning_accuracy, mean_std, relative_forgetting, summarize)
from .runner import ContinualRunner, default_output_dir, run_sequence

__all__ = [
    "ContinualRunner", "MethodConfig", "SequenceConfig", "TaskConfig", "absolute_forgetting", "apply_limits",
    "backward_transfer", "best_earlier", "default_output_dir", "final_average", "final_scores", "forward_transfer",
    "learning_accuracy", "load_method", "load_sequence", "mean_std", "parse_overrides", "relative_forgetting",
    "resolve_method", "run_sequence", "summarize",
]
