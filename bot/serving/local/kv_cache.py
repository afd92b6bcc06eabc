"""The running batch's KV cache: a transformers ``DynamicCache`` whose layers keep spare columns.

transformers' ``DynamicLayer`` appends a step's keys and values with ``torch.cat``, which copies
the whole cache of every layer at every decode step: with chat-length prompts (800 tokens,
8 rows) that is hundreds of megabytes copied per step, and it showed as 7 % of a profiled load
run even at 48-token prompts. :class:`GrowingLayer` keeps each layer in a buffer with room to
spare and writes the new columns in place; ``keys``/``values`` are views of the buffer's filled
part, so everything that reads them (attention, ``filter``, ``concatenate``) is unchanged. A
layer whose ``keys`` were replaced from outside (``batch_select_indices``, a trim of padding
columns) moves into a new buffer at its next append.

Shapes: keys and values ``(rows, heads, columns, head_dim)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

# Spare columns a buffer gets when it (re)allocates: at least this many, or a quarter more.
MIN_SPARE_COLUMNS = 32


def _room(columns: int) -> int:
    return columns + max(MIN_SPARE_COLUMNS, columns // 4)


class GrowingLayer(DynamicLayer):
    """A ``DynamicLayer`` that appends in place into a buffer with spare columns."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self._key_buffer: torch.Tensor | None = None
        self._value_buffer: torch.Tensor | None = None

    @classmethod
    def holding(cls, keys: torch.Tensor, values: torch.Tensor, spare: bool = True) -> GrowingLayer:
        """A layer that holds ``keys`` and ``values`` (copied into a buffer with spare room)."""
        layer = cls()
        layer.lazy_initialization(keys, values)
        layer._adopt(keys, values, keys.shape[-2], _room(keys.shape[-2]) if spare else keys.shape[-2])
        return layer

    @classmethod
    def zeros(
        cls, keys_like: torch.Tensor, values_like: torch.Tensor, rows: int, columns: int, capacity: int
    ) -> GrowingLayer:
        """A layer of ``rows`` x ``columns`` zero keys and values shaped like ``*_like``
        ``(heads, n, head_dim)``, in a buffer with room for ``capacity`` columns."""
        layer = cls()
        layer.lazy_initialization(keys_like, values_like)
        heads, dim = keys_like.shape[0], keys_like.shape[2]
        layer._key_buffer = keys_like.new_zeros((rows, heads, max(capacity, columns), dim))
        layer._value_buffer = values_like.new_zeros(
            (rows, values_like.shape[0], max(capacity, columns), values_like.shape[2])
        )
        layer.keys = layer._key_buffer[:, :, :columns]
        layer.values = layer._value_buffer[:, :, :columns]
        return layer

    def _owns(self) -> bool:
        buf = self._key_buffer
        return (
            buf is not None
            and self.keys.dim() == 4
            and self.keys.data_ptr() == buf.data_ptr()
            and self.keys.stride() == buf.stride()
            and self.values.data_ptr() == self._value_buffer.data_ptr()
        )

    def _adopt(self, keys: torch.Tensor, values: torch.Tensor, length: int, capacity: int) -> None:
        rows, heads, _, dim = keys.shape
        self._key_buffer = keys.new_empty((rows, heads, capacity, dim))
        self._value_buffer = values.new_empty((rows, heads, capacity, values.shape[-1]))
        self._key_buffer[:, :, :length] = keys[:, :, :length]
        self._value_buffer[:, :, :length] = values[:, :, :length]
        self.keys = self._key_buffer[:, :, :length]
        self.values = self._value_buffer[:, :, :length]

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        if self.keys.dim() != 4 or self.keys.numel() == 0:  # the first update: nothing to keep
            length = 0
            self._adopt(key_states[:, :, :0], value_states[:, :, :0], 0, _room(key_states.shape[-2]))
        else:
            length = self.keys.shape[-2]
            needed = length + key_states.shape[-2]
            if not self._owns() or needed > self._key_buffer.shape[-2]:
                self._adopt(self.keys, self.values, length, _room(needed))
        end = length + key_states.shape[-2]
        self._key_buffer[:, :, length:end] = key_states
        self._value_buffer[:, :, length:end] = value_states
        self.keys = self._key_buffer[:, :, :end]
        self.values = self._value_buffer[:, :, :end]
        return self.keys, self.values


def new_cache(layers: Sequence[tuple[torch.Tensor, torch.Tensor]] = ()) -> DynamicCache:
    """A ``DynamicCache`` of :class:`GrowingLayer`; empty (filled by the first forward) or
    holding ``layers``' keys and values ``(rows, heads, columns, head_dim)``."""
    cache = DynamicCache()
    if layers:
        cache.layers = [GrowingLayer.holding(k, v) for k, v in layers]
    cache.layer_class_to_replicate = GrowingLayer
    return cache


def joined(a: DynamicCache, b: DynamicCache, length: int) -> DynamicCache:
    """``a``'s rows then ``b``'s, each left-padded with zeros to ``length`` columns, in one new
    buffer per layer (one copy of each, with spare room for the next steps).

    The padding must be zeros, not uninitialized memory: masked slots get attention weight 0,
    and 0 times a NaN left in memory would still be NaN."""
    cache = new_cache()
    for la, lb in zip(a.layers, b.layers, strict=True):
        parts = ((la.keys, la.values), (lb.keys, lb.values))
        rows = la.keys.shape[0] + lb.keys.shape[0]
        heads, dim = la.keys.shape[1], la.keys.shape[3]
        capacity = _room(length)
        key_buffer = la.keys.new_zeros((rows, heads, capacity, dim))
        value_buffer = la.values.new_zeros((rows, heads, capacity, la.values.shape[3]))
        row = 0
        for keys, values in parts:
            n, width = keys.shape[0], keys.shape[2]
            key_buffer[row : row + n, :, length - width : length] = keys
            value_buffer[row : row + n, :, length - width : length] = values
            row += n
        layer = GrowingLayer()
        layer.lazy_initialization(la.keys, la.values)
        layer._key_buffer, layer._value_buffer = key_buffer, value_buffer
        layer.keys, layer.values = key_buffer[:, :, :length], value_buffer[:, :, :length]
        cache.layers.append(layer)
    return cache


def bytes_per_token(cache: DynamicCache) -> int:
    """Bytes one token's keys and values take over all layers (one row)."""
    total = 0
    for layer in cache.layers:
        for t in (layer.keys, layer.values):
            total += t.shape[1] * t.shape[3] * t.element_size()
    return total


def row_states(
    cache: DynamicCache, row: int, columns: torch.Tensor
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Copies of one row's keys and values at ``columns`` (a long tensor of column indices):
    one ``(heads, len(columns), head_dim)`` tensor per layer, sharing no memory with the batch."""
    keys = [layer.keys[row].index_select(1, columns) for layer in cache.layers]
    values = [layer.values[row].index_select(1, columns) for layer in cache.layers]
    return keys, values
