"""Find the Engine that `APP` names: `module:attribute` or `path/to/file.py[:attribute]`."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from stepstone.errors import InvalidInputError

if TYPE_CHECKING:
    from stepstone.engine import Engine


def load_engine(app: str) -> Engine:
    """Import `app` and return the Engine it names (attribute `engine` by default)."""
    from stepstone.engine import Engine

    target, _, attribute = app.partition(":")
    attribute = attribute or "engine"
    if target.endswith(".py") or "/" in target:
        path = Path(target)
        if not path.is_file():
            raise InvalidInputError(f"invalid APP {app!r}: no file {target!r}")
        sys.path.insert(0, str(path.resolve().parent))
        spec = importlib.util.spec_from_file_location(path.stem, path)
        if spec is None or spec.loader is None:
            raise InvalidInputError(f"invalid APP {app!r}: cannot import {target!r}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[path.stem] = module
        spec.loader.exec_module(module)
    else:
        sys.path.insert(0, str(Path.cwd()))
        try:
            module = importlib.import_module(target)
        except ModuleNotFoundError as exc:
            raise InvalidInputError(f"invalid APP {app!r}: cannot import module {target!r} ({exc})") from None
    engine = getattr(module, attribute, None)
    if not isinstance(engine, Engine):
        raise InvalidInputError(
            f"invalid APP {app!r}: {target}:{attribute} is {type(engine).__name__}, expected a stepstone.Engine"
        )
    return engine
