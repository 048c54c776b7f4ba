"""The base of every settings model."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class ConfigModel(BaseModel):
    """A frozen part of the settings; an unknown key is an error, so a typo cannot pass unseen."""

    model_config = ConfigDict(frozen=True, extra="forbid")
