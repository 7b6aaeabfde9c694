"""Run folders: the resolved config, per-step metrics as JSON lines, checkpoints, and report_to.

Layout of ``output_dir``::

    config.yaml          the resolved config of the run
    metrics.jsonl        one JSON object per logged step: {"step": n, "loss": ..., ...}
    checkpoints/step-N/  whatever the trainer saves to resume exactly (model, optimizer, scheduler, RNG, data position)
    final/               the final model in Hugging Face format, with a model card (README.md)
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from preftune.distributed import is_main_process
from preftune.errors import PreftuneError

_STEP_DIR = re.compile(r"^step-(\d+)$")


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item") and callable(value.item):  # torch / numpy scalars
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


class RunDir:
    """One run's output folder."""

    def __init__(self, output_dir: str | Path, report_to: Iterable[str] = (), run_name: str | None = None):
        self.path = Path(output_dir)
        self.path.mkdir(parents=True, exist_ok=True)
        self.metrics_path = self.path / "metrics.jsonl"
        self.checkpoints_dir = self.path / "checkpoints"
        self.final_dir = self.path / "final"
        self._writers: list[Any] = []
        # under a multi-process launch every process opens the run folder; only the main one writes to it
        self.writes = is_main_process()
        for target in report_to if self.writes else ():
            self._writers.append(_open_reporter(target, self.path, run_name or self.path.name))

    # -- config ---------------------------------------------------------------------------------
    def save_config(self, config: BaseModel | dict) -> Path:
        data = config.model_dump(mode="json") if isinstance(config, BaseModel) else dict(config)
        out = self.path / "config.yaml"
        if not self.writes:
            return out
        out.write_text(yaml.safe_dump(data, sort_keys=False))
        return out

    def record(self, key: str, value: Any) -> None:
        """Add (or replace) a top-level ``key`` of ``config.yaml``: a setting the trainer decided (the precision)."""
        out = self.path / "config.yaml"
        if not self.writes:
            return
        data = yaml.safe_load(out.read_text()) if out.exists() else {}
        data = {**(data or {}), key: value}
        out.write_text(yaml.safe_dump(data, sort_keys=False))

    # -- metrics --------------------------------------------------------------------------------
    def log(self, step: int, metrics: dict[str, Any]) -> None:
        """Append one line ``{"step": step, **metrics}`` to metrics.jsonl (and mirror to report_to)."""
        if not self.writes:
            return
        row = {"step": int(step), **{k: _jsonable(v) for k, v in metrics.items()}}
        with self.metrics_path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        for writer in self._writers:
            writer(step, row)

    def truncate_metrics(self, after_step: int) -> None:
        """Drop logged rows past ``after_step`` (on resume, so the curve equals an uninterrupted run's)."""
        if not self.writes or not self.metrics_path.exists():
            return
        rows = [r for r in read_metrics(self.metrics_path) if r.get("step", 0) <= after_step]
        self.metrics_path.write_text("".join(json.dumps(r) + "\n" for r in rows))

    # -- checkpoints ----------------------------------------------------------------------------
    def checkpoint_dir(self, step: int) -> Path:
        return self.checkpoints_dir / f"step-{step}"

    def checkpoints(self) -> list[tuple[int, Path]]:
        if not self.checkpoints_dir.exists():
            return []
        found = []
        for p in self.checkpoints_dir.iterdir():
            m = _STEP_DIR.match(p.name)
            if m and (p / "COMPLETE").exists():
                found.append((int(m.group(1)), p))
        return sorted(found)

    def latest_checkpoint(self) -> Path | None:
        found = self.checkpoints()
        return found[-1][1] if found else None

    # -- the model card ---------------------------------------------------------------------------
    def write_model_card(self, *, method: str, paper: str, base_model: str, data: dict[str, Any],
                         metrics: dict[str, Any] | None = None, folder: str | Path | None = None) -> Path:
        """``final/README.md``: what the model is and how it was made — base model, method and paper, the data with
        counts, the resolved config (``config.yaml``), the last logged metrics (or ``metrics``), the preftune version.
        The YAML front matter follows the Hugging Face model-card convention, so the hub shows it."""
        from preftune import __version__

        folder = Path(folder) if folder is not None else self.final_dir
        folder.mkdir(parents=True, exist_ok=True)
        config = (self.path / "config.yaml").read_text() if (self.path / "config.yaml").exists() else ""
        if metrics is None:
            rows = read_metrics(self.metrics_path) if self.metrics_path.exists() else []
            metrics = {k: v for row in rows for k, v in row.items()}  # the last value of every metric
        front = yaml.safe_dump({"library_name": "transformers", "base_model": base_model,
                                "tags": ["preftune", method.split()[0]]}, sort_keys=False)
        lines = ["---", front.rstrip(), "---", "", f"# {self.path.name}", "",
                 f"Trained with preftune {__version__}: **{method}** ({paper}) from `{base_model}`.", "", "## Data", ""]
        lines += [f"- {k}: {v}" for k, v in data.items()]
        lines += ["", "## Final metrics", "", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {_jsonable(v) if not isinstance(v, float) else f'{v:.6g}'} |" for k, v in metrics.items()]
        lines += ["", "## Config", "", "```yaml", config.rstrip(), "```", ""]
        path = folder / "README.md"
        path.write_text("\n".join(lines))
        return path

    def close(self) -> None:
        for writer in self._writers:
            close = getattr(writer, "close", None)
            if close:
                close()


def push_to_hub(folder: str | Path, repo_id: str, *, private: bool = False) -> str:
    """``--push-to-hub``: upload a saved model folder (``final/``: weights, tokenizer, model card) to the Hugging Face Hub
    repo ``repo_id``, created when missing; returns the repo's URL. The token is huggingface_hub's usual one (HF_TOKEN,
    or ``hf auth login``'s). A failure (no token, no network, no right to the repo) is a :class:`PreftuneError` that
    says the model is safe on disk and how to upload it later."""
    from huggingface_hub import HfApi, get_token

    folder = Path(folder)
    if not folder.is_dir():
        raise PreftuneError(f"--push-to-hub {repo_id}: {folder} does not exist; nothing to upload")
    if get_token() is None:
        raise PreftuneError(f"--push-to-hub {repo_id}: no Hugging Face token (set HF_TOKEN or run `hf auth login`); the "
                            f"model is saved in {folder}; upload it later with `hf upload {repo_id} {folder}`")
    api = HfApi()
    try:
        url = str(api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model"))
        api.upload_folder(repo_id=repo_id, folder_path=str(folder), repo_type="model",
                          commit_message=f"preftune: upload {folder.parent.name}")
    except Exception as err:  # huggingface_hub's HTTP, token, offline-mode and connection errors alike
        raise PreftuneError(f"--push-to-hub {repo_id}: the upload failed ({type(err).__name__}: {err}); the model is saved "
                            f"in {folder}; upload it later with `hf upload {repo_id} {folder}`") from err
    return url


def read_metrics(path: str | Path) -> list[dict]:
    """Rows of a metrics.jsonl file (a run folder or the file itself)."""
    path = Path(path)
    if path.is_dir():
        path = path / "metrics.jsonl"
    if not path.exists():
        raise PreftuneError(f"{path} does not exist (is it a preftune run folder?)")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def resolve_resume(run: RunDir, resume: bool | str | None) -> Path | None:
    """``--resume`` alone: the latest complete checkpoint of the run folder; ``--resume PATH``: that checkpoint."""
    if not resume:
        return None
    if resume is True or str(resume).lower() in ("true", "latest"):
        latest = run.latest_checkpoint()
        if latest is None:
            raise PreftuneError(f"--resume: no complete checkpoint under {run.checkpoints_dir}")
        return latest
    path = Path(str(resume))
    if not (path / "COMPLETE").exists():
        raise PreftuneError(f"--resume: {path} is not a complete checkpoint (no COMPLETE marker)")
    return path


class _TensorBoard:
    def __init__(self, logdir: Path):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as err:  # tensorboard not installed
            raise PreftuneError("report_to=tensorboard needs the 'tensorboard' package (pip install tensorboard)") from err
        self.writer = SummaryWriter(str(logdir))

    def __call__(self, step: int, row: dict) -> None:
        for k, v in row.items():
            if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool):
                self.writer.add_scalar(k, v, step)

    def close(self) -> None:
        self.writer.close()


class _WandB:
    def __init__(self, run_name: str):
        try:
            import wandb
        except ImportError as err:
            raise PreftuneError("report_to=wandb needs the 'wandb' package (pip install wandb)") from err
        self.run = wandb.init(name=run_name, reinit=True)

    def __call__(self, step: int, row: dict) -> None:
        self.run.log({k: v for k, v in row.items() if k != "step"}, step=step)

    def close(self) -> None:
        self.run.finish()


def _open_reporter(target: str, path: Path, run_name: str):
    if target == "tensorboard":
        return _TensorBoard(path / "tensorboard")
    if target == "wandb":
        return _WandB(run_name)
    raise PreftuneError(f"report_to: unknown target '{target}' (choose from tensorboard, wandb)")
