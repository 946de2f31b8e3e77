"""What exists: ``python -m experiments.list {models [PATTERN],datasets,configs,sweeps}``.

    python -m experiments.list models 'convnext*'      # name, family, input, classes, params
    python -m experiments.list models --params         # exact parameter counts (traces each)
    python -m experiments.list datasets                # name, input shape, classes, splits
    python -m experiments.list configs                 # training configs and what they run
    python -m experiments.list sweeps                  # sweep definitions

``params`` comes from each builder's docstring where it states it (no tracing); ``--params``
counts them for every listed model with ``jax.eval_shape`` (about a second per model on CPU).
Configs and sweeps are read as text (their docstrings), so nothing is imported or run.
"""
from __future__ import annotations

import argparse
import ast
import difflib
import pathlib
import re
import sys

CONFIGS = pathlib.Path(__file__).resolve().parent / "configs"
_PARAMS_IN_DOC = re.compile(r"([\d,.]+\s*[MK]?) params")


def _table(rows: list[dict]) -> None:
    if not rows:
        return
    keys = list(rows[0])
    widths = {k: max(len(k), *(len(str(r[k])) for r in rows)) for k in keys}
    print("  ".join(k.ljust(widths[k]) for k in keys).rstrip())
    for r in rows:
        print("  ".join(str(r[k]).ljust(widths[k]) for k in keys).rstrip())


def list_models(pattern: str = "*", exact_params: bool = False) -> list[dict]:
    import jaxconv
    names = jaxconv.list_models(pattern)
    if not names:
        close = difflib.get_close_matches(pattern, jaxconv.list_models(), n=5, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"no registered model matches {pattern!r}{hint} (patterns are "
                         "fnmatch globs, e.g. 'resnet*'; 'python -m experiments.list models' "
                         "lists all)")
    rows = []
    for name in names:
        info = jaxconv.model_info(name)
        if exact_params:
            from jaxconv.analysis import count_params, init_variables
            abstract = init_variables(jaxconv.create_model(name), (1, *info.input_size))
            params = f"{count_params(abstract['params']):,}"
        else:
            found = _PARAMS_IN_DOC.search(info.description)
            params = found.group(1).strip() if found else "-"
        rows.append({"model": name, "family": info.family,
                     "input": "x".join(map(str, info.input_size)), "classes": info.num_classes,
                     "params": params, "paper": info.paper.split(",")[0]})
    return rows


def list_datasets() -> list[dict]:
    from jaxconv import data
    rows = []
    for name in data.list_datasets():
        info = data.dataset_info(name)
        rows.append({"dataset": name, "input": "x".join(map(str, info.image_shape)),
                     "classes": info.num_classes, "task": info.task,
                     "splits": ",".join(info.splits)})
    return rows


def _docstring_rows(folder: pathlib.Path, kind: str) -> list[dict]:
    rows = []
    for path in sorted(folder.glob("*.py")):
        if path.name == "__init__.py":
            continue
        doc = ast.get_docstring(ast.parse(path.read_text())) or ""
        about = " ".join(doc.strip().split("\n\n")[0].split())  # the first paragraph
        rows.append({kind: str(path.relative_to(CONFIGS.parent.parent)),
                     "about": about if len(about) <= 110 else about[:107] + "..."})
    return rows


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    m = sub.add_parser("models", help="registered models (optionally matching a glob PATTERN)")
    m.add_argument("pattern", nargs="?", default="*", help="fnmatch glob, e.g. 'resnet*'")
    m.add_argument("--params", action="store_true",
                   help="count parameters exactly (traces every listed model)")
    sub.add_parser("datasets", help="registered datasets")
    sub.add_parser("configs", help="training configs under experiments/configs")
    sub.add_parser("sweeps", help="sweep definitions under experiments/configs/sweeps")
    args = parser.parse_args(argv)
    try:
        if args.what == "models":
            rows = list_models(args.pattern, args.params)
        elif args.what == "datasets":
            rows = list_datasets()
        elif args.what == "configs":
            rows = _docstring_rows(CONFIGS, "config")
        else:
            rows = _docstring_rows(CONFIGS / "sweeps", "sweep")
    except ValueError as err:  # the library's own message, without a traceback
        parser.exit(2, f"error: {err}\n")
    _table(rows)
    return rows


if __name__ == "__main__":
    main(sys.argv[1:])
