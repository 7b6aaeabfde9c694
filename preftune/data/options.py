"""How the native formats of public datasets become examples: :class:`ReadOptions`, the choices every data-reading
command takes as flags (``--lang``, ``--binarize``, ``--weights``, …), read by :mod:`preftune.data.native`."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, Field, create_model


def _parse_weights(value: Any) -> Any:
    """``"helpfulness=1,verbosity=-0.5"`` (a flag's text) → ``{"helpfulness": 1.0, "verbosity": -0.5}``."""
    if not isinstance(value, str):
        return value
    weights = {}
    for part in filter(None, (p.strip() for p in value.split(","))):
        name, eq, number = part.partition("=")
        try:
            weights[name.strip()] = float(number)
        except ValueError:
            raise ValueError(f"expected attribute=number pairs separated by commas, got '{part}'") from None
        if not eq or not name.strip():
            raise ValueError(f"expected attribute=number pairs separated by commas, got '{part}'")
    if not weights:
        raise ValueError("no attribute=number pairs")
    return weights


class ReadOptions(BaseModel):
    """How the native formats of public datasets become examples (every data-reading command's flags)."""

    lang: str = Field("en", description="oasst: keep messages in these languages (comma-separated codes, or 'all'); "
                                        "others are dropped and counted")
    binarize: Literal["best_vs_random", "best_vs_worst", "all_pairs"] = Field(
        "best_vs_random", description="ratings: best vs a random lower-rated one (Zephyr, UltraFeedback-binarized), "
                                      "best vs worst, or all pairs whose rating gap is at least --min-gap")
    min_gap: float = Field(0.0, ge=0.0, description="ratings: a pair's rating gap must be at least this (and always > 0)")
    rating_field: str | None = Field(None, description="ratings: the rating that orders responses (default: UltraFeedback "
                                                       "fine-grained_score, HelpSteer helpfulness, else rating)")
    weights: Annotated[dict[str, float] | None, BeforeValidator(_parse_weights)] = Field(None, description="ratings: order by a weighted sum of attributes instead, "
                                                               "e.g. helpfulness=1,verbosity=-0.5")
    binarize_seed: int = Field(0, description="ratings: seed of best_vs_random's choice (per prompt, so a --limit keeps it)")
    min_score_ratio: float = Field(2.0, ge=1.0, description="scored (SHP): keep pairs whose score ratio is at least this")
    redteam_success_rating: float = Field(3.0, gt=0.0, le=4.0, description="redteam: a transcript rated at least this "
                                          "(0 = the attack failed … 4 = it succeeded) broke the rule; under it, the rule held")

    def languages(self) -> set[str] | None:
        """The kept language codes (None: all)."""
        codes = {c.strip() for c in self.lang.split(",") if c.strip()}
        return None if not codes or "all" in codes else codes

    @classmethod
    def of(cls, config: Any) -> ReadOptions:
        """The read options of a command's config (a class made by :func:`with_read_options`)."""
        return cls(**{name: getattr(config, name) for name in cls.model_fields if hasattr(config, name)})


def with_read_options(config_cls: type[BaseModel]) -> type[BaseModel]:
    """A command's config class with :class:`ReadOptions`' fields added after its own (so ``--help`` lists them last)."""
    fields = {name: (info.annotation, info) for name, info in ReadOptions.model_fields.items()}
    return create_model(config_cls.__name__, __base__=config_cls, __module__=config_cls.__module__,
                        __doc__=config_cls.__doc__, **fields)
