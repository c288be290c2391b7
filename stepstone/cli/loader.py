"""Find the Engine that `APP` names: `module:attribute` or `path/to/file.py[:attribute]`."""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import sysconfig
import traceback
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

from stepstone.errors import InvalidInputError

if TYPE_CHECKING:
    from stepstone.engine import Engine

_FORMS = "expected module:attribute or path/to/file.py[:attribute]"

_LIBRARIES = tuple(
    os.path.join(directory, "")
    for directory in {
        *(sysconfig.get_path(name) for name in ("stdlib", "platstdlib", "purelib", "platlib")),
        str(Path(__file__).parents[1]),
    }
)
"""Where Python's and installed packages' code (stepstone's too) lives: not where an app's bug is."""


def load_engine(app: str) -> Engine:
    """Import `app` and return the Engine it names (attribute `engine` by default).

    Raises InvalidInputError, in one line, for anything that stops the import, an
    exception raised by the app's own code included.
    """
    from stepstone.engine import Engine

    target, _, attribute = app.partition(":")
    attribute = attribute or "engine"
    is_path = target.endswith(".py") or "/" in target
    module = _import_file(app, target) if is_path else _import_module(app, target)
    if not attribute.isidentifier():
        raise InvalidInputError(f"invalid APP {app!r}: {attribute!r} is not an attribute name; {_FORMS}")
    if not hasattr(module, attribute):
        raise InvalidInputError(
            f"invalid APP {app!r}: {target} has no attribute {attribute!r} (it should name a stepstone.Engine)"
        )
    engine = getattr(module, attribute)
    if not isinstance(engine, Engine):
        raise InvalidInputError(
            f"invalid APP {app!r}: {target}:{attribute} is {type(engine).__name__}, expected a stepstone.Engine"
        )
    return engine


def _import_file(app: str, target: str) -> ModuleType:
    path = Path(target)
    if not path.is_file():
        raise InvalidInputError(f"invalid APP {app!r}: no file {target!r}")
    taken = sys.modules.get(path.stem)
    where = getattr(taken, "__file__", None)
    if taken is not None and (where is None or Path(where).resolve() != path.resolve()):
        raise InvalidInputError(
            f"invalid APP {app!r}: its module name {path.stem!r} is taken by another module ({where or 'built in'}), "
            "which the app would hide; rename the file"
        )
    sys.path.insert(0, str(path.resolve().parent))
    spec = importlib.util.spec_from_file_location(path.stem, path)
    if spec is None or spec.loader is None:
        raise InvalidInputError(f"invalid APP {app!r}: cannot import {target!r}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # the app's own code failed: its bug, shown in one line
        sys.modules.pop(path.stem, None)
        raise InvalidInputError(f"invalid APP {app!r}: importing {target!r} failed: {_describe(exc)}") from None
    return module


def _import_module(app: str, name: str) -> ModuleType:
    if not all(part.isidentifier() for part in name.split(".")):
        raise InvalidInputError(f"invalid APP {app!r}: {name!r} is not a module name; {_FORMS}")
    sys.path.insert(0, str(Path.cwd()))
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (name == exc.name or name.startswith(f"{exc.name}.")):
            raise InvalidInputError(f"invalid APP {app!r}: cannot import module {name!r} ({exc})") from None
        raise InvalidInputError(f"invalid APP {app!r}: importing module {name!r} failed: {_describe(exc)}") from None
    except Exception as exc:
        raise InvalidInputError(f"invalid APP {app!r}: importing module {name!r} failed: {_describe(exc)}") from None


def _describe(exc: Exception) -> str:
    """`Type: message (file, line n)` in one line: where the syntax error is, or the app's line that raised.

    The app's line is the innermost outside Python's and installed packages' code.
    """
    if isinstance(exc, SyntaxError):
        message, filename, line = exc.msg, exc.filename, exc.lineno
    else:
        message, filename, line = str(exc), None, None
        frames = [f for f in traceback.extract_tb(exc.__traceback__) if not f.filename.startswith("<frozen ")]
        apps = [f for f in frames if not f.filename.startswith(_LIBRARIES)]
        if apps or frames:
            filename, line = (apps or frames)[-1].filename, (apps or frames)[-1].lineno
    described = " ".join(f"{type(exc).__name__}: {message}".split()).removesuffix(":")
    return f"{described} ({filename}, line {line})" if filename else described
