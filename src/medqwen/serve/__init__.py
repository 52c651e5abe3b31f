"""`medqwen serve`: a web page (Gradio) to ask a trained model about an image.

:mod:`medqwen.serve.inference` does the work (image loading with limits, answer, blank-image answer,
routing of the answer, heatmap) without Gradio; :mod:`medqwen.serve.app` is the page. Needs the
``serve`` extra: ``pip install 'medqwen[serve]'`` (gradio, pydicom, matplotlib).
"""
from __future__ import annotations

from .inference import MAX_PIXELS, Answer, Answerer, Routing, UserError, routing_heatmap


def launch(*args, **kwargs):
    """See :func:`medqwen.serve.app.launch` (imports Gradio only when called)."""
    from .app import launch as _launch

    return _launch(*args, **kwargs)


__all__ = ["MAX_PIXELS", "Answer", "Answerer", "Routing", "UserError", "launch", "routing_heatmap"]
