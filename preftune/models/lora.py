"""LoRA through peft, and saving a trained model in Hugging Face format (adapter, merged, or full)."""

from __future__ import annotations

from pathlib import Path


from preftune.errors import PreftuneError


def apply_lora(model, *, r: int = 16, alpha: int = 32, dropout: float = 0.05, targets: list[str] | str | None = None):
    """Wrap ``model`` in a peft LoRA adapter (Hu et al. 2021: ``W x + (α/r) B A x``, only A and B train).

    ``targets``: module names (e.g. ``["q_proj", "v_proj"]``) or ``None`` / ``"all-linear"`` for every linear layer
    but the LM head.
    """
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets or "all-linear",
                        task_type="CAUSAL_LM")
    try:
        return get_peft_model(model, config)
    except ValueError as err:  # e.g. a target module that does not exist
        raise PreftuneError(f"LoRA: {err}") from None


def is_peft(model) -> bool:
    return hasattr(model, "peft_config") and hasattr(model, "disable_adapter")


def save_final(model, tokenizer, path: str | Path, *, merge: bool = False) -> Path:
    """Save the trained model to ``path`` in Hugging Face format with its tokenizer.

    A LoRA model saves its adapter (``adapter_model.safetensors`` + ``adapter_config.json``, loadable with peft), or
    with ``merge=True`` the base model with the adapter merged in (a plain model folder).
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    if is_peft(model):
        if merge:
            merged = model.merge_and_unload()
            merged.save_pretrained(path)
        else:
            model.save_pretrained(path)
    else:
        if merge:
            raise PreftuneError("--merge only applies to LoRA training (use --lora)")
        model.save_pretrained(path)
    if tokenizer is not None:
        from preftune.models.prompt_format import write_prompt_format

        tokenizer.save_pretrained(path)
        write_prompt_format(path, tokenizer)
    return path


def trainable_summary(model) -> str:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return f"{trainable:,} trainable parameters of {total:,} ({100 * trainable / max(total, 1):.2f}%)"
