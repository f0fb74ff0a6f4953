"""Catch bad command lines before any work: compose the config the command asks for (the first point of a
sweep) and validate it, printing one line and exiting 2 on error. Hydra's own errors span many lines."""
from __future__ import annotations

import hashlib
import os
import re
import sys
import uuid
from pathlib import Path

from omegaconf import OmegaConf

from .config import ConfigError, register_schemas, validate

# flags that show something instead of running, and flags that take a value
_SHOW_FLAGS = {"--help", "-h", "--hydra-help", "--info", "-i", "--cfg", "-c", "--shell-completion", "-sc", "--version"}
_VALUE_FLAGS = {"--config-path", "-cp", "--config-name", "-cn", "--config-dir", "-cd", "--package", "-p",
                "--experimental-rerun"}


_UNSAFE = str.maketrans({os.sep: "_", ",": "_", "=": ":", " ": "_", "{": None, "}": None, "[": None, "]": None,
                         "'": None, '"': None, "~": "_", "#": "_", ";": "_"})


def run_dirname(overrides: str) -> str:
    """A folder name from Hydra's override string (`norm:dyt+seed:1`): the same command always gets the same
    folder (so running it again resumes); paths and characters an override value cannot hold unquoted are
    flattened, so the folder can be handed to `init_from=` as it is; a long name is shortened with a hash."""
    name = overrides.translate(_UNSAFE) or "default"
    if len(name) > 120:
        name = name[:100] + "-" + hashlib.sha1(name.encode()).hexdigest()[:8]
    return name


def register_resolvers() -> None:
    OmegaConf.register_new_resolver("run_dirname", run_dirname, replace=True)
    # cached, so every job of a sweep (and a requeued Slurm job) sees the value its launcher saw
    OmegaConf.register_new_resolver("unique", lambda: uuid.uuid4().hex[:6], use_cache=True, replace=True)


def _first_point(argv: list[str]) -> tuple[str, list[str]]:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    config_name, plain, skip = "train", [], False
    for i, arg in enumerate(argv):
        if skip:
            skip = False
            continue
        if arg in ("--config-name", "-cn"):
            config_name = argv[i + 1]
        if arg in _VALUE_FLAGS:
            skip = True
        elif not arg.startswith("-"):
            plain.append(arg)
    points = []
    multirun = any(a in ("-m", "--multirun") for a in argv)
    for override in OverridesParser.create().parse_overrides(plain):
        key = override.get_key_element()
        if key.lstrip("+~").startswith("hydra"):
            continue
        if override.is_sweep_override():
            if not multirun:
                values = ",".join(override.sweep_string_iterator())
                raise ConfigError(f"{key}={values} lists several values: that is a sweep, run it with -m "
                                  "(python train.py -m …)")
            value = next(iter(override.sweep_string_iterator()))
        else:
            value = override.get_value_element_as_str()
        points.append(key if key.startswith("~") and value is None else f"{key}={value}")
    return config_name, points


def _one_line(err: Exception, config_dir: Path, config_name: str, overrides: list[str]) -> str:
    from hydra.errors import MissingConfigException

    text = str(err)
    missing = re.search(r"Could not find '([^']+)/([^'/]+)'", text)
    if isinstance(err, MissingConfigException) and missing:
        group, name = missing.groups()
        options = sorted(o for o in (err.options or []) if not o.startswith("_"))
        return f"unknown {group} {name!r}; known: {', '.join(options)} (configs/{group}/)"
    bad_key = re.search(r"Could not override '([^']+)'", text)
    if bad_key:
        key = bad_key.group(1)
        return f"unknown config key {key}; {_known_keys(key, config_dir, config_name, overrides)}"
    cause = err.__cause__ or err
    first = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
    merging = re.search(r"Error merging override (\S+)", text)
    return f"{merging.group(1)}: {first}" if merging else first


def _known_keys(key: str, config_dir: Path, config_name: str, overrides: list[str]) -> str:
    """What the parent of a mistyped key does take, from the config composed with the group choices."""
    from hydra import compose, initialize_config_dir

    groups = [o for o in overrides if "." not in o.split("=")[0]]
    try:
        with initialize_config_dir(str(config_dir), version_base="1.3"):
            cfg = compose(config_name, overrides=groups)
        parent = key.rpartition(".")[0]
        node = OmegaConf.select(cfg, parent) if parent else cfg
        while node is None and parent:
            parent = parent.rpartition(".")[0]
            node = OmegaConf.select(cfg, parent) if parent else cfg
        return f"{parent or 'the top level'} takes: {', '.join(map(str, node.keys()))}"
    except Exception:  # noqa: BLE001 — the hint is a courtesy
        return "check its spelling"


def preflight(config_dir: Path, argv: list[str] | None = None) -> None:
    """Exit 2 with one line if the command's config cannot compose or validate; return otherwise."""
    from hydra import compose, initialize_config_dir

    argv = sys.argv[1:] if argv is None else argv
    if any(a in _SHOW_FLAGS for a in argv):
        return
    register_schemas()
    register_resolvers()
    config_name, overrides = "train", []
    try:
        config_name, overrides = _first_point(argv)
        with initialize_config_dir(str(config_dir), version_base="1.3"):
            cfg = compose(config_name, overrides=overrides)
        validate(cfg)
    except ConfigError as err:
        _fail(str(err))
    except Exception as err:  # noqa: BLE001 — Hydra's composition and parse errors
        _fail(_one_line(err, config_dir, config_name, overrides))


def _fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)
