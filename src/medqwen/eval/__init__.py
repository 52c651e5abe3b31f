"""Evaluation of MedQwen models: pure metric functions + model-facing evaluators by task name.

The ``*_scores`` functions are pure (predictions and references in, a dict of metrics out). The
evaluators (:mod:`.evaluators`) run a model on samples and yield ``(name, value)`` pairs
(big_vision style); an evaluation set's ``task`` names one of them (:func:`get_evaluator`).
"""

from .captioning import (caption_scores, cider_d, corpus_bleu, meteor, rouge_l, sentence_meteor,
                         sentence_rouge_l, tokenize)
from .evaluators import (EVALUATORS, EvalSettings, evaluate_captions, evaluate_pope, evaluate_ranking,
                         evaluate_vqa, get_evaluator, predict, register, registered_tasks)
from .pope import build_pope_probes, pope_scores
from .report import format_value, is_rate, markdown_table, write_results
from .zero_shot import (balanced_accuracy, binary_auc, classification_scores, evaluate_zero_shot, roc_auc,
                        zero_shot_scores)
from .zero_shot_tasks import ZeroShotTask, build_task
from .vqa import closed_correct, exact_match, normalize, open_recall, parse_yes_no, vqa_scores

__all__ = [
    "build_pope_probes", "caption_scores", "cider_d", "closed_correct", "corpus_bleu",
    "exact_match", "format_value", "is_rate", "markdown_table", "meteor", "normalize", "open_recall",
    "parse_yes_no", "pope_scores", "rouge_l", "sentence_meteor", "sentence_rouge_l", "tokenize",
    "vqa_scores", "write_results",
    # evaluators of vision-language models, by task name
    "EVALUATORS", "EvalSettings", "evaluate_captions", "evaluate_pope", "evaluate_ranking", "evaluate_vqa",
    "get_evaluator", "predict", "register", "registered_tasks",
    # zero-shot classification (CLIP-style dual encoders)
    "ZeroShotTask", "balanced_accuracy", "binary_auc", "build_task", "classification_scores",
    "evaluate_zero_shot", "roc_auc", "zero_shot_scores",
]
