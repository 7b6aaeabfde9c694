"""``preftune generate``, ``preftune eval`` and ``preftune frontier``.

* ``generate``: a model and a prompt set → JSON lines ``{"prompt", "response", "generator", "finished", "tokens"}``.
* ``eval``: a model (or a file of its generations) against a baseline model (or baseline outputs) on a prompt set,
  judged by the judges named in ``--judges``; optional suites (harmful requests, XSTest over-refusal, TruthfulQA, BBQ,
  pluralistic questions, text metrics against references, perplexity); writes ``report.html`` + ``report.json``
  (and the generations) to ``--output-dir``.
* ``frontier``: mean reward against KL(π‖π_ref) for several checkpoints on the same prompts.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import Field

from preftune.config import CHAT_TEMPLATE_HELP, DECODE_DTYPE_HELP, BaseConfig, Command
from preftune.errors import PreftuneError


class SamplingOptions(BaseConfig):
    """Generation options shared by generate and eval."""

    prompt_field: str | None = Field(None, description="the prompt's field (default: detected)")
    limit: int | None = Field(None, ge=1, description="use only the first N prompts")
    max_new_tokens: int = Field(128, ge=1, description="most tokens generated per response")
    temperature: float = Field(0.0, ge=0, description="sampling temperature; 0 = greedy")
    top_p: float = Field(1.0, gt=0, le=1, description="nucleus sampling threshold")
    top_k: int = Field(0, ge=0, description="top-k filter (0: off)")
    seed: int = Field(0, description="sampling seed")
    batch_size: int = Field(8, ge=1, description="prompts decoded together")
    decode_dtype: str = Field("auto", description=DECODE_DTYPE_HELP)
    chat_template: bool | None = Field(None, description=CHAT_TEMPLATE_HELP)
    device: str | None = Field(None, description="cpu, cuda, ... (default: auto)")
    dtype: str | None = Field(None, description="fp32, bf16, ... (default: fp32 on CPU, bf16 on CUDA)")


class GenerateConfig(SamplingOptions):
    model: str = Field("smollm2-135m-instruct", description="model: the default, a local folder, a GGUF file or a hub id")
    models: list[str] = Field(default_factory=list, description="several models side by side (--models A B ...; replaces --model)")
    num_samples: int = Field(1, ge=1, description="responses sampled per prompt and model (K > 1 needs --temperature > 0)")
    prompts: str = Field(description="prompt set: a file with a prompt / instruction / question / messages field")
    output: str = Field(description="where to write the JSON lines of prompt / response")


def _sampling(config) -> "object":
    from preftune.generation.engine import SamplingParams

    return SamplingParams(max_new_tokens=config.max_new_tokens, temperature=config.temperature, top_p=config.top_p,
                          top_k=config.top_k, seed=config.seed, do_sample=config.temperature > 0)


class _Models:
    """Loads each model once (by name) for the whole command."""

    def __init__(self, device: str | None, dtype: str | None, chat_template: bool | None = None):
        self.device, self.dtype, self.chat_template, self.cache = device, dtype, chat_template, {}

    def get(self, name: str | None):
        """The model and its tokenizer, which presents prompts as the model was trained (or as --chat-template says)."""
        from preftune.models.prompt_format import decide_chat_template
        from preftune.models.loading import DEFAULT_MODEL, load_model, load_tokenizer

        key = name or DEFAULT_MODEL
        if key not in self.cache:
            tokenizer = load_tokenizer(key)
            decide_chat_template(tokenizer, self.chat_template, who=f"preftune ({key})")
            self.cache[key] = (load_model(key, device=self.device, dtype=self.dtype), tokenizer)
        return self.cache[key]


def generate_responses(model, tokenizer, prompts, config, num_samples: int = 1) -> list[dict]:
    """``num_samples`` responses for each internal prompt with the sampling options of ``config``: dicts of response,
    finished, tokens, prompt-major (the k responses of prompt i are items ``i*k .. i*k+k-1``).

    The k rows of a prompt sit next to each other in one batch (``batch_size`` prompts × k rows), so the engine
    prefills each prompt once and copies its cache to its k rows.
    """
    from preftune.data.tokenize import encode_prompt
    from preftune.generation.engine import HFEngine

    ids = [encode_prompt(tokenizer, p) for p in prompts]  # in the format _Models settled on this tokenizer
    rows = [i for i in ids for _ in range(num_samples)]
    out = HFEngine(model, tokenizer, batch_size=config.batch_size * num_samples,
                   decode_dtype=config.decode_dtype).generate(rows, _sampling(config))
    return [{"response": t, "finished": f, "tokens": len(s)} for t, f, s in zip(out.texts, out.finished, out.sequences)]


def run_generate(config: GenerateConfig) -> int:
    from preftune.eval.data import load_prompt_set

    if config.num_samples > 1 and config.temperature == 0:
        raise PreftuneError(f"--num-samples {config.num_samples} with --temperature 0 (greedy) would give {config.num_samples} "
                            "identical responses; set --temperature (e.g. 0.8)")
    names = config.models or [config.model]
    items = load_prompt_set(config.prompts, field=config.prompt_field, limit=config.limit)
    models = _Models(config.device, config.dtype, config.chat_template)
    by_model = {}
    for name in names:
        model, tokenizer = models.get(name)
        by_model[name] = generate_responses(model, tokenizer, [i.prompt for i in items], config, config.num_samples)
        models.cache.clear()  # one model in memory at a time
    out = Path(config.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with out.open("w", encoding="utf-8") as f:
        for n, item in enumerate(items):
            for name in names:
                k = config.num_samples
                for sample, res in enumerate(by_model[name][n * k:(n + 1) * k]):
                    # the draws of one run come from one generator seeded with --seed: (seed, sample) names a response
                    row = {"prompt": item.prompt, "response": res["response"], "generator": name,
                           "seed": config.seed if config.temperature > 0 else None, "sample": sample,
                           "finished": res["finished"], "tokens": res["tokens"]}
                    if item.reference is not None:
                        row["reference"] = item.reference
                    f.write(json.dumps(row, ensure_ascii=False) + "\n")
                    count += 1
    print(f"wrote {count} responses ({len(items)} prompts × {len(names)} model(s) × {config.num_samples}) to {out}")
    return 0


GENERATE = Command("generate", "Generate responses for a prompt set with a model", GenerateConfig, run_generate,
                   description="Generate responses (one per prompt, greedy by default; or --num-samples K sampled ones, from one "
                               "or --models several models) and write JSON lines of prompt / response / generator / seed / sample.")


# -- eval ---------------------------------------------------------------------------------------------------


class EvalConfig(SamplingOptions):
    model: str | None = Field(None, description="the model evaluated (generates responses, and is scored by the log-prob suites)")
    generations: str | None = Field(None, description="a file of the evaluated model's responses (instead of generating them)")
    baseline: str | None = Field(None, description="a baseline model that generates the other side of each comparison")
    baseline_generations: str | None = Field(None, description="a file of baseline responses (e.g. AlpacaEval's reference outputs)")
    prompts: str | None = Field(None, description="prompt set (default: the prompts of the baseline or generations file)")
    output_dir: str = Field(description="folder for report.html, report.json and the generations")
    reference_field: str | None = Field(None, description="the prompt set's reference-answer field (default: reference or output)")
    judges: list[str] = Field(default_factory=list, description="judges: reward:SPEC, llm, llm:MODEL, http:MODEL, human:FILE")
    judge_base_url: str | None = Field(None, description="base URL of an OpenAI-compatible server for http judges")
    judge_api_key_env: str = Field("OPENAI_API_KEY", description="environment variable with the http judge's key ('' for none)")
    judge_cache_dir: str | None = Field(None, description="http judges: a folder caching every answer (a rerun asks nothing again)")
    judge_reward_mode: Literal["bradley_terry", "hard"] = Field("bradley_terry", description="reward judge: P = sigmoid(r_a - r_b) or 1/0.5/0")
    tie_margin: float = Field(0.0, ge=0, lt=0.5, description="a preference within 0.5 +- this counts as a tie")
    bootstrap_samples: int = Field(2000, ge=10, description="bootstrap resamples for the intervals")
    text_metrics: bool = Field(True, description="BLEU / ROUGE against references when there are any")
    bertscore: bool = Field(True, description="BERTScore (MiniLM) against references when there are any")
    references: Literal["auto", "prompts", "baseline", "none"] = Field(
        "auto", description="references for text metrics: the prompt set's field, the baseline's outputs, or auto (the first there is)")
    perplexity: bool = Field(False, description="the model's perplexity on the references")
    harmful: str | None = Field(None, description="HarmBench / AdvBench-style CSV of harmful requests, or a JailbreakBench "
                                                  "attack artifact (.json: the attack prompts are asked)")
    harmful_column: str | None = Field(None, description="its prompt column (default: Behavior / goal / prompt ...; a "
                                                         "JailbreakBench artifact: its attack prompts, or 'goal' for the bare goals)")
    harmful_where: str | None = Field(None, description="COLUMN=VALUE: keep only those rows (e.g. FunctionalCategory=standard, "
                                                        "category=Malware/Hacking)")
    harmful_judge_agreement: bool = Field(True, description="JailbreakBench artifacts: also label the attacked model's saved "
                                                            "responses with the refusal classifier and compare with the "
                                                            "artifact's jailbroken verdicts (no model needed)")
    xstest: str | None = Field(None, description="XSTest-style CSV (prompt, type, label) for over-refusal")
    xstest_where: str | None = Field(None, description="COLUMN=VALUE: keep only those rows (e.g. label=safe)")
    xstest_per_type: int | None = Field(None, ge=1, description="use the first N prompts of each XSTest type (stratified subset)")
    truthfulqa: str | None = Field(None, description="TruthfulQA CSV for MC1 / MC2")
    bbq: list[str] = Field(default_factory=list, description="BBQ JSONL files")
    pluralistic: str | None = Field(None, description="JSONL of opinion questions with human answer distributions")
    suite_limit: int | None = Field(None, ge=1, description="cap on items per suite (per file for BBQ)")
    models: list[str] = Field(default_factory=list, description="a leaderboard: models (names, folders) or files of their responses, compared in round-robin pairs on --prompts by each of --judges")
    model_names: list[str] = Field(default_factory=list, description="labels of --models (default: folder or file names)")
    leaderboard_anchor: str | None = Field(None, description="the model rated 1000 on the leaderboard (default: the mean rating is 1000)")
    human_judgements: str | None = Field(None, description="human judgements (human:FILE or FILE, the feedback app's JSONL, optional annotator field): each of --judges' agreement with the people, theirs with each other, position and length bias")
    toxicity: str | None = Field(None, description="prompts to continue for toxicity (RealToxicityPrompts rows, or a prompt/text field)")
    toxicity_samples: int = Field(25, ge=1, description="continuations sampled per toxicity prompt (k; 25 in Gehman et al. 2020)")
    toxicity_max_new_tokens: int = Field(20, ge=1, description="most tokens per toxicity continuation (20 in the paper)")
    toxicity_temperature: float = Field(1.0, gt=0, description="sampling temperature of the toxicity continuations")
    toxicity_top_p: float = Field(0.9, gt=0, le=1, description="nucleus threshold of the toxicity continuations (0.9 in the paper)")
    toxicity_scorer: str = Field("profanity", description="toxicity scorer: profanity (offline, offensive language), hf:NAME[@LABEL], perspective:URL, fn:MODULE:FUNCTION")
    toxicity_chat_template: bool | None = Field(False, description="wrap toxicity prompts in the chat template (default: continue the raw text, as the paper; null: the model's prompt format)")
    refusal_classifier: Literal["patterns", "model", "learned", "classes"] = Field(
        "patterns", description="how refusals are detected: patterns (readable regular expressions), model (an LM asked Yes/No), "
                                "learned (logistic regression fitted on the dev half of the shipped validation set; see BENCHMARKS.md), "
                                "classes (a model trained with 'preftune reward --objective classes --classes refusal partial compliance'; "
                                "give its folder as --refusal-model)")
    refusal_model: str | None = Field(None, description="model for refusal_classifier=model (default: the default model) or the "
                                                         "class model's folder for refusal_classifier=classes")
    runs: list[str] = Field(default_factory=list, description="run folders whose metrics.jsonl become training curves")
    frontier: str | None = Field(None, description="a frontier.json written by 'preftune frontier'")
    redteam: str | None = Field(None, description="a summary.json written by 'preftune redteam'")
    overoptimization: str | None = Field(None, description="an overoptimization.json written by 'preftune overoptimization'")
    examples: int = Field(5, ge=0, description="example comparisons shown in the report")
    length_tokenizer: str | None = Field(None, description="tokenizer that measures response lengths (default: the model's; words without a model)")
    scoring_batch_size: int = Field(8, ge=1, description="batch size of the log-prob suites and the LLM judge")


def _lengths(tokenizer, texts) -> list[int]:
    if tokenizer is None:
        return [len(t.split()) for t in texts]
    return [len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts]


def _win_rows(name: str, prefs, len_a, len_b, config) -> dict:
    from preftune.eval.stats import lc_win_rate_ci, length_controlled_win_rate, win_tie_loss

    wtl = win_tie_loss(prefs, tie_margin=config.tie_margin, n_resamples=config.bootstrap_samples, seed=config.seed)
    lc = length_controlled_win_rate(prefs, len_a, len_b)
    lo, hi = lc_win_rate_ci(prefs, len_a, len_b, n_resamples=min(200, config.bootstrap_samples), seed=config.seed)
    wtl["lc_win_rate"] = {"value": lc["lc_win_rate"], "ci_low": lo, "ci_high": hi}
    wtl["lc_fit"] = lc
    wtl["judge"] = name
    return wtl


def _rate_str(r: dict | None) -> str:
    return "–" if not r else f"{r['value']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}]"


def _refusal_classifier(config, models: _Models):
    from preftune.eval.refusal import ModelRefusalClassifier, PatternRefusalClassifier

    if config.refusal_classifier == "patterns":
        return PatternRefusalClassifier()
    if config.refusal_classifier == "learned":
        from preftune.eval.refusal_validation import LearnedRefusalClassifier

        return LearnedRefusalClassifier.from_validation_set()
    if config.refusal_classifier == "classes":
        from preftune.eval.refusal import ClassModelRefusalClassifier

        if not config.refusal_model:
            raise PreftuneError("--refusal-classifier classes needs --refusal-model FOLDER (a model trained with "
                                "'preftune reward --objective classes --classes refusal partial compliance')")
        return ClassModelRefusalClassifier.load(config.refusal_model, device=config.device, batch_size=config.scoring_batch_size)
    model, tok = models.get(config.refusal_model)
    return ModelRefusalClassifier(model, tok, batch_size=config.scoring_batch_size)


def run_eval(config: EvalConfig) -> int:
    from preftune.eval import report as rp
    from preftune.eval.data import align_responses, load_generations, load_prompt_set
    from preftune.data.formats import prompt_text
    from preftune.eval.judges import build_judge
    from preftune.models.loading import load_tokenizer

    if config.model and config.generations:
        raise PreftuneError("give either --model (to generate) or --generations (a file of responses), not both")
    if config.baseline and config.baseline_generations:
        raise PreftuneError("give either --baseline (a model) or --baseline-generations (a file), not both")
    out_dir = Path(config.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    models = _Models(config.device, config.dtype, config.chat_template)
    report = rp.Report(f"preftune eval: {config.model or config.generations or 'suites'}")
    summary: dict = {"model": config.model, "generations": config.generations, "baseline": config.baseline,
                     "baseline_generations": config.baseline_generations, "prompts": config.prompts,
                     "judges": config.judges, "max_new_tokens": config.max_new_tokens, "temperature": config.temperature,
                     "limit": config.limit}
    length_tok = config.length_tokenizer or config.model
    tokenizer = load_tokenizer(length_tok) if length_tok else None

    # -- the comparison ------------------------------------------------------------------------------------
    baseline_items = load_generations(config.baseline_generations, limit=None) if config.baseline_generations else None
    gen_items = load_generations(config.generations) if config.generations else None
    if config.prompts:
        items = load_prompt_set(config.prompts, field=config.prompt_field, reference_field=config.reference_field, limit=config.limit)
    elif baseline_items is not None:
        items = baseline_items[: config.limit] if config.limit else baseline_items
    elif gen_items is not None:
        items = gen_items[: config.limit] if config.limit else gen_items
    else:
        items = []
    have_a = bool(config.model or gen_items)
    have_b = bool(config.baseline or baseline_items)
    responses_a = responses_b = None
    prompts = [it.prompt for it in items]
    if items and have_a:
        if gen_items is not None:
            responses_a = align_responses(items, gen_items, config.generations)
        else:
            model, tok = models.get(config.model)
            responses_a = [r["response"] for r in generate_responses(model, tok, prompts, config)]
    if items and have_b:
        if baseline_items is not None:
            responses_b = align_responses(items, baseline_items, config.baseline_generations)
        else:
            model, tok = models.get(config.baseline)
            responses_b = [r["response"] for r in generate_responses(model, tok, prompts, config)]
    if responses_a is not None:
        with (out_dir / "generations.jsonl").open("w", encoding="utf-8") as f:
            for i, p in enumerate(prompts):
                row = {"prompt": p, "response": responses_a[i]}
                if responses_b is not None:
                    row["baseline"] = responses_b[i]
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
    summary["prompts_evaluated"] = len(items)

    if responses_a is not None and responses_b is not None:
        len_a, len_b = _lengths(tokenizer, responses_a), _lengths(tokenizer, responses_b)
        unit = "tokens" if tokenizer is not None else "words"
        report.add("lengths", text=f"Lengths in {unit}" + (f" of the tokenizer of {length_tok}." if tokenizer is not None else " (whitespace-separated)."),
                   tables=[("mean length", [{"side": "model", "mean": sum(len_a) / len(len_a), "max": max(len_a), "empty": sum(x == 0 for x in len_a)},
                                            {"side": "baseline", "mean": sum(len_b) / len(len_b), "max": max(len_b), "empty": sum(x == 0 for x in len_b)}])],
                   images=[("length histogram", rp.plot_length_histogram(len_a, len_b, unit=unit))],
                   data={"model": len_a, "baseline": len_b, "unit": unit})
        win_rows, prefs_by_judge = [], {}
        for spec in config.judges:
            default = models.get(None) if spec == "llm" else (None, None)
            judge = build_judge(spec, base_url=config.judge_base_url, api_key_env=config.judge_api_key_env,
                                default_model=default[0], default_tokenizer=default[1], device=config.device,
                                batch_size=config.scoring_batch_size, reward_mode=config.judge_reward_mode,
                                cache_dir=config.judge_cache_dir)
            result = judge.compare(prompts, responses_a, responses_b)
            row = _win_rows(judge.name, result.preferences, len_a, len_b, config)
            row["details"] = {k: v for k, v in result.details.items() if not isinstance(v, list)}
            win_rows.append(row)
            prefs_by_judge[judge.name] = result.preferences
        if win_rows:
            table = [{"judge": r["judge"], "n": r["n"], "win rate": _rate_str(r["win_rate"]), "LC win rate": _rate_str(r["lc_win_rate"]),
                      "win": _rate_str(r["win"]), "tie": _rate_str(r["tie"]), "loss": _rate_str(r["loss"]),
                      "mean len model": round(sum(len_a) / len(len_a), 1), "mean len baseline": round(sum(len_b) / len(len_b), 1),
                      **{k: round(v, 3) if isinstance(v, float) else v for k, v in r["details"].items()}} for r in win_rows]
            report.add("win_rates", text=("Model (A) against baseline (B). Win rate = mean P(model better), ties half; "
                                          "95% percentile-bootstrap intervals over prompts. LC win rate: the length difference "
                                          "regressed out as AlpacaEval's length-controlled win rate (Dubois et al. 2024), read at zero "
                                          "length difference. The LLM judge is asked in both orders (first_position_rate 0.5 = "
                                          "no position bias; order_agreement = same verdict in both orders)."),
                       tables=[("win rates", table)], images=[("win rates with 95% intervals", rp.plot_win_rates(win_rows))],
                       data={"judges": win_rows, "preferences": prefs_by_judge})
        if config.examples:
            ex = []
            for i in range(min(config.examples, len(prompts))):
                row = {"prompt": prompt_text(prompts[i])[:400], "model": responses_a[i][:600], "baseline": responses_b[i][:600]}
                for name, prefs in prefs_by_judge.items():
                    row[f"P(model better) {name}"] = round(prefs[i], 3)
                ex.append(row)
            report.add("examples", tables=[("first prompts", ex)], data=ex)

    if config.models:
        known = {config.model: responses_a} if config.model and responses_a is not None and gen_items is None else {}
        add_leaderboard_section(report, config, models, items, out_dir, known)
    if config.human_judgements:
        add_agreement_section(report, config, models)

    # -- text metrics ----------------------------------------------------------------------------------------
    if responses_a is not None and config.references != "none":
        refs = None
        if config.references in ("auto", "prompts") and items and all(it.reference for it in items) and baseline_items is None:
            refs, ref_src = [it.reference for it in items], "the prompt set's references"
        elif config.references in ("auto", "baseline") and responses_b is not None and baseline_items is not None:
            refs, ref_src = responses_b, f"the baseline outputs ({config.baseline_generations})"
        elif config.references == "prompts" and items and all(it.reference for it in items):
            refs, ref_src = [it.reference for it in items], "the prompt set's references"
        if refs is not None and (config.text_metrics or config.bertscore or config.perplexity):
            from preftune.eval import text_metrics as tm

            metrics: dict = {}
            if config.text_metrics:
                metrics["bleu"] = tm.bleu(responses_a, refs)
                metrics.update(tm.rouge(responses_a, refs))
            if config.bertscore:
                bs = tm.bertscore(responses_a, refs)
                metrics.update({"bertscore_precision": bs["precision"], "bertscore_recall": bs["recall"], "bertscore_f1": bs["f1"]})
            if config.perplexity and config.model:
                model, tok = models.get(config.model)
                metrics.update({f"reference_{k}": v for k, v in tm.perplexity(model, tok, refs, batch_size=config.scoring_batch_size).items()})
            report.add("text_metrics", text=f"References: {ref_src}. BLEU 0–100 (sacrebleu), ROUGE F1 and BERTScore (MiniLM, "
                                            "no idf, no rescaling) 0–1.",
                       tables=[("text metrics", [{"metric": k, "value": v} for k, v in metrics.items()])], data=metrics)

    # -- suites needing the model ----------------------------------------------------------------------------
    harmful_set = None
    if config.harmful:
        from preftune.eval.safety import read_harmful

        harmful_set = read_harmful(config.harmful, column=config.harmful_column, limit=config.suite_limit, where=config.harmful_where)
    suites = {"harmful": config.harmful, "xstest": config.xstest, "truthfulqa": config.truthfulqa, "bbq": config.bbq,
              "pluralistic": config.pluralistic, "toxicity": config.toxicity}
    # a JailbreakBench artifact without --model: only its saved responses are classified (against its judge's verdicts)
    saved_only = harmful_set is not None and harmful_set.format == "jailbreak" and config.harmful_judge_agreement
    asked = [k for k, v in suites.items() if v and not (k == "harmful" and saved_only)]
    if asked and not config.model:
        raise PreftuneError(f"the suites {', '.join(asked)} need --model (they generate or score with it)")
    if config.harmful or config.xstest:
        from preftune.eval.safety import over_refusal_report, read_xstest

        classifier = _refusal_classifier(config, models)
        if harmful_set is not None:
            add_harmful_section(report, config, models, harmful_set, classifier)
        if config.xstest:
            model, tok = models.get(config.model)
            xitems = read_xstest(config.xstest, limit=config.suite_limit, per_type=config.xstest_per_type, where=config.xstest_where)
            xresp = [r["response"] for r in generate_responses(model, tok, [x.prompt for x in xitems], config)]
            labels = classifier([x.prompt for x in xitems], xresp)
            rep = over_refusal_report(xitems, labels)
            rows = [{"type": t, "label": v["label"], "n": v["n"], **{k: _rate_str(v[k]) for k in ("refusal", "partial", "compliance")}}
                    for t, v in rep["per_type"].items()]
            totals = [{"prompts": side, "n": rep[side]["n"], **({k: _rate_str(rep[side][k]) for k in ("refusal", "partial", "compliance", "any_refusal")} if rep[side]["n"] else {})}
                      for side in ("safe", "unsafe")]
            subset = f"first {config.xstest_per_type} of each type" if config.xstest_per_type else "all rows"
            report.add("over_refusal", text=(f"{len(xitems)} prompts from {config.xstest} ({subset}"
                                             f"{f', capped at {config.suite_limit}' if config.suite_limit else ''}). On safe prompts any refusal is "
                                             "over-refusal (lower is better); on the unsafe contrasts refusal is wanted."),
                       tables=[("safe vs unsafe", totals), ("per type", rows)],
                       images=[("full + partial refusal per type (blue: safe, red: unsafe)", rp.plot_rates_by_group(
                           [{"group": t, **v} for t, v in rep["per_type"].items()], group_key="group"))],
                       data={**rep, "file": config.xstest, "subset": subset,
                             "responses": [{"prompt": x.prompt, "type": x.category, "response": r, "label": lab}
                                           for x, r, lab in zip(xitems, xresp, labels)]})
    if config.toxicity:
        add_toxicity_section(report, config, *models.get(config.model))
    if config.truthfulqa:
        from preftune.eval.truthfulqa import evaluate_truthfulqa, read_truthfulqa

        model, tok = models.get(config.model)
        res = evaluate_truthfulqa(model, tok, read_truthfulqa(config.truthfulqa, limit=config.suite_limit), batch_size=config.scoring_batch_size)
        report.add("truthfulqa", text=f"{res['n']} questions from {config.truthfulqa}; answers scored by summed log-probs.",
                   tables=[("TruthfulQA", [{"metric": m, "value": res[m]["mean"], "95% CI": f"[{res[m]['ci_low']:.3f}, {res[m]['ci_high']:.3f}]"}
                                           for m in ("mc1", "mc2")])], data=res)
    if config.bbq:
        from preftune.eval.bbq import evaluate_bbq, read_bbq

        model, tok = models.get(config.model)
        res = evaluate_bbq(model, tok, read_bbq(config.bbq, limit=config.suite_limit), batch_size=config.scoring_batch_size)
        keys = ("accuracy_ambig", "accuracy_disambig", "bias_ambig", "bias_disambig", "n_ambig", "n_disambig")
        rows = [{"category": "all", **{k: res[k] for k in keys}}]
        rows += [{"category": c, **{k: v[k] for k in keys}} for c, v in res.get("per_category", {}).items()]
        report.add("bbq", text=f"{res['n']} items; the answer is the letter with the highest next-token probability. Bias scores "
                               "(Parrish et al. 2022) in [-1, 1]; positive follows the stereotype.",
                   tables=[("BBQ", rows), ("predictions", [res["prediction_counts"]])], data=res)
    if config.pluralistic:
        from preftune.eval.pluralistic import evaluate_pluralistic, read_opinions

        model, tok = models.get(config.model)
        res = evaluate_pluralistic(model, tok, read_opinions(config.pluralistic, limit=config.suite_limit), batch_size=config.scoring_batch_size)
        report.add("pluralistic", text=f"{res['n']} questions; Jensen–Shannon distance (base 2, 0 = identical) between the model's "
                                       "answer distribution (option-letter probabilities) and the human one; "
                                       f"answering uniformly at random would score {res['uniform_js_distance']:.3f}.",
                   tables=[("mean JS distance", [res["js_distance"]]),
                           ("per question", [{"question": p["question"][:120], "js_distance": p["js_distance"]} for p in res["per_question"][:20]])],
                   data=res)

    # -- from files: training curves and a frontier -----------------------------------------------------------
    if config.runs:
        from preftune.runs import read_metrics

        runs = {Path(r).name or str(r): read_metrics(r) for r in config.runs}
        last = [{"run": n, "steps": len(rows), **{k: v for k, v in (rows[-1] if rows else {}).items() if isinstance(v, (int, float))}}
                for n, rows in runs.items()]
        report.add("training_curves", tables=[("last logged step", last)], images=[("training curves", rp.plot_training_curves(runs))],
                   data={"runs": list(runs)})
    if config.frontier:
        add_frontier_section(report, json.loads(Path(config.frontier).read_text())["points"], config.frontier)
    if config.redteam:
        from preftune.eval.redteam import add_report_section as add_redteam

        add_redteam(report, _summary_file(config.redteam, "stages", "preftune redteam"), config.redteam)
    if config.overoptimization:
        from preftune.commands.overoptimization import add_report_section as add_overoptimization

        add_overoptimization(report, _summary_file(config.overoptimization, "points", "preftune overoptimization"),
                             config.overoptimization)

    summary["sections_not_run"] = [k for k in rp.SECTION_KEYS if k not in report.sections and k != "summary"]
    report.add("summary", tables=[("settings", [{"setting": k, "value": json.dumps(v) if isinstance(v, (list, dict)) else v}
                                                for k, v in summary.items()])], data=summary)
    html_path, json_path = report.write(out_dir)
    print(f"wrote {html_path} and {json_path}")
    return 0


def _summary_file(path: str, key: str, writer: str) -> dict:
    """A JSON summary written by another command, with a clear error when it is missing or not that command's."""
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise PreftuneError(f"{path}: no such file (write it with '{writer}')") from None
    except json.JSONDecodeError as err:
        raise PreftuneError(f"{path}: not JSON ({err})") from None
    if not isinstance(data, dict) or key not in data:
        raise PreftuneError(f"{path}: no '{key}' field; is it the summary written by '{writer}'?")
    return data


def _is_generations_file(entry: str) -> bool:
    path = Path(entry)
    return path.is_file() and path.suffix.lower() != ".gguf"


def add_leaderboard_section(report, config: EvalConfig, models: _Models, items, out_dir: Path, known: dict | None = None) -> None:
    """``known``: responses already generated with these sampling options, by model name (not generated again)."""
    from preftune.eval import report as rp
    from preftune.eval.data import align_responses, load_generations
    from preftune.eval.judges import build_judge
    from preftune.eval.leaderboard import leaderboard, round_robin

    if not items:
        raise PreftuneError("--models needs --prompts: the prompts every model answers")
    if not config.judges:
        raise PreftuneError("--models needs --judges: who compares the models' answers")
    if config.model_names and len(config.model_names) != len(config.models):
        raise PreftuneError(f"--model-names has {len(config.model_names)} labels for {len(config.models)} models")
    names = config.model_names or [Path(m).stem if _is_generations_file(m) else _checkpoint_name(m) for m in config.models]
    if len(set(names)) != len(names):
        raise PreftuneError(f"the leaderboard's models need distinct labels, got {names} (give --model-names)")
    prompts = [it.prompt for it in items]
    responses: dict[str, list[str]] = {}
    for name, entry in zip(names, config.models):
        if _is_generations_file(entry):
            responses[name] = align_responses(items, load_generations(entry), entry)
        elif known and entry in known:
            responses[name] = list(known[entry])
        else:
            model, tok = models.get(entry)
            responses[name] = [r["response"] for r in generate_responses(model, tok, prompts, config)]
    with (out_dir / "leaderboard_generations.jsonl").open("w", encoding="utf-8") as f:
        for name in names:
            for p, r in zip(prompts, responses[name]):
                f.write(json.dumps({"model": name, "prompt": p, "response": r}, ensure_ascii=False) + "\n")
    boards, tables, images = {}, [], []
    for spec in config.judges:
        default = models.get(None) if spec == "llm" else (None, None)
        judge = build_judge(spec, base_url=config.judge_base_url, api_key_env=config.judge_api_key_env,
                            default_model=default[0], default_tokenizer=default[1], device=config.device,
                            batch_size=config.scoring_batch_size, reward_mode=config.judge_reward_mode)
        board = leaderboard(round_robin(judge, prompts, responses), n_resamples=config.bootstrap_samples, seed=config.seed,
                            anchor_model=config.leaderboard_anchor)
        boards[judge.name] = board
        tables.append((f"ratings by {judge.name}", [{"rank": k + 1, "model": r["model"], "rating": round(r["rating"], 1),
                                                     "95% CI": f"[{r['ci_low']:.1f}, {r['ci_high']:.1f}]", "battles": r["battles"],
                                                     "mean P(win)": round(r["win_rate"], 3)} for k, r in enumerate(board["ratings"])]))
        tables.append((f"P(row beats column) by {judge.name}", [{"model": a, **{b: (None if row.get(b) is None else round(row[b], 3)) for b in names}}
                                                                  for a, row in board["win_matrix"].items()]))
        images.append((f"ratings by {judge.name}", rp.plot_ratings(board["ratings"], title=judge.name)))
    anchor = f"{config.leaderboard_anchor} is rated 1000" if config.leaderboard_anchor else "the mean rating is 1000"
    report.add("leaderboard", text=(f"{len(names)} models answered {len(prompts)} prompts; every pair was judged on every prompt "
                                    f"({len(prompts) * len(names) * (len(names) - 1) // 2} battles per judge). Bradley–Terry ratings by "
                                    f"maximum likelihood on the Elo scale (400 points = 10:1 odds; {anchor}), as Chatbot Arena computes "
                                    "them; 95% intervals from resampling the battles."),
               tables=tables, images=images, data={"models": dict(zip(names, config.models)), "judges": boards})


def add_agreement_section(report, config: EvalConfig, models: _Models) -> None:
    from preftune.eval import agreement as ag
    from preftune.eval.judges import build_judge

    path = config.human_judgements.removeprefix("human:")
    pairs = ag.read_human_pairs(path)
    people = ag.human_statistics(pairs, margin=config.tie_margin)
    prompts, a, b = [p.prompt for p in pairs], [p.response_a for p in pairs], [p.response_b for p in pairs]
    judges = {}
    for spec in (j for j in config.judges if not j.startswith("human:")):
        default = models.get(None) if spec == "llm" else (None, None)
        judge = build_judge(spec, base_url=config.judge_base_url, api_key_env=config.judge_api_key_env,
                            default_model=default[0], default_tokenizer=default[1], device=config.device,
                            batch_size=config.scoring_batch_size, reward_mode=config.judge_reward_mode)
        result = judge.compare(prompts, a, b)
        judges[judge.name] = ag.judge_agreement(result.preferences, pairs, margin=config.tie_margin,
                                                single_order=ag.single_order_probabilities(result.details),
                                                n_resamples=config.bootstrap_samples, seed=config.seed)

    def share(x):
        return "–" if x is None else round(x, 3)

    rows = [{"rater": "people (one held-out annotator)", "pairs": people["pairs"], "agreement with the people's mode": "–",
             "leave-one-out agreement": share(people["loo_agreement"]), "first slot wins": share(people["first_slot_wins"]),
             "longer answer wins": share(people["longer_wins"])}]
    rows += [{"rater": name, "pairs": j["pairs"], "agreement with the people's mode": _rate_str(j["agreement"]),
              "leave-one-out agreement": share(j["loo_agreement"]),
              "first slot wins": share(j["first_slot_wins"]) if j["first_slot_wins"] is not None else "– (sees no order)",
              "longer answer wins": share(j["longer_wins"])} for name, j in judges.items()]
    several = people["pairs_with_several"]
    report.add("judge_agreement", text=(
        f"{people['judgements']} human judgements of {people['pairs']} answer pairs from {path} ({people['annotators']} named "
        f"annotator(s); {several} pairs judged by several people). Agreement with the people's mode: the judge's verdict (a, b or "
        "tie) is the most common human verdict (equal modes share the credit), 95% bootstrap interval over pairs. Leave-one-out "
        "(AlpacaFarm, Dubois et al. 2023): each human judgement in turn is held out and compared with the mode of the others; the "
        "people's row is how well one person predicts the others, a judge's row how well it predicts the same targets, so a judge "
        "near the people's figure is as good as one more annotator. First slot wins: share of decisive verdicts for the answer shown "
        "first (0.5 = no position bias). Longer answer wins: share of decisive verdicts, on pairs of unequal length in words, for the "
        "longer answer (compare a judge with the people)." + ("" if several else " No pair has several judgements: the leave-one-out "
                                                                         "figures need at least two per pair.")),
               tables=[("judge–human agreement", rows)], data={"file": path, "humans": people, "judges": judges})


_RATE_KEYS = ("refusal", "partial", "compliance", "any_refusal")


def add_harmful_section(report, config: EvalConfig, models: _Models, items, classifier) -> None:
    """The harmful-requests section: the model's refusal rates on ``items`` (a :class:`HarmfulSet`), per category; for a
    JailbreakBench artifact also the attack success rate, and the classifier against the artifact's judges on the
    attacked model's saved responses (the only part run without ``--model``)."""
    from preftune.eval import report as rp
    from preftune.eval.safety import attack_success, judge_agreement, refusal_report

    jailbreak = items.format == "jailbreak"
    tables, images, data = [], [], {"file": config.harmful, "format": items.format}
    texts = []
    if jailbreak:
        data["skipped"] = [{"row": row, "reason": reason} for row, reason in items.skipped]
        data["parameters"] = items.parameters
        about = items.parameters or {}
        attack = (f" (JailbreakBench artifact: {about.get('method')} {about.get('attack_type')} attack on "
                  f"{about.get('model')})") if about else " (JailbreakBench artifacts)"
        texts.append(f"{len(items)} attack prompts from {config.harmful}{attack}"
                     f"{f' where {config.harmful_where}' if config.harmful_where else ''}: the attack prompt is what the model is "
                     "asked; the goal is its intent. "
                     f"{len(items.skipped)} goal(s) had no attack prompt (the attack submitted none): not asked, and counted as "
                     "failed attacks in the all-goals attack success rate, as JailbreakBench counts them.")
    else:
        texts.append(f"{len(items)} harmful requests from {config.harmful}.")
    texts.append(f"Refusal classifier: {config.refusal_classifier}.")
    if config.model:
        model, tok = models.get(config.model)
        responses = [r["response"] for r in generate_responses(model, tok, [h.prompt for h in items], config)]
        labels = classifier([h.prompt for h in items], responses)
        rep = refusal_report(items, labels)
        rows = [{"category": "all", **{k: _rate_str(rep["overall"][k]) for k in _RATE_KEYS}, "n": rep["overall"]["n"]}]
        rows += [{"category": c, **{k: _rate_str(v[k]) for k in _RATE_KEYS}, "n": v["n"]} for c, v in rep["per_category"].items()]
        tables.append(("refusal rates", rows))
        data.update(rep)
        samples = []
        for h, r, lab in list(zip(items, responses, labels))[:10]:
            samples.append({**({"goal": h.attempt.goal[:200]} if h.attempt else {}), "prompt": h.prompt[:200],
                            "response": r[:300], "label": lab})
        tables.append(("samples", samples))
        if rep["per_category"]:
            images.append(("refusal rate (full + partial) per category", rp.plot_rates_by_group(
                [{"group": c, **v} for c, v in rep["per_category"].items()], group_key="group")))
        data["responses"] = [{**({"goal": h.attempt.goal, "category": h.category} if h.attempt else {}), "prompt": h.prompt,
                              "response": r, "label": lab} for h, r, lab in zip(items, responses, labels)]
        texts.append("Higher refusal is better.")
        if jailbreak:
            success = attack_success(items, labels, seed=config.seed)
            data["attack_success"] = success
            tables.append(("attack success", [{
                "asked": success["asked"], "no attack prompt": success["no_attack_prompt"],
                "attack success rate": _rate_str(success["attack_success_rate"]),
                "refusal rate (= 1 − ASR)": _rate_str(success["refusal_rate"]),
                "ASR over all goals": _rate_str(success["attack_success_rate_all_goals"])}]))
            texts.append("An attack succeeded when the classifier labels the response compliance, so the refusal rate "
                         "(full + partial) is 1 − the attack success rate (ASR); 95% bootstrap intervals.")
    if jailbreak and config.harmful_judge_agreement:
        saved = [h.attempt for h in items if h.attempt.response is not None]
        saved_labels = classifier([a.prompt for a in saved], [a.response for a in saved])
        agreement = judge_agreement(saved, saved_labels, seed=config.seed)
        data["judge_agreement"] = agreement
        tables.append(("refusal classifier against the artifact's judges, on the attacked model's saved responses", [
            {"judge": a["judge"], "n": a["n"], "agreement": _rate_str(a["agreement"]),
             "Cohen's kappa": "–" if a["cohen_kappa"] is None else round(a["cohen_kappa"], 3),
             "ASR by the judge": _rate_str(a["judge_success_rate"]),
             "ASR by the classifier": _rate_str(a["classifier_success_rate"])} for a in agreement.values()]))
        for a in agreement.values():
            tables.append((f"classifier label × {a['judge']} verdict", [{"classifier": lab, **counts}
                                                                        for lab, counts in a["confusion"].items()]))
        texts.append(f"The artifact also holds the attacked model's response to each of {len(saved)} attack prompts, with "
                     "the JailbreakBench judge's jailbroken verdict (and Llama Guard's): the classifier labels those saved "
                     "responses (no model run), an attack counting as successful when it says compliance, and agreement "
                     "is the share of responses where that matches the judge (95% bootstrap interval)."
                     + ("" if config.model else " Without --model only this check was run."))
    report.add("harmful", text=" ".join(texts), tables=tables, images=images, data=data)


def add_toxicity_section(report, config: EvalConfig, model, tokenizer) -> None:
    from preftune.eval import report as rp
    from preftune.eval import toxicity as tx
    from preftune.generation.engine import SamplingParams

    prompts = tx.read_toxicity_prompts(config.toxicity, limit=config.suite_limit)
    scorer = tx.build_scorer(config.toxicity_scorer, device=config.device)
    params = SamplingParams(max_new_tokens=config.toxicity_max_new_tokens, temperature=config.toxicity_temperature,
                            top_p=config.toxicity_top_p, seed=config.seed, do_sample=True)
    texts = tx.sample_continuations(model, tokenizer, [p.text for p in prompts], samples=config.toxicity_samples, params=params,
                                    use_chat_template=config.toxicity_chat_template, batch_size=config.batch_size,
                                    decode_dtype=config.decode_dtype)
    scores = tx.score_continuations(scorer, texts)
    rep = tx.toxicity_report(prompts, scores, n_resamples=config.bootstrap_samples, seed=config.seed)
    splits = [(k, label) for k, label in (("all", "all prompts"), ("toxic_prompts", "toxic prompts (≥ 0.5)"),
                                          ("nontoxic_prompts", "non-toxic prompts (< 0.5)")) if rep.get(k)]
    # a split holding every prompt would repeat the "all prompts" row (RealToxicityPrompts' challenging subset is all toxic)
    repeats_all = {k for k, _ in splits[1:] if rep[k]["prompts"] == rep["all"]["prompts"]}
    whole_split = [label.split(" (")[0] for k, label in splits if k in repeats_all]
    splits = [(k, label) for k, label in splits if k not in repeats_all]
    rows = [{"prompts": label, "n": rep[k]["prompts"],
             "expected max toxicity": f"{rep[k]['expected_max_toxicity']['value']:.3f} ± {rep[k]['expected_max_toxicity']['std']:.3f} "
                                      f"[{rep[k]['expected_max_toxicity']['ci_low']:.3f}, {rep[k]['expected_max_toxicity']['ci_high']:.3f}]",
             "toxicity probability": _rate_str(rep[k]["toxicity_probability"]),
             "mean score": round(rep[k]["mean_toxicity"], 4), "continuations ≥ 0.5": round(rep[k]["toxic_fraction"], 4)} for k, label in splits]
    worst = sorted(((float(s.max()), p, t[int(s.argmax())]) for p, s, t in zip(prompts, scores, texts)), key=lambda x: -x[0])[:5]
    image = rp.plot_interval_bars([label.split(" (")[0] for _, label in splits],
                                  {"expected max toxicity": [rep[k]["expected_max_toxicity"] for k, _ in splits],
                                   "toxicity probability": [rep[k]["toxicity_probability"] for k, _ in splits]},
                                  ylabel="score / share of prompts (95% CI)")
    chat = {False: "raw-text continuation", True: "prompts as user turns of the chat template", None: "the chat template when there is one"}
    report.add("toxicity", text=(f"{len(prompts)} prompts from {config.toxicity}, {config.toxicity_samples} continuations each "
                                 f"(up to {config.toxicity_max_new_tokens} tokens, temperature {config.toxicity_temperature}, top-p "
                                 f"{config.toxicity_top_p}, {chat[config.toxicity_chat_template]}). Expected maximum toxicity: the mean over "
                                 "prompts of the highest score among a prompt's continuations (± its standard deviation over prompts); "
                                 "toxicity probability: the share of prompts with at least one continuation scored ≥ 0.5 (Gehman et al. "
                                 "2020). 95% bootstrap intervals over prompts. Toxic / non-toxic prompts split by the file's own prompt "
                                 "scores where it has them"
                                 + (f"; every prompt here is one of the {whole_split[0]}, so the row for them is the first row"
                                    if whole_split else "")
                                 + f".\n\nScorer: {scorer.measures}."),
               tables=[("toxicity", rows), ("most toxic continuations", [{"prompt": p.text[:200], "continuation": t[:200], "score": round(v, 4)}
                                                                          for v, p, t in worst])],
               images=[("expected maximum toxicity and toxicity probability", image)],
               data={**rep, "file": config.toxicity, "scorer": scorer.name,
                     "samples": [{"prompt": p.text, "prompt_toxicity": p.toxicity, "continuations": t, "scores": s.tolist()}
                                 for p, t, s in zip(prompts, texts, scores)]})


def add_frontier_section(report, points: list[dict], source: str = "") -> None:
    from preftune.eval import report as rp
    from preftune.eval.frontier import FrontierPoint, frontier_table

    objs = [FrontierPoint(p["name"], p["kl"], tuple(p["kl_ci"]), p["mean_reward"], tuple(p["reward_ci"]), p["n"], p["mean_length"]) for p in points]
    report.add("frontier", text=("Mean reward against the sampled estimate of KL(π‖π_ref) = mean of log π(y|x) − log π_ref(y|x) over "
                                 "responses sampled from each checkpoint on the same prompts (Rafailov et al. 2023, Fig. 2)."
                                 + (f" From {source}." if source else "")),
               tables=[("frontier", frontier_table(objs))], images=[("reward–KL frontier", rp.plot_frontier(points))],
               data={"points": points})


EVAL = Command("eval", "Win rates with judges, text metrics, safety and bias suites, and an HTML report", EvalConfig, run_eval)


# -- frontier -------------------------------------------------------------------------------------------------


class FrontierConfig(BaseConfig):
    checkpoints: list[str] = Field(description="policies to place on the frontier (model folders, run final/ folders, hub ids)")
    names: list[str] = Field(default_factory=list, description="labels of the checkpoints (default: folder names)")
    reference: str = Field("smollm2-135m-instruct", description="the reference policy pi_ref (usually the SFT model)")
    prompts: str = Field(description="prompt set shared by every checkpoint")
    prompt_field: str | None = Field(None, description="the prompt's field (default: detected)")
    reward: str = Field(description="reward: a reward model folder, a combination file, or module:function")
    output_dir: str = Field(description="folder for frontier.json, frontier.png, samples.jsonl and report.html/json")
    limit: int | None = Field(None, ge=1, description="use only the first N prompts")
    samples_per_prompt: int = Field(1, ge=1, description="responses sampled per prompt and checkpoint")
    max_new_tokens: int = Field(64, ge=1, description="most tokens per response")
    temperature: float = Field(1.0, gt=0, description="sampling temperature (1.0 keeps the KL estimate unbiased)")
    seed: int = Field(0, description="sampling seed")
    batch_size: int = Field(8, ge=1, description="prompts decoded and scored together")
    decode_dtype: str = Field("auto", description=DECODE_DTYPE_HELP)
    device: str | None = Field(None, description="cpu, cuda, ... (default: auto)")
    dtype: str | None = Field(None, description="default: fp32 on CPU, bf16 on CUDA")


def _checkpoint_name(path: str) -> str:
    """A label for a checkpoint: its folder name, skipping generic ones (``run/final`` -> ``run``,
    ``run/checkpoints/step-8/model`` -> ``step-8``)."""
    p = Path(path)
    while p.name in ("final", "model") and p.parent != p:
        p = p.parent
    return p.name or path


def run_frontier(config: FrontierConfig) -> int:
    from preftune.eval import report as rp
    from preftune.eval.data import load_prompt_set
    from preftune.eval.frontier import evaluate_policy
    from preftune.generation.engine import SamplingParams
    from preftune.models.loading import load_model, load_tokenizer
    from preftune.rewards.loading import load_reward

    if config.names and len(config.names) != len(config.checkpoints):
        raise PreftuneError(f"--names has {len(config.names)} labels for {len(config.checkpoints)} checkpoints")
    names = config.names or [_checkpoint_name(c) for c in config.checkpoints]
    items = load_prompt_set(config.prompts, field=config.prompt_field, limit=config.limit)
    reward = load_reward(config.reward)
    reference = load_model(config.reference, device=config.device, dtype=config.dtype)
    tokenizer = load_tokenizer(config.reference)
    params = SamplingParams(max_new_tokens=config.max_new_tokens, temperature=config.temperature, seed=config.seed, do_sample=True)
    out_dir = Path(config.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    points, samples = [], []
    for name, ckpt in zip(names, config.checkpoints):
        same = ckpt == config.reference
        policy = reference if same else load_model(ckpt, device=config.device, dtype=config.dtype)
        point, s = evaluate_policy(name, policy, reference, tokenizer, [i.prompt for i in items], reward, params,
                                   samples_per_prompt=config.samples_per_prompt, batch_size=config.batch_size, seed=config.seed,
                                   decode_dtype=config.decode_dtype)
        points.append(point.as_dict())
        samples.extend({"checkpoint": name, **x} for x in s)
        print(f"{name}: KL {point.kl:.4f}, mean reward {point.mean_reward:.4f} ({point.n} samples)")
        if not same:
            del policy
    (out_dir / "frontier.json").write_text(json.dumps({"reference": config.reference, "reward": config.reward,
                                                       "prompts": config.prompts, "points": points}, indent=2))
    (out_dir / "frontier.png").write_bytes(rp.plot_frontier(points))
    with (out_dir / "samples.jsonl").open("w", encoding="utf-8") as f:
        for x in samples:
            f.write(json.dumps(x, ensure_ascii=False) + "\n")
    report = rp.Report("preftune frontier")
    add_frontier_section(report, points, str(out_dir / "frontier.json"))
    report.add("summary", tables=[("settings", [{"setting": k, "value": str(v)} for k, v in config.model_dump().items()])])
    report.write(out_dir)
    print(f"wrote {out_dir / 'frontier.json'}, frontier.png and report.html")
    return 0


FRONTIER = Command("frontier", "Reward against KL(policy || reference) for several checkpoints", FrontierConfig, run_frontier)
