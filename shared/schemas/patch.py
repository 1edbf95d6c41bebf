"""Body of ``PATCH /api/v1/runs/{id}`` (``pyrecover extend``): the settings a run may change later."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from shared.training import FROZEN_FIELDS
from shared.unknown_fields import refuse_unknown


class RunPatch(BaseModel):
    """Fields to change in the run's spec, by part: ``{"training": {"training_steps": 2000}}``.

    The merged spec is validated like a new run. Fields that may not change between attempts
    (``shared.training.FROZEN_FIELDS``) are refused; the next attempt uses the new values.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    training: Annotated[dict[str, Any], Field(max_length=64)] = Field(default_factory=dict)
    policy: Annotated[dict[str, Any], Field(max_length=16)] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _known(cls, data: Any) -> Any:
        return refuse_unknown(cls, data)

    @field_validator("training")
    @classmethod
    def _not_frozen(cls, v: dict[str, Any]) -> dict[str, Any]:
        frozen = sorted(set(v) & set(FROZEN_FIELDS))
        if frozen:
            raise ValueError(
                f"{', '.join(frozen)} may not change between attempts (the run's checkpoints would no "
                "longer match them); submit a new run instead"
            )
        return v
