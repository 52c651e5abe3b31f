"""Evaluation metrics for MedQwen: pure functions + big_vision-style evaluators.

Each ``evaluate_*`` function yields ``(name, value)`` pairs; the ``*_scores``
functions return the same as a dict.
"""

from .captioning import (caption_scores, cider_d, corpus_bleu, evaluate_captions, meteor,
                         rouge_l, sentence_meteor, sentence_rouge_l, tokenize)
from .pope import build_pope_probes, evaluate_pope, pope_scores
from .report import format_value, is_rate, markdown_table, write_results
from .zero_shot import (balanced_accuracy, binary_auc, classification_scores, evaluate_zero_shot, roc_auc,
                        zero_shot_scores)
from .zero_shot_tasks import ZeroShotTask, build_task
from .vqa import (closed_correct, evaluate_vqa, exact_match, normalize, open_recall,
                  parse_yes_no, vqa_scores)

__all__ = [
    "build_pope_probes", "caption_scores", "cider_d", "closed_correct", "corpus_bleu",
    "evaluate_captions", "evaluate_pope", "evaluate_vqa", "exact_match", "format_value",
    "is_rate", "markdown_table", "meteor", "normalize", "open_recall", "parse_yes_no",
    "pope_scores", "rouge_l", "sentence_meteor", "sentence_rouge_l", "tokenize",
    "vqa_scores", "write_results",
    # zero-shot classification (CLIP-style dual encoders)
    "ZeroShotTask", "balanced_accuracy", "binary_auc", "build_task", "classification_scores",
    "evaluate_zero_shot", "roc_auc", "zero_shot_scores",
]
