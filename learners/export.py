"""A really smaller artefact: bit-packed low-bit weights, sparsity bitmaps, and the shrunk architecture.

File layout: ``MCZ2`` | binary header | payload. The header is a few dozen bytes of LEB128 varints: the input
shape, the width of every Linear/Conv layer (in module order), and per compressed layer its index in that order
(continued by the model's Embedding layers, in module order),
weight bits, activation bits, sparse-index kind (none, bitmap or gap-code width; 255 for a layer whose weight is
tied to an earlier layer's, stored there), kept-weight count and gap-code count; names, shapes and section lengths
follow from the skeleton. (``MCZ1`` files — a zlib-compressed JSON
header of a few hundred bytes, which outweighed the payload of the smallest students — still load.)

The payload holds, per tensor, byte-aligned sections in this order: index of the kept positions (sparse layers: a
bitmap, or packed gap codes when cheaper, see :func:`metacompress.learners.measure.sparse_index`), packed codes
(or fp16/fp32 values) of the kept weights, per-channel fp32 scales (quantized layers). Its size is exactly
:func:`metacompress.learners.measure.size_bytes`; the header adds a few dozen bytes.

Loading rebuilds the model from a *skeleton* (the teacher's architecture): channels are removed to the recorded
widths, layers become quantization-aware at their recorded bit-widths, and the weights are filled in, so the
loaded model computes exactly what the exported one did. Nothing is unpickled.
"""

from __future__ import annotations

import copy
import json
import struct
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from metacompress.spaces import ConfigError

from .measure import _SKIP_BUFFERS, index_gaps, sparse_index, unique_state
from .prune import shrink, structure_of
from .quant import is_compressed, qmax, quantize_codes, tied_layers, to_quantized

__all__ = ["export_compressed", "load_compressed"]

MAGIC = b"MCZ2"
MAGIC_V1 = b"MCZ1"
_TIED = 255  # sparse-index kind of a layer whose weight is an earlier layer's (no payload of its own)


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


class _Cursor:
    def __init__(self, raw: bytes, pos: int) -> None:
        self.raw, self.pos = raw, pos

    def varint(self) -> int:
        n, shift = 0, 0
        while True:
            byte = self.raw[self.pos]
            self.pos += 1
            n |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                return n


def _pack(codes: np.ndarray, bits: int) -> bytes:
    bitplanes = (codes.astype(np.uint32)[:, None] >> np.arange(bits, dtype=np.uint32)) & 1
    return np.packbits(bitplanes.astype(np.uint8).ravel(), bitorder="little").tobytes()


def _unpack(buf: bytes, n: int, bits: int) -> np.ndarray:
    flat = np.unpackbits(np.frombuffer(buf, dtype=np.uint8), bitorder="little")[: n * bits]
    return (flat.reshape(n, bits).astype(np.uint32) << np.arange(bits, dtype=np.uint32)).sum(1)


def _encode_index(mask: torch.Tensor, width: int) -> tuple[bytes, int]:
    """Gap codes of the kept positions (see ``sparse_index``) packed at ``width`` bits, and their count."""
    esc = 2**width - 1
    gaps = index_gaps(mask).numpy()
    n_esc = gaps // esc
    codes = np.full(int(n_esc.sum()) + len(gaps), esc, dtype=np.uint32)
    # each kept weight's code comes after its escapes
    codes[np.cumsum(n_esc + 1) - 1] = gaps % esc
    return _pack(codes, width), len(codes)


def _decode_index(buf: bytes, n: int, width: int, count: int) -> np.ndarray:
    esc = 2**width - 1
    codes = _unpack(buf, count, width).astype(np.int64)
    keep = codes != esc
    pos = np.cumsum(np.where(keep, codes + 1, esc)) - 1
    mask = np.zeros(n, dtype=bool)
    mask[pos[keep]] = True
    return mask


def _layer_order(model: nn.Module, producers: Sequence[str]) -> list[str]:
    """The header's layer order: the Linear/Conv ``producers`` (:func:`structure_of`), then Embedding layers, in
    module order (files written before embeddings were compressed index the first part only)."""
    return [*producers, *(n for n, m in model.named_modules() if isinstance(m, nn.Embedding))]


def _weight_sections(mod: nn.Module) -> tuple[dict, list[bytes]]:
    w = mod.weight.detach().float().cpu()
    mask = None if mod.weight_mask is None else mod.weight_mask.detach().cpu().bool()
    w = w if mask is None else w * mask
    entry: dict = {"b": mod.w_bits, "s": list(w.shape)}
    parts: list[bytes] = []
    if mask is not None:
        width, _ = sparse_index(mask)
        entry["nnz"] = int(mask.sum())
        if width == 0:
            entry["m"] = 1
            parts.append(np.packbits(mask.numpy().ravel()).tobytes())
        else:
            index, count = _encode_index(mask, width)
            entry.update({"m": 2, "iw": width, "ic": count})
            parts.append(index)
    keep = slice(None) if mask is None else mask.flatten().numpy()
    if mod.w_bits < 16:
        codes, scale = quantize_codes(w, mod.w_bits)
        vals = (codes.flatten().numpy()[keep].astype(np.int16) + qmax(mod.w_bits)).astype(np.uint8)
        parts += [_pack(vals, mod.w_bits), scale.float().numpy().tobytes()]
    else:
        dtype = np.float16 if mod.w_bits == 16 else np.float32
        parts.append(w.flatten().numpy()[keep].astype(dtype).tobytes())
    return entry, parts


def export_compressed(model: nn.Module, path: str | Path, input_shape: tuple[int, ...]) -> int:
    """Write ``model`` to ``path`` in the packed format and return the file size in bytes."""
    tensors, payload = [], []
    weight_keys, stored = set(), set()
    for name, mod in model.named_modules():
        if is_compressed(mod):
            weight_keys.add(f"{name}.weight")
            if id(mod.weight) in stored:  # tied: the weight and its mask are the earlier layer's
                tensors.append({"n": f"{name}.weight", "k": "q", "b": mod.w_bits, "m": _TIED})
                continue
            stored.add(id(mod.weight))
            entry, parts = _weight_sections(mod)
            tensors.append({"n": f"{name}.weight", "k": "q", **entry})
            payload += parts
    for key, t in unique_state(model).items():
        if key in weight_keys or key.rsplit(".", 1)[-1] in _SKIP_BUFFERS:
            continue
        payload.append(t.float().cpu().numpy().tobytes())
    acts = {n: m.act_quant.bits for n, m in model.named_modules() if is_compressed(m) and m.act_quant is not None}
    widths = structure_of(model)
    order = {name: i for i, name in enumerate(_layer_order(model, list(widths)))}
    head = bytearray(_varint(len(input_shape)) + b"".join(_varint(int(d)) for d in input_shape))
    head += _varint(len(widths)) + b"".join(_varint(w) for w in widths.values())
    quantized = [t for t in tensors if t["k"] == "q"]
    head += _varint(len(quantized))
    for t in quantized:
        layer = t["n"].rsplit(".", 1)[0]
        kind = {0: 0, 1: 1, 2: t.get("iw", 0), _TIED: _TIED}[t.get("m", 0)]
        head += _varint(order[layer]) + bytes([t["b"], acts.get(layer, 0), kind])
        if kind == _TIED:
            continue
        if kind:
            head += _varint(t["nnz"])
        if kind >= 2:
            head += _varint(t["ic"])
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(MAGIC + bytes(head))
        for part in payload:
            f.write(part)
    return path.stat().st_size


def _write_v1(model: nn.Module, path: Path, input_shape: tuple[int, ...]) -> int:
    """The former ``MCZ1`` writer (zlib JSON header); kept to test that old files still load."""
    tensors, payload = [], []
    weight_keys = set()
    for name, mod in model.named_modules():
        if is_compressed(mod):
            entry, parts = _weight_sections(mod)
            entry.pop("nnz", None)
            tensors.append({"n": f"{name}.weight", "k": "q", **entry, "l": [len(p) for p in parts]})
            payload += parts
            weight_keys.add(f"{name}.weight")
    for key, t in model.state_dict().items():
        if key in weight_keys or key.rsplit(".", 1)[-1] in _SKIP_BUFFERS:
            continue
        data = t.detach().float().cpu().numpy().tobytes()
        tensors.append({"n": key, "k": "f", "s": list(t.shape), "l": [len(data)]})
        payload.append(data)
    acts = {n: m.act_quant.bits for n, m in model.named_modules() if is_compressed(m) and m.act_quant is not None}
    header = {"v": 1, "in": list(input_shape), "w": structure_of(model), "a": acts, "t": tensors}
    blob = zlib.compress(json.dumps(header, separators=(",", ":")).encode(), 9)
    with open(path, "wb") as f:
        f.write(MAGIC_V1 + struct.pack("<I", len(blob)) + blob)
        for part in payload:
            f.write(part)
    return path.stat().st_size


def _read(path: Path, skeleton: nn.Module) -> tuple[dict, bytes]:
    """The header as a dict (the ``MCZ1`` JSON layout: tensor names, shapes, section lengths) and the payload."""
    raw = path.read_bytes()
    if raw[:4] == MAGIC_V1:
        (n,) = struct.unpack("<I", raw[4:8])
        return json.loads(zlib.decompress(raw[8 : 8 + n])), raw[8 + n :]
    if raw[:4] != MAGIC:
        raise ConfigError(f"The 'path' value must be a metacompress export (MCZ2). Got {str(path)!r}.", "path")
    cur = _Cursor(raw, 4)
    input_shape = [cur.varint() for _ in range(cur.varint())]
    producers = list(structure_of(skeleton))
    names = _layer_order(skeleton, producers)
    n_widths = cur.varint()
    if n_widths != len(producers):
        raise ConfigError(f"The 'skeleton' value must have the exported model's {n_widths} Linear/Conv layers. "
                          f"Got {len(producers)}.", "skeleton")
    widths = {name: cur.varint() for name in producers}
    layers = []
    for _ in range(cur.varint()):
        index = cur.varint()
        bits, act, kind = raw[cur.pos : cur.pos + 3]
        cur.pos += 3
        nnz = cur.varint() if kind and kind != _TIED else None
        count = cur.varint() if 2 <= kind < _TIED else None
        layers.append((names[index], bits, act, kind, nnz, count))
    # names, shapes and section lengths follow from the skeleton shrunk to the recorded widths
    model = copy.deepcopy(skeleton).cpu()
    shrink(model, None, _example_input(skeleton, input_shape), widths=widths)
    modules = dict(model.named_modules())
    tensors, acts = [], {}
    for name, bits, act, kind, nnz, count in layers:
        layer = to_quantized(modules[name], bits, act or None)
        if act:
            acts[name] = act
        if kind == _TIED:
            tensors.append({"n": f"{name}.weight", "k": "t", "b": bits, "l": []})
            continue
        shape = list(layer.weight.shape)
        n = layer.weight.numel()
        kept = n if nnz is None else nnz
        entry: dict = {"n": f"{name}.weight", "k": "q", "b": bits, "s": shape, "l": []}
        if kind == 1:
            entry.update({"m": 1, "l": [(n + 7) // 8]})
        elif kind >= 2:
            entry.update({"m": 2, "iw": kind, "ic": count, "l": [(count * kind + 7) // 8]})
        if bits < 16:
            entry["l"] += [(kept * bits + 7) // 8, 4 * shape[0]]
        else:
            entry["l"].append(kept * (2 if bits == 16 else 4))
        tensors.append(entry)
        if act:
            acts[name] = act
    weight_keys = {t["n"] for t in tensors}
    for key, t in unique_state(model).items():
        if key in weight_keys or key.rsplit(".", 1)[-1] in _SKIP_BUFFERS:
            continue
        tensors.append({"n": key, "k": "f", "s": list(t.shape), "l": [4 * t.numel()]})
    header = {"v": 2, "in": input_shape, "w": widths, "a": acts, "t": tensors}
    return header, raw[cur.pos :]


def _decode_weight(entry: dict, sections: list[bytes]) -> tuple[torch.Tensor, torch.Tensor | None]:
    shape, bits = entry["s"], entry["b"]
    n = int(np.prod(shape))
    mask = None
    if entry.get("m") == 2:
        mask = _decode_index(sections.pop(0), n, entry["iw"], entry["ic"])
    elif entry.get("m"):
        mask = np.unpackbits(np.frombuffer(sections.pop(0), dtype=np.uint8))[:n].astype(bool)
    nnz = n if mask is None else int(mask.sum())
    if bits < 16:
        codes = _unpack(sections[0], nnz, bits).astype(np.float32) - qmax(bits)
        scale = np.frombuffer(sections[1], dtype=np.float32)
        vals = codes * np.repeat(scale, n // len(scale))[mask if mask is not None else slice(None)]
    else:
        vals = np.frombuffer(sections[0], dtype=np.float16 if bits == 16 else np.float32).astype(np.float32)
    full = np.zeros(n, dtype=np.float32)
    full[mask if mask is not None else slice(None)] = vals
    as_t = torch.from_numpy(full.reshape(shape))
    return as_t, None if mask is None else torch.from_numpy(mask.reshape(shape).astype(np.float32))


def _example_input(skeleton: nn.Module, input_shape: Sequence[int]) -> torch.Tensor:
    """Zeros of ``input_shape`` (batch 2) that ``skeleton`` accepts: float, else integer (token ids, codes); the file
    records the shape only."""
    model = copy.deepcopy(skeleton).cpu().eval()
    for dtype in (torch.float32, torch.int64):
        x = torch.zeros(2, *input_shape, dtype=dtype)
        try:
            with torch.no_grad():
                model(x)
        except (RuntimeError, TypeError, IndexError):
            continue
        return x
    return torch.zeros(2, *input_shape)  # neither runs: shrink reports the model's own error


def load_compressed(path: str | Path, skeleton: nn.Module) -> nn.Module:
    """Rebuild the exported model on a copy of ``skeleton`` (the teacher's architecture)."""
    if not isinstance(skeleton, nn.Module):
        raise ConfigError(f"The 'skeleton' value must be the teacher (an nn.Module of the exported model's "
                          f"architecture). Got {type(skeleton).__name__}.", "skeleton")
    header, payload = _read(Path(path), skeleton)
    model = copy.deepcopy(skeleton).cpu()
    shrink(model, None, _example_input(skeleton, header["in"]), widths=header["w"])
    modules = dict(model.named_modules())
    state, offset, tied = {}, 0, []
    for entry in header["t"]:
        sections = []
        for length in entry["l"]:
            sections.append(payload[offset : offset + length])
            offset += length
        name = entry["n"]
        if entry["k"] == "f":
            state[name] = torch.from_numpy(np.frombuffer(sections[0], dtype=np.float32).copy()).view(entry["s"])
            continue
        layer = modules[name.rsplit(".", 1)[0]] if "." in name else model
        if entry["k"] == "t":
            tied.append(name.rsplit(".", 1)[0])
            to_quantized(layer, entry["b"], header["a"].get(name.rsplit(".", 1)[0]))
            continue
        weight, mask = _decode_weight(entry, sections)
        to_quantized(layer, entry["b"], header["a"].get(name.rsplit(".", 1)[0]))
        layer.set_mask(mask)
        state[name] = weight
    missing = [k for k in unique_state(model) if k not in state and k.rsplit(".", 1)[-1] not in _SKIP_BUFFERS]
    model.load_state_dict(state, strict=False)
    leaders = tied_layers(model)[0]
    for name in tied:  # the shared weight was filled through its first layer; share that layer's mask too
        modules[name].weight_mask = modules[leaders[name]].weight_mask
    if missing:
        raise ConfigError(f"The 'path' value must hold every tensor of the model. Got {len(missing)} missing.")
    return model.eval()


