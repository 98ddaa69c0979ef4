"""Which square input sides a model accepts, checkable before anything is built or trained."""

from __future__ import annotations

from dataclasses import dataclass

from ich_keras.errors import UserError


@dataclass(frozen=True)
class ImageSizes:
    """Input sides that are multiples of `multiple` and at least `minimum`; `requirement` says so to the user."""

    multiple: int = 1
    minimum: int = 1
    requirement: str = ""

    def check(self, image_size: int, key: str = "image_size") -> None:
        """Raises a UserError stating the requirement when `image_size` does not meet it, naming it as `key` (the
        config key or flag the user gave it as)."""
        if image_size < self.minimum or image_size % self.multiple:
            raise UserError(f"{self.requirement}. Received: {key}={image_size}")
