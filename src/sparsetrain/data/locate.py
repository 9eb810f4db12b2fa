"""Finding a data set without depending on the current directory.

Recipes name data by a path relative to the repository checkout (``../shared/data/...``), and a
wheel installed elsewhere runs from anywhere. A relative ``data.path`` (or a data set's default
path) is looked up, first match wins:

1. relative to the current directory, as written;
2. in each folder of ``$SPARSETRAIN_DATA`` (``os.pathsep``-separated; a file there whose name
   matches counts too), by the path's file name;
3. relative to the recipe's own folder and each folder above it.

Absolute paths and ``synthetic`` specs are used as given.
"""

from __future__ import annotations

import os
from pathlib import Path

ENV = "SPARSETRAIN_DATA"


def locate_data_path(path: str | None, dataset: str, recipe_dir: Path | None = None
                     ) -> str | None:
    """The absolute path of the data ``path`` (or ``dataset``'s default) names, or None when
    it is found nowhere (the caller's check then names the path and how to point at it)."""
    from sparsetrain.data.sources import get_dataset_info
    from sparsetrain.data.synthetic import is_synthetic_spec
    from sparsetrain.errors import UserError

    if path is None:
        try:
            path = get_dataset_info(dataset).default_path
        except UserError:  # an unknown data set is reported by the config check
            return None
    if path is None or is_synthetic_spec(path) or Path(path).is_absolute():
        return path
    rel = Path(path)
    candidates = [Path.cwd() / rel]
    for folder in filter(None, os.environ.get(ENV, "").split(os.pathsep)):
        f = Path(folder).expanduser()
        candidates += [f] if f.is_file() and f.name == rel.name else [f / rel.name]
    if recipe_dir is not None:
        base = Path(os.path.abspath(recipe_dir))
        candidates += [d / rel for d in (base, *base.parents)]
    for c in candidates:
        if c.exists():
            return os.path.abspath(c)
    return None
