"""Composition errors as one line: what eval.run checks before handing its arguments to Hydra.

Hydra reports a wrong group option or a misspelt key over several lines (search path included) and exits 1; the
harness promises one line naming the key or group and what is allowed, and exit 2. Sweeps are checked with the first
value of each swept key here; the sweeper then composes every cell (hydra_plugins/sparsevlm_harness/sweeper.py).
"""

from __future__ import annotations

import difflib
from pathlib import Path

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
# Hydra flags that print something instead of running (handed over untouched), and flags that take a value.
HANDOVER_FLAGS = {
    "--help",
    "-h",
    "--hydra-help",
    "--cfg",
    "-c",
    "--info",
    "-i",
    "--shell-completion",
    "-sc",
    "--version",
}
VALUE_FLAGS = {"--config-path", "-cp", "--config-name", "-cn", "--config-dir", "-cd", "--experimental-rerun", "-p"}


def _keys(config: object, prefix: str = "") -> list[str]:
    """Dotted keys of a composed config (hydra's own tree left out)."""
    from omegaconf import DictConfig

    keys = []
    if isinstance(config, DictConfig):
        for key in config:
            if prefix == "" and key == "hydra":
                continue
            dotted = f"{prefix}{key}"
            keys.append(dotted)
            keys += _keys(config._get_node(key), dotted + ".")
    return keys


def describe_error(err: Exception, known_keys: list[str]) -> str:
    """One line for a Hydra composition or override-parsing error."""
    from hydra.errors import MissingConfigException, OverrideParseException

    if isinstance(err, MissingConfigException) and err.missing_cfg_file:
        group, _, name = err.missing_cfg_file.rpartition("/")
        options = ", ".join(err.options or []) or "none"
        return f"{group or 'config'}: no option {name!r}; available: {options}"
    if isinstance(err, OverrideParseException):
        return f"override {err.override!r}: {str(err.message).splitlines()[0]}"
    message = str(err).strip()
    if message.startswith("Could not override '"):
        key = message.split("'")[1]
        close = difflib.get_close_matches(key, known_keys, n=1)
        hint = f"did you mean {close[0]}? " if close else ""
        return f"{key}: not a config key ({hint}a new key needs a leading '+', e.g. +{key}=...)"
    if message.startswith("Could not append to config. An item is already at '"):
        key = message.split("'")[1]
        return f"{key}: already a config key; set it without the leading '+' ({key}=...)"
    if message.startswith("Ambiguous value for argument"):
        argument = message.split("'")[1]
        return f"{argument}: several values need --multirun (-m) to sweep, or [a,b] for a list"
    return message.splitlines()[0] if message else type(err).__name__


def split_arguments(args: list[str]) -> tuple[list[str], str, bool] | None:
    """(overrides, config name, multirun) of an eval.run command line, or None if Hydra should handle it alone."""
    overrides, config_name, multirun = [], "config", False
    values = iter(args)
    for arg in values:
        flag = arg.split("=", 1)[0]
        if flag in HANDOVER_FLAGS:
            return None
        if flag in VALUE_FLAGS:
            value = arg.split("=", 1)[1] if "=" in arg else next(values, "")
            if flag in ("--config-name", "-cn"):
                config_name = value
            if flag in ("--config-path", "-cp", "--config-dir", "-cd"):
                return None  # another config tree: let Hydra report on it
        elif arg in ("--multirun", "-m"):
            multirun = True
        elif not arg.startswith("-"):
            overrides.append(arg)
    return overrides, config_name, multirun


def composition_error(args: list[str]) -> str | None:
    """Why the command line does not compose, in one line, or None when it does (sweeps: first values)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    split = split_arguments(args)
    if split is None:
        return None
    overrides, config_name, multirun = split
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        try:
            parsed = OverridesParser.create().parse_overrides(overrides)
            primary = []
            for override in parsed:
                if override.is_sweep_override() and multirun and override.is_discrete_sweep():
                    first = next(iter(override.sweep_string_iterator()))
                    primary.append(f"{override.get_key_element()}={first}")
                else:
                    primary.append(override.input_line)
            compose(config_name, overrides=primary, return_hydra_config=True)
        except (HydraException, OmegaConfBaseException) as err:
            try:
                known = _keys(compose(config_name))
            except (HydraException, OmegaConfBaseException):
                known = []
            return describe_error(err, known)
    return None
