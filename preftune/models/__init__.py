"""Models: loading (hub id, local folder, GGUF, the built-in default), heads, LoRA, log-probs."""
