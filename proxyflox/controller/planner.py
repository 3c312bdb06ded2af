"""Where each site runs, what each executor is told, and which sites train in a round.

Pure: no Parsl, no store, no files. :func:`plan_run` is also the run's pre-flight check: every
setting that depends on the Parsl config is checked here, before a run directory exists.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from proxyflox.errors import ConfigError
from proxyflox.messages import DataSpec, ModelSpec, SiteSetup
from proxyflox.preflight import check_data_settings, check_every_update_strategy, check_monitoring
from proxyflox.seeds import SAMPLING_STREAM, derive_seed
from proxyflox.settings import ExperimentConfig, SiteOptions, merge_site_options, site_codec
from proxyflox.sites import Deployment, site_executor_labels
from proxyflox.stores import BACKENDS, StoreRoute
from proxyflox.stores.multi import routes_for
from proxyflox.stores.settings import StoreSettings
from proxyflox.strategies import STRATEGIES, Strategy, build_strategy
from proxyflox.tree import Tree, build_tree


@dataclass(frozen=True)
class Plan:
    """One run's placement and sampling rules."""

    num_sites: int
    #: Executor label of each site: site i runs on site executor i mod n.
    placement: tuple[str, ...]
    aggregator: str
    #: What every executor's apps are told (site executors and the aggregator), by label.
    setups: Mapping[str, SiteSetup]
    seed: int
    clients_per_round: int | None = None
    fraction: float | None = None
    min_clients: int = 1
    #: Groups with aggregators of their own (``None``: a flat run).
    tree: Tree | None = None

    @property
    def site_labels(self) -> list[str]:
        """The site executors that host at least one site, in placement order."""
        return list(dict.fromkeys(self.placement))

    def setup_of(self, site: int) -> SiteSetup:
        """What the executor of ``site`` is told."""
        return self.setups[self.placement[site]]

    @property
    def sites_per_round(self) -> int:
        """How many sites train in a round.

        ``clients_per_round`` or ``fraction`` of all sites (at least ``min_clients``).
        """
        count = self.num_sites
        if self.clients_per_round is not None:
            count = min(self.clients_per_round, self.num_sites)
        elif self.fraction is not None:
            count = max(1, round(self.fraction * self.num_sites))
        return max(count, min(self.min_clients, self.num_sites))

    def sample(self, strategy: Strategy, round_number: int) -> list[int]:
        """The ``sites_per_round`` sites that train in a round, drawn from (seed, round)."""
        rng = np.random.default_rng(derive_seed(self.seed, SAMPLING_STREAM, round_number))
        return strategy.configure_train(
            round_number, list(range(self.num_sites)), rng, self.sites_per_round
        )

    def strategy(self, config: ExperimentConfig) -> Strategy:
        """The experiment's strategy, resolved for this run (its seed and sampling).

        Raises:
            ConfigError: if the strategy's settings cannot work for this run.
        """
        strategy = build_strategy(config.strategy).for_run(
            seed=self.seed, num_sites=self.num_sites, clients_per_round=self.sites_per_round
        )
        lossy = [
            label
            for label, setup in self.setups.items()
            if setup.compression is not None and setup.compression.lossy
        ]
        if strategy.clips_updates and lossy:
            raise ConfigError(
                f"compression: {strategy.name} bounds each site's change by clip_norm, which a "
                f"lossy codec (and its error feedback) would undo (executor {lossy[0]}); use "
                "codec none (lossless zstd is fine)"
            )
        return strategy


def plan_run(config: ExperimentConfig, deployment: Deployment) -> Plan:
    """Check the experiment against the Parsl config and place its sites.

    Raises:
        ConfigError: naming the setting that does not fit (one line).
    """
    site_labels = site_executor_labels(deployment.parsl_config, config.aggregator)
    tree = plan_tree(config, deployment)
    if tree is not None:  # a group's aggregator hosts no site
        site_labels = [label for label in site_labels if label not in tree.aggregators()]
        if not site_labels:
            raise ConfigError("tree: every executor is an aggregator; no site executor is left")
        check_tree_store(config.store)
    num_sites = config.sites or len(site_labels)
    if config.min_clients > num_sites:
        raise ConfigError(f"min_clients: {config.min_clients} is more than the {num_sites} sites")
    options = executor_options(config, deployment)
    check_data_settings(config, options, site_labels)
    check_monitoring(config)
    routes = store_routes(config, options, site_labels)
    plan = Plan(
        num_sites=num_sites,
        placement=tuple(site_labels[site % len(site_labels)] for site in range(num_sites)),
        aggregator=config.aggregator,
        setups={
            label: site_setup(config, opts, num_sites, routes.get(label))
            for label, opts in options.items()
        },
        seed=config.seed,
        clients_per_round=config.clients_per_round,
        fraction=config.fraction,
        min_clients=config.min_clients,
        tree=tree,
    )
    aggregator_data = options.get(config.aggregator, SiteOptions()).data_dir or config.data_dir
    check_every_update_strategy(config, plan.sites_per_round, aggregator_data)
    plan.strategy(config)  # its checks, before a run directory exists
    return plan


def check_tree_store(store: StoreSettings) -> None:
    """A tree keeps each lab's traffic in the lab; one endpoint keeping every object would not.

    Raises:
        ConfigError: the store (or one of its connectors) sets ``keep_on``.
    """
    named = [("store", store), *((f"store.connectors.{n}", c) for n, c in store.connectors.items())]
    for key, part in named:
        if part.keep_on is not None:
            raise ConfigError(
                f"{key}.keep_on: with an aggregator tree every group's objects would cross to "
                f"{part.keep_on!r}'s endpoint and back; leave keep_on unset (null) in a tree"
            )


def plan_tree(config: ExperimentConfig, deployment: Deployment) -> Tree | None:
    """The experiment's ``tree`` (or else the config module's), checked against its executors."""
    from_experiment = bool(config.tree.groups)
    return build_tree(
        config.tree if from_experiment else deployment.tree,
        [executor.label for executor in deployment.parsl_config.executors],
        config.aggregator,
        strategy=STRATEGIES[config.strategy.name],
        where="tree" if from_experiment else f"{deployment.path.name}: tree",
    )


def executor_options(config: ExperimentConfig, deployment: Deployment) -> dict[str, SiteOptions]:
    """Every executor's options, merged field by field.

    The store backend's come first, then the config module's, then the experiment's
    ``site_options``.
    """
    options = deployment.options_for(config)
    if config.transfer != "proxy":
        return options
    backend = BACKENDS[config.store.backend].site_options(config.store)
    return {
        label: merge_site_options(backend.get(label, SiteOptions()), site)
        for label, site in options.items()
    }


def store_routes(
    config: ExperimentConfig, options: Mapping[str, SiteOptions], site_labels: list[str]
) -> dict[str, StoreRoute]:
    """Each executor's route in a ``multi`` store (none for other stores), checked.

    Raises:
        ConfigError: a route some reader cannot follow, or one set for another backend.
    """
    if config.transfer == "proxy" and config.store.backend == "multi":
        return routes_for(
            config.store,
            site_labels,
            config.aggregator,
            put={label: opts.store_put for label, opts in options.items()},
            read={label: opts.store_read for label, opts in options.items()},
        )
    for label, opts in options.items():
        key = "store_put" if opts.store_put is not None else "store_read"
        if opts.store_put is not None or opts.store_read is not None:
            raise ConfigError(
                f"site_options.{label}.{key}: a route needs store.backend multi, not "
                f"{config.store.backend}"
                + (" (transfer: direct)" if config.transfer != "proxy" else "")
            )
    return {}


def site_setup(
    config: ExperimentConfig,
    options: SiteOptions,
    num_sites: int,
    store_route: StoreRoute | None = None,
) -> SiteSetup:
    """What one executor's apps need, its own options over the experiment's."""
    spec = site_codec(config.compression, options.compression).spec()
    return SiteSetup(
        data=data_spec(config, num_sites, options.data_dir),
        model=model_spec(config),
        local_epochs=options.local_epochs or config.local_epochs,
        batch_size=options.batch_size or config.batch_size,
        lr=config.lr,
        momentum=config.momentum,
        torch_threads=options.torch_threads or config.torch_threads,
        device=options.device or "cpu",
        proxystore_home=options.proxystore_home,
        store_route=store_route,
        compression=None if spec.exact else spec,
        state_dir=(options.state_dir or config.site_state_dir) if spec.feeds_back else None,
        attack=options.attack,
        attack_scale=options.attack_scale or 1.0,
    )


def data_spec(config: ExperimentConfig, num_sites: int, data_dir: str | None = None) -> DataSpec:
    """How a site computes its data; ``data_dir`` is its own (default: the experiment's)."""
    return DataSpec(
        dataset=config.dataset,
        data_dir=data_dir or config.data_dir,
        download=config.download,
        seed=config.seed,
        test_fraction=config.test_fraction,
        partition=config.partition,
        alpha=config.alpha,
        classes_per_site=config.classes_per_site,
        samples_per_site=config.samples_per_site,
        num_sites=num_sites,
    )


def model_spec(config: ExperimentConfig) -> ModelSpec:
    """The experiment's architecture."""
    return ModelSpec(config.model, config.depth, config.width_multiplier, config.seed)
