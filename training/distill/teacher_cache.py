"""Teacher outputs computed once per training image and reused every epoch.

Only valid when the training set is not augmented (the same index always yields the same
image). Stored on CPU in float16; tokens only when feature KD needs them.
"""
from __future__ import annotations

import time
from typing import Dict, Iterable, List, Optional, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

_KEYS = ("heatmap", "size", "offset")


class TeacherCache:
    """``cache.lookup(indices, device)`` -> batched teacher outputs for those dataset items."""

    def __init__(self, keep_tokens: bool = False) -> None:
        self.keep_tokens = keep_tokens
        self._store: Dict[int, Dict[str, torch.Tensor]] = {}
        #: Wall-clock seconds spent filling the cache (reported apart from student training).
        self.seconds = 0.0

    def __len__(self) -> int:
        return len(self._store)

    @torch.no_grad()
    def fill(self, teacher: nn.Module, dataset, indices: Optional[Iterable[int]] = None,
             batch_size: int = 16, device: torch.device = torch.device("cpu"), progress: bool = True) -> None:
        """Run the teacher over ``dataset[indices]`` (all items by default)."""
        start = time.perf_counter()
        todo: List[int] = [i for i in (range(len(dataset)) if indices is None else indices)
                           if i not in self._store]
        teacher.eval()
        bar = tqdm(total=len(todo), desc="teacher cache", unit="img", disable=not progress)
        for lo in range(0, len(todo), batch_size):
            chunk = todo[lo:lo + batch_size]
            images = torch.stack([dataset[i][0] for i in chunk]).to(device)
            out = teacher(images)
            for j, idx in enumerate(chunk):
                self._store[idx] = self._pack(out, j)
            bar.update(len(chunk))
        bar.close()
        self.seconds += time.perf_counter() - start

    def _pack(self, out: Dict[str, torch.Tensor], j: int) -> Dict[str, torch.Tensor]:
        keys = _KEYS + (("tokens",) if self.keep_tokens else ())
        return {k: out[k][j].detach().to("cpu", torch.float16) for k in keys}

    def lookup(self, indices: Sequence[int], device: torch.device) -> Dict[str, torch.Tensor]:
        missing = [i for i in indices if i not in self._store]
        if missing:
            raise KeyError(f"teacher cache has no outputs for dataset items {missing[:5]}")
        keys = self._store[indices[0]].keys()
        return {k: torch.stack([self._store[i][k] for i in indices]).to(device).float() for k in keys}
