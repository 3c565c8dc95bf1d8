"""The unit of weight publishing: one LoRA adapter version as bytes, with its checksum.

It travels through the Ray object store (no shared filesystem needed); each receiver
materialises it as an ordinary PEFT adapter directory and checks the checksum before loading.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

WEIGHTS = "adapter_model.safetensors"
CONFIG = "adapter_config.json"


class AdapterMismatch(Exception):
    pass


def check_serving(served: tuple[int | None, str | None], expected: tuple[int, str] | None) -> None:
    """A sampler asked to sample from `expected` (version, checksum) refuses while it serves
    anything else, so no sample is ever drawn from a stale or missing adapter."""
    if expected is not None and tuple(served) != tuple(expected):
        raise AdapterMismatch(
            f"serving adapter v{served[0]} ({str(served[1])[:12]}), asked to sample from "
            f"v{expected[0]} ({expected[1][:12]})"
        )


def canonical_config(config: dict) -> dict:
    """PEFT keeps target_modules as a set and writes it in the order the set iterates, which
    changes from process to process; sorted, identical runs write identical adapter_config.json."""
    modules = config.get("target_modules")
    return {**config, "target_modules": sorted(modules)} if isinstance(modules, list) else config


@dataclass(frozen=True)
class AdapterPayload:
    version: int
    weights: bytes  # safetensors
    config: dict  # adapter_config.json
    checksum: str  # sha256 of `weights`

    @classmethod
    def create(cls, version: int, weights: bytes, config: dict) -> AdapterPayload:
        return cls(version, weights, canonical_config(config), hashlib.sha256(weights).hexdigest())

    @classmethod
    def from_dir(cls, path: str | Path, version: int) -> AdapterPayload:
        path = Path(path)
        return cls.create(version, (path / WEIGHTS).read_bytes(), json.loads((path / CONFIG).read_text()))

    def verify(self) -> None:
        if hashlib.sha256(self.weights).hexdigest() != self.checksum:
            raise AdapterMismatch(f"adapter v{self.version}: checksum does not match its weights")

    def files(self) -> dict[str, bytes]:
        return {WEIGHTS: self.weights, CONFIG: json.dumps(self.config, indent=2).encode()}

    def write(self, path: str | Path) -> Path:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        for name, data in self.files().items():
            (path / name).write_bytes(data)
        return path
