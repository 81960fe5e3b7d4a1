"""The models of an audit, each with its own settings: name, spec, weights, args, input.

Three ways to say them, which combine:

- the main model: ``--model SPEC`` with ``--weights``, ``--model-arg KEY=VALUE``, ``--input``,
  ``--normalize`` and ``--model-name``;
- ``--compare [NAME=]SPEC[=WEIGHTS]`` for each other model; its constructor arguments are
  ``--model-arg NAME:KEY=VALUE`` (NAME as given, or the spec when unnamed);
- ``[[models]]`` tables in ``--config`` (``name``, ``spec``, ``weights``, ``args``, ``input``,
  ``normalize``) for everything, the first table being the main model.

A model's input domain is ``input`` (or ``--input`` for the main model), else the class attribute
``mri_audit_input``, else ``kspace`` when ``forward`` takes ``(masked_kspace, mask)``, else image.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from mri_audit.errors import UsageError
from mri_audit.models import DOMAINS, NORMALIZATIONS

__all__ = [
    "ModelEntry",
    "NAME_PATTERN",
    "entries_from_config",
    "model_entries",
    "parse_compare",
    "unique_names",
    "with_arguments",
]

NAME_PATTERN = re.compile(r"[A-Za-z][A-Za-z0-9_+#-]*")
"""A model name given with ``NAME=``: a letter, then letters, digits, ``_``, ``+``, ``#``, ``-``
(no ``.``, ``:`` or ``/``, which a spec always has)."""

_MAIN_FLAGS = (
    ("--weights", "weights"),
    ("--input", "input_domain"),
    ("--model-name", "model_name"),
)
_TABLE_KEYS = ("name", "spec", "weights", "args", "input", "normalize")


class ModelEntry(NamedTuple):
    """One model of an audit and its own settings.

    Attributes:
        spec: ``path/to/file.py:Name``, ``package.module:Name``, a ``.pt2`` or TorchScript
            file, or (from the library's ``audit()``) a constructed ``nn.Module``.
        name: the display name (None: derived from the spec).
        weights: a state dict or checkpoint file.
        args: constructor keyword arguments.
        input: ``"image"`` or ``"kspace"`` (None: the model's attribute or forward signature).
        normalize: image-domain normalisation (None: the command's ``--normalize``).
    """

    spec: Any  # str, or an nn.Module (not imported here: the CLI starts without torch)
    name: str | None = None
    weights: str | None = None
    args: Mapping[str, Any] = {}
    input: str | None = None
    normalize: str | None = None

    @property
    def label(self) -> str:
        """How messages name the model: its name, or its spec (a module's class name)."""
        if self.name:
            return self.name
        return self.spec if isinstance(self.spec, str) else type(self.spec).__name__


def parse_compare(value: str) -> ModelEntry:
    """``--compare [NAME=]SPEC[=WEIGHTS]``.

    A spec never holds ``=``, a weights path may (Lightning names checkpoints
    ``epoch=9-step=100.ckpt``): the text before the first ``=`` is a NAME when it is a plain
    name (see :data:`NAME_PATTERN`) and more follows; then comes the SPEC up to the next ``=``,
    and everything after it is the weights path. So ``robust=a.py:Net=w.pt`` is NAME=SPEC=WEIGHTS,
    ``robust=a.py:Net`` is NAME=SPEC and ``a.py:Net=ckpt/epoch=9.ckpt`` SPEC=WEIGHTS (the older
    form, kept).

    Raises:
        UsageError: an empty NAME, SPEC or WEIGHTS.
    """
    name = None
    rest = value.strip()
    first, eq, tail = rest.partition("=")
    if eq and NAME_PATTERN.fullmatch(first.strip()):
        name, rest = first.strip(), tail
    spec, eq, weights = rest.partition("=")
    if not spec.strip() or (eq and not weights.strip()):
        raise UsageError(
            f"--compare needs [NAME=]SPEC[=WEIGHTS] (e.g. robust=examples/unet.py:UNet=w.pt), "
            f"got {value!r}"
        )
    return ModelEntry(spec.strip(), name, weights.strip() or None)


def _compare_entry(value: ModelEntry | tuple | str) -> ModelEntry:
    if isinstance(value, ModelEntry):
        return value
    if isinstance(value, tuple):  # (spec, weights)
        return ModelEntry(value[0], None, value[1])
    return parse_compare(value)


def _check_name(name: str, where: str) -> None:
    if not NAME_PATTERN.fullmatch(name):
        raise UsageError(
            f"{where}: model name {name!r} must start with a letter and hold only letters, "
            "digits, '_', '+', '#' or '-'"
        )


def entries_from_config(tables: object, path: str) -> list[ModelEntry]:
    """The ``[[models]]`` tables of a config file, checked.

    Raises:
        UsageError: not an array of tables, an unknown key, a missing or non-string ``spec``,
            ``args`` not a table, a bad ``input``/``normalize`` or name (one line, exit 2).
    """
    if not isinstance(tables, list) or not tables or not all(isinstance(t, dict) for t in tables):
        raise UsageError(
            f"config file {path}: 'models' must be [[models]] tables (spec = ..., name = ..., "
            "weights = ..., args = {...}, input = ...)"
        )
    out = []
    for i, table in enumerate(tables, 1):
        where = f"[[models]] table {i} in {path}"
        unknown = sorted(set(table) - set(_TABLE_KEYS))
        if unknown:
            known = ", ".join(_TABLE_KEYS)
            raise UsageError(f"{where}: unknown key {unknown[0]!r}; known: {known}")
        for key in ("spec", "name", "weights", "input", "normalize"):
            if key in table and not isinstance(table[key], str):
                raise UsageError(f"{where}: {key} must be a string, got {table[key]!r}")
        if not table.get("spec", "").strip():
            raise UsageError(f'{where}: needs spec = "path/to/file.py:Name" (or module:Name)')
        if "name" in table:
            _check_name(table["name"], where)
        args = table.get("args", {})
        if not isinstance(args, dict) or not all(k.isidentifier() for k in args):
            raise UsageError(f"{where}: args must be a table of constructor arguments")
        if table.get("input") not in (None, *DOMAINS):
            raise UsageError(f"{where}: input must be 'image' or 'kspace', got {table['input']!r}")
        if table.get("normalize") not in (None, *NORMALIZATIONS):
            raise UsageError(
                f"{where}: normalize must be 'instance' or 'none', got {table['normalize']!r}"
            )
        out.append(
            ModelEntry(
                table["spec"].strip(),
                table.get("name"),
                table.get("weights"),
                dict(args),
                table.get("input"),
                table.get("normalize"),
            )
        )
    return out


def _split_args(pairs: Sequence[str], entries: list[ModelEntry]) -> list[dict[str, Any]]:
    """``--model-arg`` values per entry: ``KEY=VALUE`` for the main model (for every model when
    all share one spec, as before), ``NAME:KEY=VALUE`` for the model called NAME."""
    from mri_audit.models.loading import parse_model_args

    labels = {e.label: i for i, e in enumerate(entries)}
    shared = {e.label for e in entries if [x.label for x in entries].count(e.label) > 1}
    per: list[list[str]] = [[] for _ in entries]
    for pair in pairs:
        key = pair.partition("=")[0]
        target, colon, _ = key.rpartition(":")
        if colon and target:
            if target in shared:
                raise UsageError(
                    f"--model-arg {pair!r}: {target!r} names more than one model; name them "
                    "(--model-name, --compare NAME=SPEC) and use NAME:KEY=VALUE"
                )
            if target not in labels:
                raise UsageError(
                    f"--model-arg {pair!r}: no model named {target!r}; models: "
                    + ", ".join(repr(k) for k in labels)
                )
            per[labels[target]].append(pair[len(target) + 1 :])
        else:
            per[0].append(pair)
    same = len({e.spec for e in entries}) == 1 and not any(per[1:])
    parsed = [parse_model_args(p) for p in per]
    if same:
        parsed = [parsed[0]] * len(entries)
    return parsed


def with_arguments(entries: list[ModelEntry], pairs: Sequence[str]) -> list[ModelEntry]:
    """``entries`` with the ``--model-arg`` values added (see :func:`_split_args`). When every
    model is the same spec and only the main one has settings, the others share its arguments
    and input domain (a model compared with its own other weights)."""
    args = _split_args(pairs, entries)
    out = [e._replace(args={**e.args, **a}) for e, a in zip(entries, args, strict=True)]
    if len({e.spec for e in out}) == 1:
        out = [e._replace(input=e.input or out[0].input) for e in out]
    return out


def model_entries(
    opts: Mapping[str, Any], config_models: list[ModelEntry] | None = None
) -> list[ModelEntry]:
    """Every model of a command, main first, from its options and ``[[models]]`` tables.

    Args:
        opts: ``model_spec``, ``weights``, ``model_args``, ``input_domain``, ``normalize``,
            ``model_name`` and ``compare`` (``--compare`` values or :class:`ModelEntry`).
        config_models: the ``[[models]]`` tables, if any.

    Raises:
        UsageError: no model, both ``--model`` and ``[[models]]``, or a name used twice.
    """
    compare = [_compare_entry(c) for c in opts.get("compare", ())]
    if config_models:
        flags = [f for f, k in _MAIN_FLAGS if opts.get(k)]
        if opts.get("model_spec"):
            raise UsageError(
                "give the main model either with --model or as the first [[models]] table of "
                "--config, not both"
            )
        if flags:
            raise UsageError(
                f"{', '.join(flags)} set the --model's settings, but the models come from "
                "[[models]] tables of --config: put them in the first table (weights = ..., "
                "input = ..., name = ...)"
            )
    if config_models:
        entries = [*config_models, *compare]
    else:
        if not opts.get("model_spec"):
            raise UsageError("Missing option '--model' (or [[models]] tables in --config)")
        main = ModelEntry(
            opts["model_spec"],
            opts.get("model_name"),
            opts.get("weights"),
            {},
            opts.get("input_domain"),
        )
        if main.name is not None:
            _check_name(main.name, "--model-name")
        entries = [main, *compare]
    entries = with_arguments(entries, opts.get("model_args") or ())
    names = [e.name for e in entries if e.name]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise UsageError(f"two models are named {twice[0]!r}; give each model its own name")
    return entries


def check_files(entries: Sequence[ModelEntry]) -> None:
    """Check that every model file and weights file exists, before any data or model is read.

    Raises:
        ModelError: a missing file, named with its model (exit 5), in the loader's words.
    """
    from pathlib import Path

    from mri_audit.errors import ModelError

    for i, e in enumerate(entries):
        if not isinstance(e.spec, str):  # a constructed module: no file to check
            continue
        target, colon, _ = e.spec.rpartition(":")
        target = target if colon and not (len(target) == 1 and target.isalpha()) else e.spec
        who = f"{'main model' if i == 0 else f'model {i + 1}'} {e.label!r}: "
        if target.lower().endswith(".py") and not Path(target).is_file():
            raise ModelError(f"{who}model file not found: {target} (check the path before ':')")
        if e.weights is not None and not Path(e.weights).is_file():
            problem = "is a directory, not a file" if Path(e.weights).is_dir() else "not found"
            raise ModelError(f"{who}weights file {problem}: {e.weights} (check --weights)")


def unique_names(names: Sequence[str]) -> list[str]:
    """Make display names unique by suffixing repeats with #2, #3, ..."""
    seen: dict[str, int] = {}
    out = []
    for n in names:
        seen[n] = seen.get(n, 0) + 1
        out.append(n if seen[n] == 1 else f"{n}#{seen[n]}")
    return out
