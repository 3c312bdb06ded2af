"""What the controller and the apps send each other: small typed records, never weights.

A task carries only what the app that runs it reads. Weights travel as references: a ProxyStore
proxy where a site resolves them (it finds its store through the proxy, so the store's config
travels once, inside it), a bare store key where the aggregator reads many of them from the one
store config of its task. With ``transfer: direct`` a reference is the arrays themselves (the
baseline that shows what the store saves).

Records that hold references compare by identity (``eq=False``): comparing two of them must never
resolve a proxy. Every record has ``__slots__``: pickled, it carries its field values without
their names, which keeps what Parsl ships per task small (a train task is under 4 KB).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from proxystore.store.config import StoreConfig

    from proxyflox.codecs import CodecSpec
    from proxyflox.data.base import DatasetInfo
    from proxyflox.stores.multi import StoreRoute
    from proxyflox.strategies import Strategy
    from proxyflox.weights import Layout

#: A proxy of weights, a store key, or (direct transfer) the arrays themselves.
WeightsRef = Any


@dataclass(frozen=True, slots=True)
class DataSpec:
    """How a site computes its own data where it runs (nothing but this is shipped to it)."""

    dataset: str
    data_dir: str | None
    download: bool
    seed: int
    test_fraction: float
    partition: str
    alpha: float
    classes_per_site: int
    samples_per_site: int | None
    num_sites: int


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """The architecture; weights are initialised from ``seed``."""

    model: str
    depth: int
    width_multiplier: float
    seed: int


@dataclass(frozen=True, slots=True)
class SiteSetup:
    """Everything an executor's apps need that does not change from round to round.

    Built once per executor from the experiment and the executor's options.
    """

    data: DataSpec
    model: ModelSpec
    local_epochs: int
    batch_size: int
    lr: float
    momentum: float
    torch_threads: int
    device: str
    #: ProxyStore home of this executor's endpoint (``store.backend: endpoint``).
    proxystore_home: str | None = None
    #: Where this executor puts and reads (``store.backend: multi``).
    store_route: StoreRoute | None = None
    #: How the sites of this executor encode their updates (``None``: ProxyStore's serializer).
    compression: CodecSpec | None = None
    #: Where they keep their state between rounds (error-feedback residuals).
    state_dir: str | None = None
    #: Experiments only: how these sites poison their updates (``None``: they do not).
    attack: str | None = None
    attack_scale: float = 1.0


@dataclass(frozen=True, slots=True)
class Instructions:
    """What the strategy tells every training site besides the global model."""

    #: FedProx's proximal term (0: plain local SGD).
    proximal_mu: float = 0.0
    #: ``weights``: return the trained model; ``delta``: trained minus received.
    update_kind: str = "weights"
    #: Names the run where sites keep state of their own (its directory's name).
    run_key: str = ""
    #: Clip the change to this L2 norm before it leaves the site (dpfedavg; ``None``: don't).
    clip_norm: float | None = None


@dataclass(frozen=True, eq=False, slots=True)
class GlobalModel:
    """A global model as the sites receive it."""

    weights: WeightsRef
    #: Input shape and classes (for ``folder``: the aggregator's), so every site builds the same
    #: architecture and maps its class folders to the same labels.
    dataset: DatasetInfo
    #: The strategy's state (server momentum, moments) stored beside it, if it has any.
    state: WeightsRef | None = None
    #: The state's single numbers (dpfedavg's clip norm), which the controller reads.
    state_scalars: dict[str, float] = field(default_factory=dict)
    #: Its arrays' names, dtypes and shapes, from the app that made it: what the aggregator
    #: holds every update to (never read from the store, whose bytes anyone with access wrote).
    layout: Layout | None = None

    def refs(self) -> Iterator[WeightsRef]:
        """The stored objects this record refers to."""
        yield self.weights
        if self.state is not None:
            yield self.state


@dataclass(frozen=True, eq=False, slots=True)
class TrainResult:
    """One site's update and what it measured; every time is taken on the site."""

    site: int
    #: ``None``: the site has no training samples, so it trained nothing and put nothing.
    update: WeightsRef
    num_samples: int
    #: Training samples per class: what ``partition.csv`` is made of.
    class_counts: list[int]
    train_loss: float
    resolve_seconds: float
    train_seconds: float
    put_seconds: float
    local_epochs: int
    batch_size: int
    device: str
    host: str
    pid: int
    #: Network namespace (``net:[4026531840]``): tells apart sites that share a host name.
    netns: str
    batch_job: str
    #: The update is the trained model's change from the global model the site received
    #: (what a codec compresses), whatever the strategy asked for.
    change: bool = False
    #: Bytes put into the store (as encoded) and the arrays' own bytes.
    sent_bytes: int = 0
    raw_bytes: int = 0
    encode_seconds: float = 0.0
    #: The change was within ``Instructions.clip_norm`` (``None``: not clipped).
    unclipped: bool | None = None

    def refs(self) -> Iterator[WeightsRef]:
        """The stored objects this record refers to."""
        if self.update is not None:
            yield self.update


@dataclass(frozen=True, slots=True)
class UpdateRef:
    """What the aggregator reads of one site's update."""

    update: WeightsRef
    num_samples: int
    #: Global versions published since the site's model was sent out (asynchronous runs).
    staleness: int = 0
    #: The update is a change from the global model the site trained from.
    change: bool = False
    #: That model, where it is not the task's global model (a stale asynchronous update).
    base: WeightsRef | None = None
    #: The site's change was within its clip norm (``None``: the site did not clip).
    unclipped: bool | None = None
    #: The site it came from (named in the reason if the update is left out).
    site: int | None = None


@dataclass(frozen=True, slots=True)
class InitTask:
    """Build the initial global model (or read it from a checkpoint) and put it."""

    setup: SiteSetup
    store_config: StoreConfig | None
    resume_from: str | None = None
    #: How the global model is put: ``exact`` or ``fp16`` (as the aggregator puts every one).
    broadcast: str = "exact"


@dataclass(frozen=True, slots=True)
class AggregateTask:
    """Make the next global model from the current one and the updates."""

    strategy: Strategy
    global_weights: WeightsRef
    dataset: DatasetInfo
    state: WeightsRef | None
    updates: tuple[UpdateRef, ...]
    #: Where the updates are read and the new model is put (``None``: direct transfer).
    store_config: StoreConfig | None
    proxystore_home: str | None = None
    store_route: StoreRoute | None = None
    #: Also write the new model there (the final ``model.pt``).
    save_path: str | None = None
    #: Also write the new model and the strategy state there (the round's checkpoint).
    checkpoint_dir: str | None = None
    #: How the new global model is put: ``exact`` or ``fp16``.
    broadcast: str = "exact"
    #: Where the result is put, where not into ``store_config`` (a group's partial goes to the
    #: store its parent reads).
    result_store_config: StoreConfig | None = None
    #: The global model's layout, which every update must have (``None``: the first update's).
    layout: Layout | None = None
    #: Fewer updates passing the checks stop the aggregation: nothing is put or written.
    min_updates: int = 1


#: An update the aggregator left out: its position in the task, its site, and why (one line).
Rejection = tuple[int, int, str]


@dataclass(frozen=True, eq=False, slots=True)
class AggregateResult:
    """The new global model and what making it cost, measured on the aggregator."""

    model: GlobalModel
    model_bytes: int
    num_updates: int
    aggregate_seconds: float
    resolve_seconds: float
    put_seconds: float
    checkpoint_seconds: float
    #: Decoding the updates (inside ``resolve_seconds``).
    decode_seconds: float = 0.0
    #: Updates left out: unreadable, not the model's layout, not finite, or without samples.
    rejected: tuple[Rejection, ...] = ()

    def refs(self) -> Iterator[WeightsRef]:
        """The stored objects this record refers to."""
        return self.model.refs()


@dataclass(frozen=True, slots=True)
class Primed:
    """What a priming app loaded into its worker process's caches (names and counts, no data)."""

    pid: int
    host: str
    #: What it loaded, e.g. ``("site 0: 360 samples",)`` or ``("test: 360 samples",)``.
    loaded: tuple[str, ...]
    seconds: float
    #: Why loading failed (the first error, one line); the app that needs the data reports it.
    error: str = ""


@dataclass(frozen=True, slots=True)
class Evaluation:
    """Accuracy and loss of a global model on some test data."""

    accuracy: float
    loss: float
    evaluate_seconds: float
    resolve_seconds: float
    #: For a site's local evaluation: the site, its test samples and their classes.
    site: int | None = None
    num_samples: int = 0
    class_counts: list[int] | None = None
