"""Parsl config modules: finding and loading one, and which of its executors are sites.

A config module (``parsl_configs/*.py``, or any file) builds and exposes ``config``, a
``parsl.config.Config``, the way Parsl's own ``parsl/configs/*.py`` do. Every executor except
the aggregator's is a site executor; the planner maps sites onto them round-robin.
"""

from __future__ import annotations

import importlib.util
import itertools
import sys
from dataclasses import dataclass, field
from pathlib import Path

from parsl.config import Config

from proxyflox.errors import ConfigError, did_you_mean
from proxyflox.settings import ExperimentConfig, SiteOptions, merge_site_options, site_options_from
from proxyflox.tree import TreeSettings, tree_settings

#: Where ``--config NAME`` looks when NAME is not a path.
CONFIG_DIR = Path(__file__).resolve().parent.parent / "parsl_configs"

_module_ids = itertools.count()


def find_config_file(name: str) -> Path:
    """``local.py`` -> ``parsl_configs/local.py``; a path is taken as it is."""
    candidates = [Path(name)]
    if not Path(name).is_absolute():
        for directory in (Path.cwd() / "parsl_configs", CONFIG_DIR):
            candidates.append(directory / name)
            if not name.endswith(".py"):
                candidates.append(directory / f"{name}.py")
    for candidate in candidates:
        if candidate.is_file():
            return candidate.resolve()
    known = sorted(p.name for p in CONFIG_DIR.glob("*.py")) if CONFIG_DIR.is_dir() else []
    raise ConfigError(
        f"config: Parsl config {name!r} not found as a file or in {CONFIG_DIR}"
        f"{did_you_mean(name, known)}; known: {', '.join(known) or 'none'}"
    )


@dataclass
class Deployment:
    """A loaded config module: the Parsl ``config`` and optional per-executor ``site_options``."""

    parsl_config: Config
    path: Path
    site_options: dict[str, SiteOptions] = field(default_factory=dict)
    #: The module's ``tree`` (groups of its executors), used where the experiment sets none.
    tree: TreeSettings = field(default_factory=TreeSettings)

    def options_for(self, experiment: ExperimentConfig) -> dict[str, SiteOptions]:
        """Options of every executor: the module's, overridden by the experiment's ``site_options``.

        Field by field: an option the experiment leaves unset keeps the module's value.
        """
        labels = [executor.label for executor in self.parsl_config.executors]
        for label in experiment.site_options:
            if label not in labels:
                raise ConfigError(
                    f"site_options.{label}: no executor labelled {label!r} in {self.path.name}"
                    f"{did_you_mean(label, labels)}; labels: {', '.join(labels)}"
                )
        return {
            label: merge_site_options(
                self.site_options.get(label, SiteOptions()),
                experiment.site_options.get(label, SiteOptions()),
            )
            for label in labels
        }


def load_deployment(name: str) -> Deployment:
    """Import a config module afresh; return its ``config`` and ``site_options``.

    Each call executes the module again, because a Parsl ``Config``'s executors can be loaded
    only once.
    """
    path = find_config_file(name)
    module_name = f"proxyflox_parsl_config_{next(_module_ids)}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ConfigError(f"config: {path} cannot be imported as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except ConfigError:
        raise
    except Exception as err:
        raise ConfigError(f"config: importing {path} failed: {type(err).__name__}: {err}") from err
    finally:
        sys.modules.pop(module_name, None)
    config = getattr(module, "config", None)
    if not isinstance(config, Config):
        raise ConfigError(
            f"config: {path} must define `config`, a parsl.config.Config "
            f"(found {type(config).__name__})"
        )
    options = site_options_from(getattr(module, "site_options", {}), f"{path.name}: site_options")
    labels = [executor.label for executor in config.executors]
    for label in options:
        if label not in labels:
            raise ConfigError(
                f"{path.name}: site_options names executor {label!r}, which the config does not "
                f"have{did_you_mean(label, labels)}; labels: {', '.join(labels)}"
            )
    tree = tree_settings(getattr(module, "tree", {}), f"{path.name}: tree")
    return Deployment(config, path, options, tree)


def site_executor_labels(config: Config, aggregator: str) -> list[str]:
    """Labels of the site executors: every executor but the aggregator's, in config order."""
    labels = [executor.label for executor in config.executors]
    if aggregator not in labels:
        raise ConfigError(
            f"aggregator: no executor labelled {aggregator!r} in the Parsl config"
            f"{did_you_mean(aggregator, labels)}; labels: {', '.join(labels)}"
        )
    sites = [label for label in labels if label != aggregator]
    if not sites:
        raise ConfigError("config: the Parsl config has no site executor besides the aggregator")
    return sites
