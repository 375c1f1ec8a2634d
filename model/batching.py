"""Seeded data order shared by the training stages: which split a row falls in, which rows a stage picks, and
the one global-batch sampler (sft, train_rm and ppo draw their batches from it).

Everything here is a function of (seed, row ids or item count): the same rows land the same way on every run
and every rank, whatever the file order.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

import numpy as np
import torch


def hash_fraction(row_id: str, seed: int, purpose: str) -> float:
    """A uniform number in [0, 1) fixed by (seed, purpose, row id): the same row always lands the same way."""
    digest = hashlib.sha256(f"{seed}\x1f{purpose}\x1f{row_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def seeded_subset(rows: list[dict[str, Any]], limit: int | None, seed: int, purpose: str) -> list[dict[str, Any]]:
    """At most `limit` rows chosen by a seeded hash of their `id` (independent of file order), kept in file order."""
    if limit is None or len(rows) <= limit:
        return rows
    chosen = sorted(range(len(rows)), key=lambda i: hash_fraction(str(rows[i]["id"]), seed, purpose))[:limit]
    return [rows[i] for i in sorted(chosen)]


class ShuffledBatches:
    """A resumable `BatchSource` over a list: a seeded reshuffle every epoch, `batch_size` items per rank per batch.

    Epoch e visits the items in the permutation seeded by (seed, e), so the whole state is
    `{"seed", "epoch", "position"}` (position: items of epoch e already drawn) and a resumed run draws exactly
    the batches an uninterrupted one would.

    With `world_size` ranks every rank draws the same global batch of `batch_size * world_size` items and
    collates its own slice (rank r: items r * batch_size onwards), so N ranks x B/N see exactly the items of
    1 rank x B and the state is the same on every rank. `collate` turns a rank's items into its batch.
    With `loss_weight` (item -> its share of the loss, e.g. supervised tokens) each batch, a dict, also holds
    `loss_normaliser` (0-d float): the global batch's total weight / world_size, so that a loss summed over a
    rank's slice and divided by it averages, over ranks, to the weighted mean of the global batch.
    """

    def __init__(
        self,
        items: list[Any],
        batch_size: int,
        seed: int,
        collate: Callable[[list[Any]], Any] = list,
        rank: int = 0,
        world_size: int = 1,
        loss_weight: Callable[[Any], float] | None = None,
    ) -> None:
        if not items:
            raise ValueError("ShuffledBatches: no items to draw batches from")
        self.items, self.batch_size, self.seed, self.collate = items, batch_size, seed, collate
        self.rank, self.world_size, self.loss_weight = rank, world_size, loss_weight
        self.epoch, self.position = 0, 0
        self._order = self._permutation()

    def _permutation(self) -> np.ndarray:
        return np.random.default_rng([self.seed, self.epoch]).permutation(len(self.items))

    def next_global_items(self) -> list[Any]:
        """The next `batch_size * world_size` items (crossing into the next epoch's order when one ends)."""
        picked: list[Any] = []
        global_size = self.batch_size * self.world_size
        while len(picked) < global_size:
            if self.position == len(self.items):
                self.epoch, self.position = self.epoch + 1, 0
                self._order = self._permutation()
            take = min(global_size - len(picked), len(self.items) - self.position)
            picked.extend(self.items[i] for i in self._order[self.position : self.position + take])
            self.position += take
        return picked

    def next_batch(self) -> Any:
        picked = self.next_global_items()
        batch = self.collate(picked[self.rank * self.batch_size : (self.rank + 1) * self.batch_size])
        if self.loss_weight is not None:
            total = sum(self.loss_weight(item) for item in picked)
            batch["loss_normaliser"] = torch.tensor(total / self.world_size, dtype=torch.float32)
        return batch

    def state_dict(self) -> dict[str, int]:
        return {"seed": self.seed, "epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.seed, self.epoch, self.position = int(state["seed"]), int(state["epoch"]), int(state["position"])
        self._order = self._permutation()
