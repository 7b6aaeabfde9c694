"""Generation: the :class:`GenerationEngine` interface, the Hugging Face KV-cache engine, and a vLLM backend."""

from preftune.generation.engine import (
    GenerationEngine,
    GenerationOutput,
    HFEngine,
    SamplingParams,
    generate_texts,
)

__all__ = ["GenerationEngine", "GenerationOutput", "HFEngine", "SamplingParams", "generate_texts"]
