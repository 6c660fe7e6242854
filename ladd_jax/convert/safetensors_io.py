"""Reads and writes safetensors files without torch, one tensor at a time.

Reading memory-maps the file, so a tensor costs memory only while it is converted; bf16 and fp8 come
through ml_dtypes. Writing streams tensors in order, so an export needs one tensor's memory beyond the
params themselves. Sharded checkpoints (`*.safetensors.index.json`) are read and written as
diffusers and transformers lay them out.
"""

from __future__ import annotations

import dataclasses
import json
import math
import struct
from collections.abc import Callable, Mapping
from pathlib import Path

import ml_dtypes
import numpy as np

from ladd_jax.errors import LaddError

DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype(np.float64),
    "F32": np.dtype(np.float32),
    "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn),
    "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2),
    "I64": np.dtype(np.int64),
    "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16),
    "I8": np.dtype(np.int8),
    "U8": np.dtype(np.uint8),
    "BOOL": np.dtype(np.bool_),
}
_NAMES = {v: k for k, v in DTYPES.items()}
_MAX_HEADER = 100 * 2**20  # safetensors' own limit


@dataclasses.dataclass(frozen=True)
class LazyTensor:
    """A tensor known by shape and dtype, read (or computed) only when `load()` is called."""

    shape: tuple[int, ...]
    dtype: np.dtype
    load: Callable[[], np.ndarray]
    origin: str  # where it comes from, for error messages

    @classmethod
    def of(cls, array: np.ndarray, origin: str) -> LazyTensor:
        return cls(tuple(array.shape), np.dtype(array.dtype), lambda: np.asarray(array), origin)


class SafetensorsFile(Mapping[str, LazyTensor]):
    """The tensors of one .safetensors file, validated against the file's size when opened."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.metadata, self._entries, self._data_start = _read_header(self.path)

    def __getitem__(self, key: str) -> LazyTensor:
        dtype, shape, (begin, end) = self._entries[key]
        return LazyTensor(shape, dtype, lambda: self._read(key), f"{self.path.name}:{key}")

    def __iter__(self):
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def _read(self, key: str) -> np.ndarray:
        dtype, shape, (begin, end) = self._entries[key]
        data = np.memmap(self.path, dtype=np.uint8, mode="r", offset=self._data_start + begin, shape=(end - begin,))
        return np.array(data.view(dtype).reshape(shape))


def _read_header(path: Path):
    if not path.is_file():
        raise LaddError(f"{path} is not a file")
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise LaddError(f"{path} is not a safetensors file (only {size} bytes); re-download or re-export it")
        (n,) = struct.unpack("<Q", head)
        if n > _MAX_HEADER or 8 + n > size:
            raise LaddError(
                f"{path} is truncated or not a safetensors file: its header claims {n} bytes but the file "
                f"holds {size}; re-download or re-export it"
            )
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise LaddError(f"{path} has a corrupt safetensors header ({e}); re-download or re-export it") from e
    metadata = header.pop("__metadata__", None) or {}
    data_size = size - 8 - n
    entries = {}
    for key, info in header.items():
        try:
            dtype = DTYPES[info["dtype"]]
        except KeyError:
            raise LaddError(f"{path}: tensor '{key}' has unsupported dtype {info.get('dtype')!r}") from None
        shape = tuple(int(d) for d in info["shape"])
        begin, end = (int(o) for o in info["data_offsets"])
        if end - begin != math.prod(shape) * dtype.itemsize:
            raise LaddError(f"{path}: tensor '{key}' has {end - begin} bytes for shape {shape} {dtype}; corrupt file")
        if end > data_size:
            raise LaddError(
                f"{path} is truncated: tensor '{key}' needs bytes up to {end} of the data but the file holds "
                f"only {data_size}; re-download or re-export it"
            )
        entries[key] = (dtype, shape, (begin, end))
    return metadata, entries, 8 + n


def write_safetensors(
    path: str | Path, tensors: Mapping[str, LazyTensor], metadata: Mapping[str, str] | None = None
) -> None:
    """Writes `tensors` in their mapping order, loading one at a time."""
    header: dict = {"__metadata__": dict(metadata)} if metadata else {}
    offset = 0
    for name, t in tensors.items():
        if t.dtype not in _NAMES:
            raise LaddError(f"cannot write tensor '{name}' of dtype {t.dtype} to safetensors")
        end = offset + nbytes(t)
        header[name] = {"dtype": _NAMES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, end]}
        offset = end
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # safetensors aligns the data to 8 bytes
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for name, t in tensors.items():
            array = np.ascontiguousarray(t.load(), dtype=t.dtype)
            if tuple(array.shape) != t.shape:
                raise LaddError(f"tensor '{name}' loaded with shape {array.shape}, expected {t.shape}")
            f.write(array.tobytes())


def read_folder(folder: str | Path, stem: str) -> dict[str, LazyTensor]:
    """All tensors of `stem.safetensors` or of the shards that `stem.safetensors.index.json` lists."""
    folder = Path(folder)
    single, index = folder / f"{stem}.safetensors", folder / f"{stem}.safetensors.index.json"
    if index.is_file():
        try:
            weight_map: dict[str, str] = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError) as e:
            raise LaddError(f"{index} is not a valid safetensors index ({e}); re-download it") from e
        files = {name: SafetensorsFile(folder / name) for name in sorted(set(weight_map.values()))}
        out = {}
        for key, name in weight_map.items():
            if key not in files[name]:
                raise LaddError(f"{index} lists '{key}' in {name}, which does not hold it; re-download the shards")
            out[key] = files[name][key]
        return out
    if single.is_file():
        return dict(SafetensorsFile(single))
    raise LaddError(f"{folder} holds neither {single.name} nor {index.name}")


def write_folder(
    folder: str | Path, stem: str, tensors: Mapping[str, LazyTensor], max_shard_bytes: int = 10 * 2**30
) -> list[Path]:
    """Writes one file, or shards of at most `max_shard_bytes` plus an index, as diffusers does."""
    folder = Path(folder)
    shards: list[dict[str, LazyTensor]] = [{}]
    size = 0
    for name, t in tensors.items():
        if shards[-1] and size + nbytes(t) > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = t
        size += nbytes(t)
    if len(shards) == 1:
        path = folder / f"{stem}.safetensors"
        write_safetensors(path, shards[0], {"format": "pt"})
        return [path]
    paths, weight_map = [], {}
    for k, shard in enumerate(shards):
        path = folder / f"{stem}-{k + 1:05d}-of-{len(shards):05d}.safetensors"
        write_safetensors(path, shard, {"format": "pt"})
        weight_map.update({name: path.name for name in shard})
        paths.append(path)
    index = {"metadata": {"total_size": sum(nbytes(t) for t in tensors.values())}, "weight_map": weight_map}
    (folder / f"{stem}.safetensors.index.json").write_text(json.dumps(index, indent=2))
    return paths


def nbytes(t: LazyTensor) -> int:
    return math.prod(t.shape) * t.dtype.itemsize
