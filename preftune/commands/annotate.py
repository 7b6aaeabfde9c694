"""``preftune annotate serve | add-annotator | stats | export``: collecting human feedback (see :mod:`preftune.feedback`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import Field

from preftune.commands.evaluate import SamplingOptions
from preftune.config import BaseConfig, Command
from preftune.errors import PreftuneError

Task = Literal["pairwise", "ranking", "correction", "rating", "rules"]


class ServeConfig(SamplingOptions):
    db: str = Field("feedback.sqlite", description="the feedback database (created when missing)")
    prompts: str | None = Field(None, description="prompt set whose items are added (none: serve the items already in --db)")
    candidates: str | None = Field(None, description="candidate responses: JSON lines of prompt / response (what 'preftune generate --num-samples K' writes)")
    model: str | None = Field(None, description="generate the candidates with this model instead of --candidates")
    num_samples: int = Field(4, ge=1, description="candidates sampled per prompt with --model")
    temperature: float = Field(0.8, ge=0, description="sampling temperature of the candidates (--model)")
    tasks: list[Task] = Field(default_factory=lambda: ["pairwise"], description="tasks to make items for: pairwise ranking correction rating rules")
    rules: str | None = Field(None, description="YAML rule list of the rules task (default: the project's list)")
    overlap: int = Field(1, ge=1, description="annotators per item (k > 1 measures agreement)")
    pairs_per_prompt: int = Field(1, ge=1, description="pairwise / correction items drawn per prompt")
    ranking_size: int = Field(4, ge=2, description="most responses in a ranking item")
    host: str = Field("127.0.0.1", description="address to listen on (127.0.0.1: this machine only)")
    port: int = Field(8000, ge=0, le=65535, description="port")
    max_body_bytes: int = Field(64 * 1024, ge=1024, description="largest request body accepted")
    base_url: str | None = Field(None, description="address printed in links (default: http://HOST:PORT)")


def _base(config) -> str:
    return (config.base_url or f"http://{config.host}:{config.port}").rstrip("/")


def load_items(config: ServeConfig, store) -> None:
    """Add the items of ``config.prompts`` (with candidates from a file or generated) to the store."""
    from preftune.eval.data import load_generations, load_prompt_set
    from preftune.feedback.items import build_items, group_candidates
    from preftune.feedback.rules import load_rules

    if config.candidates and config.model:
        raise PreftuneError("give either --candidates FILE or --model M (to generate them), not both")
    if not config.candidates and not config.model:
        raise PreftuneError("--prompts needs the responses to judge: --candidates FILE or --model M --num-samples K")
    prompts = [p.prompt for p in load_prompt_set(config.prompts, field=config.prompt_field, limit=config.limit)]
    if config.candidates:
        rows = load_generations(config.candidates)
        responses = group_candidates(prompts, [(g.prompt, g.response) for g in rows], config.candidates)
    else:
        from preftune.commands.evaluate import _Models, generate_responses

        if config.num_samples > 1 and config.temperature == 0:
            raise PreftuneError("--num-samples > 1 needs --temperature > 0 (greedy gives identical responses)")
        model, tokenizer = _Models(config.device, config.dtype).get(config.model)
        flat = generate_responses(model, tokenizer, prompts, config, config.num_samples)
        k = config.num_samples
        responses = [list(dict.fromkeys(r["response"] for r in flat[i * k:(i + 1) * k] if r["response"].strip()))
                     for i in range(len(prompts))]
    rules = [r.text for r in load_rules(config.rules)] if "rules" in config.tasks else []
    for task in config.tasks:
        items, notes = build_items(task, prompts, responses, seed=config.seed, pairs_per_prompt=config.pairs_per_prompt,
                                   ranking_size=config.ranking_size)
        for note in notes:
            print(f"{task}: left out: {note}")
        added = store.add_items(task, items, rules=rules if task == "rules" else ())
        print(f"{task}: {added} new items ({len(items) - added} already in {config.db})")


def run_serve(config: ServeConfig) -> int:
    import uvicorn

    from preftune.feedback.app import create_app
    from preftune.feedback.store import FeedbackStore

    store = FeedbackStore(config.db, overlap=config.overlap)
    if config.prompts:
        load_items(config, store)
    elif config.candidates or config.model:
        raise PreftuneError("--candidates / --model need --prompts (the prompts to annotate)")
    if not store.count_items():
        raise PreftuneError(f"{config.db} has no items: give --prompts with --candidates or --model")
    if not store.has_admin():
        token = store.add_annotator("admin", admin=True)
        print(f"admin statistics page (keep it private): {_base(config)}/stats/{token}")
    names = [a.name for a in store.annotators() if not a.is_admin]
    print(f"items: {store.count_items()}; annotators: {', '.join(names) or 'none yet (preftune annotate add-annotator NAME)'}")
    uvicorn.run(create_app(store, max_body_bytes=config.max_body_bytes), host=config.host, port=config.port,
                log_level="warning")
    return 0


class AddAnnotatorConfig(BaseConfig):
    name: str = Field(description="the annotator's name")
    db: str = Field("feedback.sqlite", description="the feedback database")
    admin: bool = Field(False, description="an admin (sees the statistics page and API)")
    host: str = Field("127.0.0.1", description="host of the printed link")
    port: int = Field(8000, description="port of the printed link")
    base_url: str | None = Field(None, description="address printed in the link (default: http://HOST:PORT)")


def run_add_annotator(config: AddAnnotatorConfig) -> int:
    from preftune.feedback.store import FeedbackStore

    token = FeedbackStore(config.db).add_annotator(config.name, admin=config.admin)
    page = "stats" if config.admin else "a"
    print(f"{_base(config)}/{page}/{token}")
    return 0


class StatsConfig(BaseConfig):
    db: str = Field("feedback.sqlite", description="the feedback database")
    json: bool = Field(False, description="print JSON instead of text")
    judges: list[str] = Field(default_factory=list, description="also the agreement of these judges with the people (as preftune eval's --judges: reward:SPEC, llm, llm:MODEL, http:MODEL)")
    judge_base_url: str | None = Field(None, description="base URL of an OpenAI-compatible server for http judges")
    device: str | None = Field(None, description="device of model judges (default: auto)")


def run_stats(config: StatsConfig) -> int:
    from preftune.feedback.stats import feedback_stats, format_stats, judge_agreement

    stats = feedback_stats(config.db)
    if config.judges:
        from preftune.eval.judges import build_judge

        judges = [build_judge(spec, base_url=config.judge_base_url, device=config.device) for spec in config.judges]
        stats["judges"] = judge_agreement(config.db, judges)
    print(json.dumps(stats, indent=2) if config.json else format_stats(stats))
    return 0


class ExportConfig(BaseConfig):
    db: str = Field("feedback.sqlite", description="the feedback database")
    task: Literal["pairwise", "ranking", "correction", "rating", "rules", "judgements"] = Field(
        description="pairwise (preference + margin), ranking, correction, rating (prompt/response/rating), rules (rule format), "
                    "judgements (the file of 'preftune eval --judges human:FILE')")
    out: str = Field(description="JSON-lines file to write")
    keep_ties: bool = Field(True, description="judgements: keep ties as preference 'tie' (pairwise preference rows never hold ties)")


def run_export(config: ExportConfig) -> int:
    from preftune.feedback.export import write_export

    if not Path(config.db).is_file():
        raise PreftuneError(f"no feedback database {config.db}")
    result = write_export(config.db, config.task, config.out, keep_ties=config.keep_ties)
    print(f"wrote {result.summary()} to {config.out}")
    return 0


SERVE = Command("annotate serve", "Serve the annotation web app (pairwise, ranking, correction, rating, rules)", ServeConfig,
                run_serve, description="Add items from --prompts with --candidates (or --model M --num-samples K) to --db and "
                                       "serve the annotation app on 127.0.0.1 (uvicorn).")
ADD_ANNOTATOR = Command("annotate add-annotator", "Add an annotator and print their private link", AddAnnotatorConfig,
                       run_add_annotator, positional=("name",))
STATS = Command("annotate stats", "Counts, agreement (Cohen, Fleiss, Krippendorff) and position bias of the feedback",
                StatsConfig, run_stats)
EXPORT = Command("annotate export", "Export feedback as preference / ranking / correction / rating / rule / judgement files",
                 ExportConfig, run_export)
