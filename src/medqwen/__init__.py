"""MedQwen: medical vision-language models fine-tuned with Sparse Spectral LoRA (built on `sslora`)."""

__version__ = "0.1.0"
