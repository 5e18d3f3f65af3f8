"""`import metacompress.spaces` stays light: no torch, optuna, ray (nor numpy/scipy) at import time."""

from __future__ import annotations

import subprocess
import sys

import metacompress.spaces as spaces


def test_import_is_light() -> None:
    code = (
        "import sys, metacompress.spaces; "
        "heavy = [m for m in ('torch', 'optuna', 'ray', 'numpy', 'scipy') if m in sys.modules]; "
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_public_names() -> None:
    for name in ("Domain", "Float", "Int", "Ordinal", "Categorical", "LayerInfo", "LayerPolicy", "CompressionPolicy",
                 "CompressionSpace", "ConfigError", "MetacompressError", "invalid_value", "unknown_key",
                 "ALLOWED_BITS", "to_optuna", "suggest", "to_ray"):
        assert name in spaces.__all__ and hasattr(spaces, name)
    assert all(hasattr(spaces, name) for name in spaces.__all__)
    assert spaces.ALLOWED_BITS == (2, 3, 4, 5, 6, 7, 8, 16, 32)
