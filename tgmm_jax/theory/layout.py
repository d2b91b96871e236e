"""Named slots of a token's feature vector: ``Layout((("x", D), ("one", 1), ...))``."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Layout:
    """Consecutive named slots; ``layout["x"]`` is the list of feature indices of slot x."""

    slots: tuple[tuple[str, int], ...]

    @property
    def width(self) -> int:
        return sum(size for _, size in self.slots)

    def __getitem__(self, name: str) -> list[int]:
        start = 0
        for slot, size in self.slots:
            if slot == name:
                return list(range(start, start + size))
            start += size
        raise KeyError(name)
