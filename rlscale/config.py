"""Pydantic schemas for scenario and training files.

Every user mistake in a YAML file is caught here and turned into a one-line
``ConfigError`` that names the file and the field, so the CLI can print it
and exit 2 instead of showing a traceback.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

PACKAGE_ROOT = Path(__file__).resolve().parent
PROJECT_ROOT = PACKAGE_ROOT.parent
ENVS_DIR = Path(os.environ.get("RLSCALE_ENVS", PROJECT_ROOT / "envs"))
TRAIN_DIR = PROJECT_ROOT / "train"
MODELS_DIR = PROJECT_ROOT / "models"


class ConfigError(ValueError):
    """A user-facing configuration error: one line, names file and field."""


NAME_CHARS = 128
MAX_SERVICES = 1000
"""Services of one scenario: the generalist decides for 1,000 in one batch; 10,000 took 25 s to load."""
MAX_POOLS = 64
MAX_FLASH_PER_DAY = 100.0
"""A flash crowd every quarter of an hour at most; 10^9 a day made a 60-step simulation run for minutes."""


def _check_interval(name: str, value: tuple[float, float] | None) -> None:
    if value is not None and value[0] > value[1]:
        raise ValueError(f"{name}: expected [low, high] with low <= high, got [{value[0]:g}, {value[1]:g}]")


class Strict(BaseModel):
    """Every schema: unknown keys are errors, and no number may be NaN or infinite (``peak_rps: .inf`` was accepted)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class PoolSpec(Strict):
    name: str = Field(min_length=1, max_length=NAME_CHARS)
    vcpu: float = Field(gt=0, le=1024, description="allocatable vCPU per node")
    memory_gib: float = Field(gt=0, le=65536)
    gpus: int = Field(default=0, ge=0, le=64)
    price_per_hour: float = Field(ge=0, le=10_000, description="USD per node-hour, paid while provisioning too")
    provision_delay_s: float = Field(default=120.0, ge=0, le=86_400)
    min_nodes: int = Field(default=0, ge=0, le=256)
    max_nodes: int = Field(gt=0, le=256)
    speed: float = Field(default=1.0, gt=0, le=100, description="relative CPU speed of this node type")
    spot_interruptions_per_hour: float = Field(default=0.0, ge=0, le=1)
    idle_release_s: float = Field(default=300.0, ge=0, le=7 * 86_400, description="empty nodes are released after this")

    @model_validator(mode="after")
    def _min_le_max(self) -> "PoolSpec":
        if self.min_nodes > self.max_nodes:
            raise ValueError(f"min_nodes ({self.min_nodes}) exceeds max_nodes ({self.max_nodes})")
        return self


class ReplicaSpec(Strict):
    """A replica's requests (what packing and cost see) and, optionally, what it really uses (``docs/PLANNING.md``)."""

    cpu: float = Field(gt=0, le=1024, description="CPU request: reserved on the node whether used or not")
    memory_gib: float = Field(gt=0, le=65536)
    gpus: int = Field(default=0, ge=0, le=64)
    cpu_used: float | None = Field(default=None, gt=0, le=1024, description=(
        "cores a fully busy replica uses (a one-thread server: 1, whatever it requests); default: cpu. "
        "It serves cpu_used / work_s requests/s; a request below it borrows the node's idle cores (no CPU limit), "
        "and a node whose replicas use more cores than it has slows them all"))
    memory_used_gib: float | None = Field(default=None, gt=0, le=65536, description=(
        "peak working set of a busy replica; default: memory_gib (only simulated usage histories read it)"))


class SloSpec(Strict):
    p95_latency_s: float | None = Field(default=None, gt=0, le=86_400, description="online services")
    max_backlog_age_s: float | None = Field(default=None, gt=0, le=30 * 86_400, description="batch services")


class FlashCrowdSpec(Strict):
    per_day: float = Field(default=0.0, ge=0, le=MAX_FLASH_PER_DAY, description="expected flash crowds per simulated day")
    magnitude: tuple[Annotated[float, Field(ge=1, le=1000)], Annotated[float, Field(ge=1, le=1000)]] = (3.0, 10.0)
    ramp_s: float = Field(default=120.0, ge=0, le=86_400)
    decay_s: float = Field(default=900.0, gt=0, le=7 * 86_400)

    @model_validator(mode="after")
    def _low_le_high(self) -> "FlashCrowdSpec":
        _check_interval("magnitude", self.magnitude)
        return self


class BatchArrivalSpec(Strict):
    """On/off arrivals: bursts of submitted work separated by quiet gaps."""

    on_fraction: float = Field(default=0.0, ge=0, le=1, description="0 disables on/off arrivals")
    mean_on_s: float = Field(default=1800.0, gt=0, le=7 * 86_400)
    off_level: float = Field(default=0.1, ge=0, le=1, description="load during 'off' as a fraction of 'on'")


class WorkloadSpec(Strict):
    """Arrival rate of one service (requests or work units per second)."""

    peak_rps: float = Field(gt=0, le=1e8, description="the generated trace is scaled so its seasonal peak is this")
    trough_fraction: float = Field(default=0.25, gt=0, le=1, description="night level / day peak")
    peak_hour: float = Field(default=14.0, ge=0, lt=24)
    weekend_factor: float = Field(default=0.8, gt=0, le=2)
    trend_per_day: float = Field(default=0.0, ge=-0.5, le=0.5)
    noise: float = Field(default=0.05, ge=0, le=1, description="sigma of multiplicative AR(1) noise")
    flash_crowds: FlashCrowdSpec = FlashCrowdSpec()
    batch: BatchArrivalSpec = BatchArrivalSpec()
    trace: str | None = Field(default=None, min_length=1, max_length=4096,
                              description="a timestamp,value CSV; replaces the generator's shape")
    trace_column: str = Field(default="value", min_length=1, max_length=NAME_CHARS)
    trace_start_s: float = Field(default=0.0, ge=0, le=1e9, description="replay the trace from this many seconds in "
                                 "(e.g. a held-out tail), looping over what follows")


class ServiceSpec(Strict):
    name: str = Field(min_length=1, max_length=NAME_CHARS)
    kind: Literal["online", "batch"] = "online"
    work_s: float = Field(gt=0, le=86_400, description="CPU-seconds (GPU-seconds when the replica asks for GPUs) per request at speed 1")
    replica: ReplicaSpec
    cold_start_s: float = Field(default=30.0, ge=0, le=86_400)
    min_replicas: int = Field(default=1, ge=0, le=512)
    max_replicas: int = Field(gt=0, le=512)
    initial_replicas: int | None = Field(default=None, ge=0, le=512)
    queue_limit: float = Field(default=10_000.0, gt=0, le=1e12, description="requests held in the queue before drops")
    service_cv: float = Field(default=1.0, ge=0, le=4, description=(
        "coefficient of variation of the service time: 1 = exponential (M/M/c), 0 = constant; "
        "scales the queueing wait by Kingman's (1 + cv^2) / 2"))
    slo: SloSpec
    pools: list[str] = Field(min_length=1, max_length=MAX_POOLS, description="pool preference order")
    workload: WorkloadSpec

    @model_validator(mode="after")
    def _check(self) -> "ServiceSpec":
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas ({self.min_replicas}) exceeds max_replicas ({self.max_replicas})")
        if self.kind == "online" and self.slo.p95_latency_s is None:
            raise ValueError("online services need slo.p95_latency_s")
        if self.kind == "batch" and self.slo.max_backlog_age_s is None:
            raise ValueError("batch services need slo.max_backlog_age_s")
        return self

    @property
    def slo_target_s(self) -> float:
        value = self.slo.p95_latency_s if self.kind == "online" else self.slo.max_backlog_age_s
        assert value is not None
        return value

    @property
    def servers_per_replica(self) -> float:
        """Parallel servers inside a replica: its GPUs if it asks for any, else the cores it requests and can use."""
        if self.replica.gpus > 0:
            return float(self.replica.gpus)
        return self.replica.cpu if self.replica.cpu_used is None else self.replica.cpu_used

    @property
    def wait_scale(self) -> float:
        """Kingman's factor on the M/M/c queueing wait, for Poisson arrivals: a real service is rarely exponential."""
        return 0.5 * (1.0 + self.service_cv * self.service_cv)

    @property
    def replica_rps(self) -> float:
        """Requests per second one replica serves at 100% utilisation on a speed-1 node."""
        return self.servers_per_replica / self.work_s


class ActionSpec(Strict):
    max_step: int = Field(default=3, ge=1, le=50, description="k: per-service scale delta in {-k..k}")


class RewardSpec(Strict):
    cost_scale: float = Field(gt=0, le=1e9, description="USD per decision interval that counts as 1 unit of cost")
    w_slo: float = Field(default=1.0, ge=0, le=1e6)
    w_drop: float = Field(default=5.0, ge=0, le=1e6)
    w_churn: float = Field(default=0.01, ge=0, le=1e6)


class ImbalanceSpec(Strict):
    drift_sigma: float = Field(default=0.02, ge=0, le=1, description="per-step sigma of node speed log-drift")
    drift_reversion: float = Field(default=0.02, ge=0, le=1)
    contention: float = Field(default=0.25, ge=0, lt=1, description="slowdown of a fully packed node")


class RandomisationSpec(Strict):
    """Workload randomisation applied at each training reset (evaluation uses none)."""

    scale: tuple[Annotated[float, Field(gt=0, le=100)], Annotated[float, Field(gt=0, le=100)]] = (0.8, 1.2)
    phase_h: tuple[Annotated[float, Field(ge=-24, le=24)], Annotated[float, Field(ge=-24, le=24)]] = (-2.0, 2.0)
    flash_per_day: tuple[Annotated[float, Field(ge=0, le=MAX_FLASH_PER_DAY)],
                         Annotated[float, Field(ge=0, le=MAX_FLASH_PER_DAY)]] | None = None
    noise: tuple[Annotated[float, Field(ge=0, le=1)], Annotated[float, Field(ge=0, le=1)]] | None = None
    random_start_day: bool = True

    @model_validator(mode="after")
    def _low_le_high(self) -> "RandomisationSpec":
        for name in ("scale", "phase_h", "flash_per_day", "noise"):
            _check_interval(name, getattr(self, name))
        return self


class Scenario(Strict):
    name: str = Field(min_length=1, max_length=NAME_CHARS)
    description: str = Field(default="", max_length=10_000)
    step_s: float = Field(default=60.0, ge=1.0, le=3600, description="decision interval; below 1 s no real autoscaler acts")
    substeps: int = Field(default=6, ge=1, le=60)
    episode_steps: int = Field(default=1440, ge=1, le=1_000_000, description="at most ~2 years of 1-minute steps")
    pools: list[PoolSpec] = Field(min_length=1, max_length=MAX_POOLS)
    services: list[ServiceSpec] = Field(min_length=1, max_length=MAX_SERVICES)
    actions: ActionSpec = ActionSpec()
    reward: RewardSpec
    imbalance: ImbalanceSpec = ImbalanceSpec()
    randomisation: RandomisationSpec = RandomisationSpec()

    @model_validator(mode="after")
    def _cross_check(self) -> "Scenario":
        pool_names = [p.name for p in self.pools]
        if len(set(pool_names)) != len(pool_names):
            raise ValueError(f"pool names must be unique, got {pool_names}")
        svc_names = [s.name for s in self.services]
        if len(set(svc_names)) != len(svc_names):
            raise ValueError(f"service names must be unique, got {svc_names}")
        for i, svc in enumerate(self.services):
            for name in svc.pools:
                if name not in pool_names:
                    raise ValueError(f"services[{i}].pools: unknown pool {name!r} (pools are {pool_names})")
            fits = [
                p.name
                for p in self.pools
                if p.name in svc.pools
                and svc.replica.cpu <= p.vcpu
                and svc.replica.memory_gib <= p.memory_gib
                and svc.replica.gpus <= p.gpus
            ]
            if not fits:
                raise ValueError(f"services[{i}].replica: does not fit on a node of any of its pools {svc.pools}")
        return self

    def pool_index(self, name: str) -> int:
        return [p.name for p in self.pools].index(name)


# --------------------------------------------------------------------------- loading


def _format_validation_error(source: str, err: ValidationError) -> str:
    first = err.errors()[0]
    loc = ".".join(
        f"[{part}]" if isinstance(part, int) else str(part) for part in first["loc"]
    ).replace(".[", "[")
    msg = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        msg = "unknown key"
    where = f"{loc}: " if loc else ""
    return f"{source}: {where}{msg}"


def parse_model(model: type[BaseModel], data: Any, source: str) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_validation_error(source, err)) from None


MAX_USER_FILE_BYTES = 4 * 1024 * 1024
"""A scenario, training file, service.yaml, sweep file or cluster config is a few KiB; a 200 MB one took minutes."""
MAX_YAML_DEPTH = 32
"""Nesting levels of a YAML file (a scenario needs 5); 500 levels raised RecursionError."""


def check_regular(st: os.stat_result, path: str | Path, what: str, max_bytes: int) -> None:
    """A file the user named must be a regular file of at most ``max_bytes``: one ConfigError line otherwise."""
    if stat.S_ISDIR(st.st_mode):
        raise ConfigError(f"{path}: {what} is a directory, expected a regular file")
    if not stat.S_ISREG(st.st_mode):
        raise ConfigError(f"{path}: {what} is not a regular file (a device, pipe or socket cannot be read as one)")
    if st.st_size > max_bytes:
        raise ConfigError(f"{path}: {what} is {st.st_size} bytes; at most {max_bytes}")


def read_user_bytes(path: Path, what: str = "file", max_bytes: int = MAX_USER_FILE_BYTES) -> bytes:
    """At most ``max_bytes`` of a regular file the user named, or one ConfigError line.

    The file is opened without blocking and checked on the open descriptor, so
    a FIFO cannot hang the read and a symlink to ``/dev/zero`` cannot fill memory.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise ConfigError(f"{path}: {what} not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: {what} is a directory, expected a regular file") from None
    except OSError as err:
        raise ConfigError(f"{path}: cannot read ({err.strerror})") from None
    try:
        check_regular(os.fstat(fd), path, what, max_bytes)
        chunks, size = [], 0
        while chunk := os.read(fd, min(1 << 20, max_bytes + 1 - size)):
            chunks.append(chunk)
            size += len(chunk)
            if size > max_bytes:
                raise ConfigError(f"{path}: {what} grew beyond {max_bytes} bytes while being read")
        return b"".join(chunks)
    except OSError as err:
        raise ConfigError(f"{path}: cannot read ({err.strerror})") from None
    finally:
        os.close(fd)


def decode_user_text(data: bytes, path: Path, what: str = "file") -> str:
    """UTF-8 (a leading BOM is dropped); a bad byte is one line with its offset, not a UnicodeDecodeError."""
    bom = 3 if data.startswith(b"\xef\xbb\xbf") else 0
    try:
        return data[bom:].decode("utf-8")
    except UnicodeDecodeError as err:
        offset = bom + err.start
        raise ConfigError(f"{path}: {what} is not UTF-8 text (byte 0x{data[offset]:02x} at offset {offset})") from None


def read_user_text(path: Path, what: str = "file", max_bytes: int = MAX_USER_FILE_BYTES) -> str:
    """A text file the user named, bounded and UTF-8, or one ConfigError line naming the file."""
    return decode_user_text(read_user_bytes(Path(path), what, max_bytes), Path(path), what)


class _Refused(yaml.YAMLError):
    """What ``_Loader`` refuses: one line, already naming the line of the file."""


class _Loader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses what a config file never needs: deep nesting, aliases, duplicate keys.

    A duplicate key used to win silently (the last one); an alias can make a
    few lines expand to billions of values once validated.
    """

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark
            raise _Refused(f"aliases (*name) are not accepted, at line {mark.line + 1}")
        self.depth += 1
        try:
            if self.depth > MAX_YAML_DEPTH:
                mark = self.peek_event().start_mark
                raise _Refused(f"nested deeper than {MAX_YAML_DEPTH} levels at line {mark.line + 1}")
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        if isinstance(node, yaml.MappingNode):
            seen: set[Any] = set()
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                try:
                    duplicate = key in seen
                    seen.add(key)
                except TypeError:  # an unhashable key: the constructor below says so
                    continue
                if duplicate:
                    raise _Refused(f"duplicate key {str(key)[:40]!r} at line {key_node.start_mark.line + 1}")
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: Path, what: str = "file") -> Any:
    """A user's YAML file: bounded in size and depth, UTF-8, no duplicate keys or aliases; else one ConfigError line."""
    text = read_user_text(path, what)
    try:
        loader = _Loader(text)
        try:
            return loader.get_single_data()
        finally:
            loader.dispose()
    except _Refused as err:
        raise ConfigError(f"{path}: {err}") from None
    except yaml.reader.ReaderError as err:
        raise ConfigError(f"{path}: not valid YAML (character 0x{err.character:02x} at character {err.position})") from None
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}: not valid YAML{where}") from None
    except yaml.YAMLError:
        raise ConfigError(f"{path}: not valid YAML") from None
    except RecursionError:
        raise ConfigError(f"{path}: nested deeper than {MAX_YAML_DEPTH} levels") from None


def scenario_names() -> list[str]:
    return sorted(p.stem for p in ENVS_DIR.glob("*.yaml"))


def resolve_scenario_path(name_or_path: str | os.PathLike[str]) -> Path:
    text = str(name_or_path)
    candidate = Path(text)
    if candidate.suffix in (".yaml", ".yml") or os.sep in text:
        if not candidate.exists():
            raise ConfigError(f"{candidate}: scenario file not found")
        return candidate
    named = ENVS_DIR / f"{text}.yaml"
    if not named.exists():
        raise ConfigError(f"scenario {text!r}: not a file and not one of {scenario_names()}")
    return named


def load_scenario(name_or_path: str | os.PathLike[str] | Scenario) -> Scenario:
    """Load a scenario by name (from ``envs/``) or path; raises ConfigError with one line."""
    if isinstance(name_or_path, Scenario):
        return name_or_path
    path = resolve_scenario_path(name_or_path)
    data = read_yaml(path, "scenario")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of scenario fields")
    scenario = parse_model(Scenario, data, str(path))
    return _resolve_trace_paths(scenario, path.parent)


def _resolve_trace_paths(scenario: Scenario, base: Path) -> Scenario:
    services = []
    for svc in scenario.services:
        trace = svc.workload.trace
        if trace is not None and not Path(trace).is_absolute():
            resolved = (base / trace).resolve()
            svc = svc.model_copy(update={"workload": svc.workload.model_copy(update={"trace": str(resolved)})})
        services.append(svc)
    return scenario.model_copy(update={"services": services})


# --------------------------------------------------------------------------- training files


class NormalizeSpec(Strict):
    norm_obs: bool = True
    norm_reward: bool = True
    clip_obs: float = Field(default=10.0, gt=0, le=1000)
    gamma: float | None = Field(default=None, gt=0, le=1)


VALIDATION_SEED_BASE = 5_000
"""Seeds from here up to TEST_SEED_BASE pick the best checkpoint during training."""
TEST_SEED_BASE = 10_000
"""Seeds from here up are what cards, reports and docs/RESULTS.md are measured on: never trained or selected on."""


class EvalSpec(Strict):
    """Validation during training: seeds never used for training, and below the test seeds."""

    freq: int = Field(default=50_000, gt=0, le=10**10, description="environment steps between evaluations")
    seeds: int = Field(default=5, ge=1, le=100)
    seed_base: int = Field(default=VALIDATION_SEED_BASE, ge=1000, lt=TEST_SEED_BASE)
    episode_steps: int | None = Field(default=None, ge=1, le=1_000_000)

    @model_validator(mode="after")
    def _below_test_seeds(self) -> "EvalSpec":
        if self.seed_base + self.seeds > TEST_SEED_BASE:
            raise ValueError(f"seed_base + seeds must stay below the test seeds ({TEST_SEED_BASE})")
        return self


class PolicyKwargs(Strict):
    net_arch: list[Annotated[int, Field(ge=1, le=4096)]] = Field(default=[64, 64], min_length=1, max_length=8)
    activation_fn: Literal["tanh", "relu"] = "tanh"


class GeneralRanges(Strict):
    """What the generalist's training clusters are drawn from; the card states these as the policy's range."""

    step_s: list[Annotated[float, Field(ge=1, le=3600)]] = Field(default=[30.0, 60.0, 60.0, 120.0], min_length=1, max_length=64)
    peak_replicas: float = Field(default=250.0, gt=2, le=512, description="peak demand in replicas at 100% utilisation")
    max_replicas: int = Field(default=512, ge=3, le=512)
    slo_over_work: tuple[Annotated[float, Field(gt=0, le=1e6)], Annotated[float, Field(gt=0, le=1e6)]] = (2.5, 40.0)
    provision_delay_s: tuple[Annotated[float, Field(ge=0, le=86_400)], Annotated[float, Field(ge=0, le=86_400)]] = (15.0, 300.0)
    cold_start_s: tuple[Annotated[float, Field(ge=0, le=86_400)], Annotated[float, Field(ge=0, le=86_400)]] = (0.0, 180.0)
    capacity_error: float = Field(default=0.2, ge=0, lt=1, description="declared vs true per-replica capacity")

    @model_validator(mode="after")
    def _low_le_high(self) -> "GeneralRanges":
        for name in ("slo_over_work", "provision_delay_s", "cold_start_s"):
            _check_interval(name, getattr(self, name))
        return self


class ConstraintSpec(Strict):
    """Constrained training: the SLO and drop weights become Lagrange multipliers (``general.constraint``)."""

    lr: float = Field(default=0.1, gt=0, le=10, description="dual step: log-multiplier change per unit of relative excess")
    every: int = Field(default=256, ge=1, le=10**7, description="intervals of every slot between two multiplier updates")
    slack: float = Field(default=0.0, ge=-1, le=1, description="allowed relative excess over the rule twin's rate")
    bounds: tuple[Annotated[float, Field(gt=0, le=1e9)], Annotated[float, Field(gt=0, le=1e9)]] = Field(default=(0.5, 500.0), description="the multipliers stay within these")


class GeneralSpec(Strict):
    """Training the generalist (``train/general.yaml``): the cluster and traffic distribution and the reward."""

    engines: int = Field(default=4, ge=1, le=256, description="cluster slots, each re-drawn when its episodes end")
    episode_steps: int = Field(default=720, ge=16, le=100_000)
    trace: str | None = Field(default=None, min_length=1, max_length=4096, description="a real timestamp,value CSV whose first days are replayed")
    trace_train_days: float = Field(default=5.0, gt=0, le=366)
    batch_fraction: float = Field(default=0.1, ge=0, le=1)
    spot_fraction: float = Field(default=0.3, ge=0, le=1)
    extra_pool_fraction: float = Field(default=0.2, ge=0, le=1)
    w_slo: float = Field(default=20.0, ge=0, le=1e6)
    w_drop: float = Field(default=50.0, ge=0, le=1e6)
    w_churn: float = Field(default=0.05, ge=0, le=1e6)
    rule_twin: bool = Field(default=False, description="reward relative to the start-level rule on the same episode (a baseline)")
    start_level: int = Field(default=4, ge=0, le=7, description="index into the target levels the fresh policy is biased to (4: 72%)")
    start_preference: float = Field(default=4.0, ge=0, le=20, description=(
        "logit bias of the fresh policy towards start_level (4: the other levels are drawn ~1.6% of the time each)"))
    scenarios: list[str] = Field(
        default=[], max_length=64, description="single-service scenarios (envs/ names) drawn in place of a random cluster, on training seeds")
    scenario_fraction: float = Field(default=0.0, ge=0, le=1, description="share of slot draws that use one of `scenarios`")
    twin_penalty: Literal["difference", "excess"] = Field(
        default="difference", description="excess: pay only for violations and drops beyond the rule twin's (needs rule_twin)")
    constraint: ConstraintSpec | None = Field(
        default=None, description="adapt w_slo and w_drop so the policy's rates match the rule twin's (needs rule_twin)")
    ranges: GeneralRanges = GeneralRanges()
    validation: list[str] = Field(default=["web-diurnal", "flash-crowd", "mixed-pools", "ml-platform"], min_length=1, max_length=64)
    history_days: float = Field(default=0.0, ge=0, le=14, description=(
        "days of each service's past demand every decision reads (DESIGN.md section 15); 0: the history-free policy"))
    history_none_fraction: float = Field(default=0.15, ge=0, le=1, description=(
        "share of training episodes with no history, so the policy learns the behaviour of a new service"))
    history_short_fraction: float = Field(default=0.15, ge=0, le=1, description=(
        "share of training episodes with one to two days of history (a service that has just started)"))
    hold_steps: int = Field(default=1, ge=1, le=240, description=(
        "with history: the network picks a level and a forecast use every this many intervals, held between"))
    calibration_days: float = Field(default=0.0, ge=0, le=14, description=(
        "days of each service's history replayed to calibrate the policy's base level (DESIGN.md section 15): the "
        "network's start_level then reads as the hottest level as safe as HPA on those days; 0: no calibration"))
    train_bases: list[Annotated[int, Field(ge=0, le=7)]] = Field(default=[], max_length=8, description=(
        "base levels (indices into the target levels) drawn per cluster slot in training, the rule twin at the same "
        "base, so the network learns its picks as offsets from a calibrated base; []: the start level only"))
    train_calibration_days: float = Field(default=0.0, ge=0, le=14, description=(
        "each cluster slot's base is the rule's calibrated on this many days of its own history, as serving sets it "
        "(in place of train_bases); 0: off"))
    base_feature: bool = Field(default=False, description=(
        "the network reads its base as a feature (needs a trained base and calibration_days): offsets that depend on it"))

    @model_validator(mode="after")
    def _twin_options_need_the_twin(self) -> "GeneralSpec":
        if self.constraint is not None and not self.rule_twin:
            raise ValueError("constraint: needs rule_twin: true (the rates it holds the policy to are the twin's)")
        if self.twin_penalty != "difference" and not self.rule_twin:
            raise ValueError("twin_penalty: needs rule_twin: true (the excess is over the twin's)")
        if self.constraint is not None and self.constraint.bounds[0] > self.constraint.bounds[1]:
            raise ValueError("constraint.bounds: expected [low, high] with low <= high")
        if self.train_bases and not self.rule_twin:
            raise ValueError("train_bases: needs rule_twin: true (the twin plays the start level at the same base)")
        if self.train_calibration_days > 0 and (self.train_bases or not self.rule_twin):
            raise ValueError("train_calibration_days: needs rule_twin: true and no train_bases (it sets the base)")
        trained_base = bool(self.train_bases) or self.train_calibration_days > 0
        if self.base_feature and not (trained_base and self.calibration_days > 0):
            raise ValueError("base_feature: needs train_bases or train_calibration_days, and calibration_days "
                             "(a base to see, in training and serving)")
        return self


class TrainConfig(Strict):
    """One rl-zoo3-style training file (``train/ppo-<scenario>.yaml``)."""

    scenario: str = Field(min_length=1, max_length=4096)
    algo: Literal["ppo"] = "ppo"
    seed: int = Field(default=0, ge=0, lt=1000, description="training seeds stay below the evaluation seeds")
    n_envs: int = Field(default=16, ge=1, le=4096)
    n_timesteps: int = Field(default=1_000_000, gt=0, le=10**10)
    episode_steps: int | None = Field(default=None, ge=1, le=1_000_000)
    policy: Literal["MlpPolicy"] = "MlpPolicy"
    policy_kwargs: PolicyKwargs = PolicyKwargs()
    n_steps: int = Field(default=256, ge=8, le=1_000_000)
    batch_size: int = Field(default=1024, ge=8, le=10**7)
    n_epochs: int = Field(default=10, ge=1, le=1000)
    gamma: float = Field(default=0.99, gt=0, le=1)
    gae_lambda: float = Field(default=0.95, gt=0, le=1)
    ent_coef: float = Field(default=0.0, ge=0, le=10)
    vf_coef: float = Field(default=0.5, ge=0, le=100)
    clip_range: float = Field(default=0.2, gt=0, le=10)
    max_grad_norm: float = Field(default=0.5, gt=0, le=1e6)
    learning_rate: float | str = Field(default=3e-4, description="a float, or 'lin_<float>' for a linear decay to 0")
    normalize: NormalizeSpec = NormalizeSpec()
    randomise: bool = True
    randomisation: RandomisationSpec | None = Field(default=None, description="overrides the scenario's")
    reward: RewardSpec | None = Field(
        default=None, description="overrides the scenario's reward weights for training (rl-zoo3's env_kwargs)"
    )
    eval: EvalSpec = EvalSpec()
    general: GeneralSpec | None = Field(default=None, description="train the generalist instead of a specialist")

    @model_validator(mode="after")
    def _check_lr(self) -> "TrainConfig":
        lr = self.learning_rate
        if isinstance(lr, str):
            if not lr.startswith("lin_") or len(lr) > 32:
                raise ValueError("learning_rate: expected a float or 'lin_<float>'")
            try:
                lr = float(lr[4:])
            except ValueError:
                raise ValueError("learning_rate: expected a float or 'lin_<float>'") from None
        if not 0 < lr <= 1:  # NaN fails this too
            raise ValueError(f"learning_rate: expected a number in (0, 1], got {lr:g}")
        return self


def load_train_config(path: str | os.PathLike[str]) -> TrainConfig:
    p = Path(path)
    if not p.exists() and not p.is_absolute() and (TRAIN_DIR / p.name).exists():
        p = TRAIN_DIR / p.name
    data = read_yaml(p, "training config")
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: expected a mapping of training settings")
    return parse_model(TrainConfig, data, str(p))
