"""Key/value cache buffers that grow in place, shared by the scorer and the policy's generator.

transformers' ``DynamicLayer`` concatenates on every update, copying the whole cache once per
forward. :class:`BufferLayer` preallocates and writes in place instead (``Cache(layers=
buffer_layers(model, capacity))``); :func:`grown` is its allocate-then-copy growth, also used by the
scorer's session pool (``scoring/hf_session.py``).
"""

from __future__ import annotations

import torch
from transformers.cache_utils import DynamicLayer


class BufferLayer(DynamicLayer):
    """A cache layer over one preallocated buffer: appends write in place, ``truncate`` drops the tail.

    ``DynamicLayer`` concatenates on every update, copying the whole cache once per forward: O(L)
    per scored point here, and per step in an online session. The buffer grows by doubling.
    """

    def __init__(self, capacity: int) -> None:
        super().__init__()
        self.capacity = capacity
        self.length = 0

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        batch, heads, _, dim = key_states.shape
        self.dtype, self.device = key_states.dtype, key_states.device
        self._keys = key_states.new_empty(batch, heads, self.capacity, dim)  # (B, kv_heads, capacity, d)
        self._values = value_states.new_empty(batch, heads, self.capacity, value_states.shape[-1])
        self.is_initialized = True

    def reserve(self, capacity: int) -> None:
        """Make room for ``capacity`` tokens, keeping the first ``length``."""
        if capacity <= self.capacity:
            return
        size = max(capacity, 2 * self.capacity)
        if self.is_initialized:
            self._keys, self._values = (grown(self._keys, size, self.length),
                                        grown(self._values, size, self.length))
            self.truncate(self.length)
        self.capacity = size

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        self.write(self.length, key_states, value_states)
        return self.keys, self.values

    def write(self, start: int, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        """Store keys/values ``(B, kv_heads, n, d)`` at positions ``start..start+n−1``; length becomes the end."""
        end = start + key_states.shape[-2]
        self.reserve(end)
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        self._keys[:, :, start:end] = key_states
        self._values[:, :, start:end] = value_states
        self.truncate(end)

    def truncate(self, length: int) -> None:
        self.length = length
        if self.is_initialized:
            self.keys, self.values = self._keys[:, :, :length], self._values[:, :, :length]

    def get_seq_length(self) -> int:
        return self.length


def grown(buffer: torch.Tensor, capacity: int, keep: int, zeros: bool = False) -> torch.Tensor:
    """A copy of a (B, heads, C, d) cache buffer with room for ``capacity`` positions, its first ``keep``
    kept. The new buffer is allocated before anything changes: a failed allocation loses nothing."""
    new = (buffer.new_zeros if zeros else buffer.new_empty)(*buffer.shape[:2], capacity, buffer.shape[3])
    new[:, :, :keep] = buffer[:, :, :keep]
    return new


def buffer_layers(model, capacity: int) -> list[BufferLayer]:
    """One empty :class:`BufferLayer` per decoder layer of ``model``, each with room for ``capacity`` tokens."""
    num_layers = model.config.get_text_config(decoder=True).num_hidden_layers
    return [BufferLayer(capacity) for _ in range(num_layers)]
