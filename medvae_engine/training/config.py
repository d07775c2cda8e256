"""Training configuration: a dataclass schema and a strict YAML loader.

Every key of a training YAML is a field below. Unknown, missing (required) and ill-typed keys raise
a `ConfigError` naming the file and the dotted key. Data and weights paths are relative to the YAML
file's folder; ``run.output_dir`` is relative to the working directory.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Literal, Union

import yaml

from ..data.sources import SourceSpec
from ..errors import ConfigError, MedVAEError

STAGES = ("stage1", "stage2_2d", "stage2_3d")


@dataclasses.dataclass
class ModelSection:
    init: str = "scratch"  # scratch, a zoo name or a checkpoint file (.safetensors/.ckpt/.pt)
    spatial_dims: int = 2  # architecture when init is scratch
    in_channels: int = 1
    ch: int = 32
    ch_mult: list[int] = dataclasses.field(default_factory=lambda: [1, 2, 4])
    num_res_blocks: int = 2
    z_channels: int = 1
    norm_groups: int = 32  # GroupNorm groups; the official 32, or ch / 4 to keep 4 channels a group
    lora_rank: int = 0  # > 0: only LoRA of this rank on the resnet/attention convs trains
    shortcut: bool = False  # interpolation shortcut; added to an init model without one, the
    # model's latent-mean and image output layers restart from zero (it starts as interpolation)
    trains: Literal["all", "encoder", "refiner"] = "all"  # encoder: the decoder stays frozen
    # (stage1, stage2_3d), so the encoder alone learns the latents the decoder reads best;
    # refiner: only the learned latent refiner trains, on the posterior mean
    refiner_steps: int = 0  # learned latent refiner steps (models/refiner.py); added to an init
    # model without one, it starts as plain sign-gradient steps (models/refiner.py)


@dataclasses.dataclass
class AugmentSection:
    flips: bool = False  # random flips and 90-degree turns of every crop (crops are square/cubic)
    contrast: float = 0.0  # probability of squeezing a crop into a random sub-range of [-1, 1]
    min_range: float = 0.25  # narrowest such sub-range, as a fraction of [-1, 1]
    coarsen: float = 0.0  # probability of reading a crop at coarser voxels: a region k_a times
    max_coarsen: int = 3  # larger along each axis a (k_a in 1..max_coarsen), block-averaged by k_a


@dataclasses.dataclass
class DataSection:
    train: list[SourceSpec]
    val: list[SourceSpec] = dataclasses.field(default_factory=list)
    axes: list[int] = dataclasses.field(default_factory=lambda: [0, 1, 2])
    crop: list[int] = dataclasses.field(default_factory=lambda: [64, 128])  # 2D side [min, max]
    patch: int = 64  # 3D cube side
    batch_size: int = 8  # per process and micro-step
    workers: int = 0  # DataLoader worker processes
    val_crop: int = 128  # side of the centred validation crop (3D: cube side is data.patch)
    flat_share: float = 0.0  # 2D/3D: share of crops drawn flat on purpose (SD <= MIN_CROP_STD)
    large_crop: list[int] = dataclasses.field(default_factory=list)  # 2D side [min, max] ...
    large_share: float = 0.0  # ... used by this share of the steps instead of data.crop
    augment: AugmentSection = dataclasses.field(default_factory=AugmentSection)


@dataclasses.dataclass
class PerceptualSection:
    kind: Literal["msssim", "lpips_vgg", "lpips_alex", "none"] = "msssim"
    weight: float = 1.0
    weights: str | None = None  # torchvision-format backbone file (LPIPS kinds)
    heads: str | None = None  # LPIPS v0.1 linear heads file (LPIPS kinds)


@dataclasses.dataclass
class AdversarialSection:
    weight: float = 0.5  # multiplies the adaptive weight
    start_step: int = 3125  # discriminator and its loss are off before this step
    layers: int = 3
    channels: int = 64
    lr: float | None = None  # discriminator learning rate (default optim.lr)


@dataclasses.dataclass
class LossSection:
    l1_weight: float = 1.0
    l2_weight: float = 0.0  # squared error, the term PSNR scores (0 = off)
    unrefined_weight: float = 0.0  # a learned refiner training with the autoencoder (trains: all):
    # weight of the squared error from the encoder's own latent, so that --no-refiner stays good
    kl_weight: float = 1e-6
    embedding_weight: float = 0.0  # stage 1: embedding-consistency weight (0 = off)
    latent_scale: float = 4.6  # stage 2: latent divided by this before the embedder
    perceptual: PerceptualSection = dataclasses.field(default_factory=PerceptualSection)
    adversarial: AdversarialSection = dataclasses.field(default_factory=AdversarialSection)


@dataclasses.dataclass
class EmbedderSection:
    kind: Literal["none", "torchscript", "module", "biomedclip"] = "none"
    path: str | None = None  # TorchScript file, or BiomedCLIP folder (open_clip files)
    target: str | None = None  # kind module: "package.module:factory" returning an nn.Module
    size: int = 224  # images are resized to size x size before the embedder


@dataclasses.dataclass
class OptimSection:
    lr: float = 3.6e-5  # official rule: accumulation * batch * 4.5e-6
    betas: list[float] = dataclasses.field(default_factory=lambda: [0.5, 0.9])
    eps: float = 1e-8  # Adam epsilon (also for the discriminator)
    accumulation: int = 1
    grad_clip: float | None = None
    schedule: Literal["constant", "cosine"] = "constant"  # generator learning rate over the run
    warmup_steps: int = 0  # linear warm-up from lr/warmup_steps to lr
    min_lr_ratio: float = 0.0  # cosine decays to lr * min_lr_ratio at the last step
    ema_decay: float = 0.0  # > 0: validate and export an exponential moving average of the
    # weights (runtime/ema.py) instead of the last ones


@dataclasses.dataclass
class RunSection:
    steps: int
    output_dir: str
    precision: Literal["fp32", "bf16", "fp16"] = "bf16"
    device: str = "auto"  # auto, cpu, cuda
    threads: int | None = None  # torch.set_num_threads per process
    checkpoint_every: int = 500
    val_every: int = 500
    log_every: int = 10


@dataclasses.dataclass
class TrainConfig:
    stage: Literal["stage1", "stage2_2d", "stage2_3d"]
    data: DataSection
    run: RunSection
    seed: int = 0
    model: ModelSection = dataclasses.field(default_factory=ModelSection)
    loss: LossSection = dataclasses.field(default_factory=LossSection)
    embedder: EmbedderSection = dataclasses.field(default_factory=EmbedderSection)
    optim: OptimSection = dataclasses.field(default_factory=OptimSection)
    base_dir: str = dataclasses.field(default=".", metadata={"internal": True})


def load_config(path: str | Path, overrides: dict | None = None) -> TrainConfig:
    """Read and validate a training YAML; ``overrides`` maps dotted keys (run.steps) to values."""
    path = Path(path)
    config = config_from_dict(read_yaml_config(path, overrides), str(path))
    config.base_dir = str(path.resolve().parent)
    check_semantics(config, str(path))
    return config


def read_yaml_config(path: Path, overrides: dict | None = None) -> dict:
    """A YAML config file as plain data (data only, never evaluated) with dotted-key overrides."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise ConfigError(f"{path}: cannot read config ({e.strerror or e})") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of config keys at the top level")
    for dotted, value in (overrides or {}).items():
        _set_dotted(raw, dotted, value)
    return raw


def config_overrides(args) -> dict:
    """Dotted-key overrides from the ``--set KEY=VALUE`` (values read as YAML), ``--output-dir``
    and ``--steps`` options shared by ``medvae train`` and ``medvae train-sr``."""
    out = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise MedVAEError(f"--set {item!r}: expected KEY=VALUE")
        out[key.strip()] = yaml.safe_load(value)
    if args.output_dir:
        out["run.output_dir"] = args.output_dir
    if args.steps is not None:
        out["run.steps"] = args.steps
    return out


def _set_dotted(raw: dict, dotted: str, value) -> None:
    *parents, leaf = dotted.split(".")
    node = raw
    for key in parents:
        node = node.setdefault(key, {})
    node[leaf] = value


def config_from_dict(raw: dict, source: str = "config") -> TrainConfig:
    """Build a TrainConfig from plain data, raising ConfigError on any schema violation."""
    return build_dataclass(TrainConfig, raw, source, "")


def build_dataclass(cls, raw, source: str, prefix: str = ""):
    """A config dataclass ``cls`` from plain data, strictly typed; ConfigError names the key."""
    if not isinstance(raw, dict):
        key = prefix.rstrip(".")
        raise ConfigError(f"{source}: key '{key}' must be a mapping, got {_show(raw)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ConfigError(
            f"{source}: unknown key '{prefix}{unknown[0]}' (allowed here: {', '.join(fields)})"
        )
    values = {}
    for name, field in fields.items():
        key = prefix + name
        if name not in raw:
            no_default = dataclasses.MISSING
            if field.default is no_default and field.default_factory is no_default:
                raise ConfigError(f"{source}: missing required key '{key}'")
            continue
        values[name] = _coerce(hints[name], raw[name], source, key)
    return cls(**values)


def _coerce(tp, value, source: str, key: str):
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(inner[0], value, source, key)
    if origin is Literal:
        if value not in args:
            raise ConfigError(
                f"{source}: key '{key}' must be one of {', '.join(map(str, args))}, "
                f"got {_show(value)}"
            )
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{source}: key '{key}' must be a list, got {_show(value)}")
        return [_coerce(args[0], v, source, f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is SourceSpec and isinstance(value, str):
        return SourceSpec(path=value)
    if dataclasses.is_dataclass(tp):
        return build_dataclass(tp, value, source, key + ".")
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):
        try:  # YAML 1.1 reads 1e-6 (no dot) as a string
            return float(value)
        except ValueError:
            pass
    is_bool_as_int = tp is int and isinstance(value, bool)
    if tp in (int, str, bool) and isinstance(value, tp) and not is_bool_as_int:
        return value
    raise ConfigError(f"{source}: key '{key}' must be {tp.__name__}, got {_show(value)}")


def _show(value) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text[:40]}"


def adversarial_runs(config: TrainConfig) -> bool:
    """Whether the run reaches the adversarial loss (weighted, and starting before the last step)."""
    adv = config.loss.adversarial
    return adv.weight > 0 and adv.start_step < config.run.steps


def check_semantics(config: TrainConfig, source: str) -> None:
    """Value checks the types alone cannot express."""
    def fail(key: str, why: str):
        raise ConfigError(f"{source}: key '{key}' {why}")

    if not config.data.train:
        fail("data.train", "must list at least one source")
    if len(config.data.crop) != 2 or not 0 < config.data.crop[0] <= config.data.crop[1]:
        fail("data.crop", f"must be [min, max] with 0 < min <= max, got {config.data.crop}")
    if config.data.large_share > 0 and (
            len(config.data.large_crop) != 2
            or not 0 < config.data.large_crop[0] <= config.data.large_crop[1]):
        fail("data.large_crop", "must be [min, max] with 0 < min <= max when data.large_share > 0, "
             f"got {config.data.large_crop}")
    for name in ("flat_share", "large_share"):
        if not 0.0 <= getattr(config.data, name) <= 1.0:
            fail(f"data.{name}", "must be a share in [0, 1]")
    for section in ("train", "val"):
        for i, spec in enumerate(getattr(config.data, section)):
            if spec.region is not None:
                check_region(spec.region, lambda why, k=f"data.{section}[{i}].region": fail(k, why))
    if any(a not in (0, 1, 2) for a in config.data.axes):
        fail("data.axes", f"must hold axes among 0, 1, 2, got {config.data.axes}")
    for name in ("batch_size", "patch", "val_crop"):
        if getattr(config.data, name) < 1:
            fail(f"data.{name}", "must be >= 1")
    if config.data.workers < 0:
        fail("data.workers", "must be >= 0")
    if not 0.0 <= config.data.augment.contrast <= 1.0:
        fail("data.augment.contrast", "must be a probability in [0, 1]")
    if not 0.0 < config.data.augment.min_range <= 1.0:
        fail("data.augment.min_range", "must be in (0, 1]")
    if not 0.0 <= config.data.augment.coarsen <= 1.0:
        fail("data.augment.coarsen", "must be a probability in [0, 1]")
    if config.data.augment.max_coarsen < 1:
        fail("data.augment.max_coarsen", "must be >= 1")
    for name in ("steps", "checkpoint_every", "val_every", "log_every"):
        if getattr(config.run, name) < 1:
            fail(f"run.{name}", "must be >= 1")
    if config.optim.accumulation < 1:
        fail("optim.accumulation", "must be >= 1")
    m = config.model
    trains_decoder = m.lora_rank > 0 or adversarial_runs(config)
    if m.trains == "encoder" and (config.stage == "stage2_2d" or trains_decoder):
        fail("model.trains", "'encoder' needs stage1 or stage2_3d, without LoRA and without the "
             "adversarial loss (both train the decoder it freezes)")
    if m.refiner_steps < 0:
        fail("model.refiner_steps", "must be >= 0")
    if m.trains == "refiner" and (m.refiner_steps < 1 or config.stage == "stage2_2d"
                                  or trains_decoder):
        fail("model.trains", "'refiner' needs model.refiner_steps >= 1, stage1 or stage2_3d, "
             "without LoRA and without the adversarial loss (both train the frozen autoencoder)")
    if config.loss.unrefined_weight < 0:
        fail("loss.unrefined_weight", "must be >= 0")
    if config.loss.unrefined_weight > 0 and (m.refiner_steps < 1 or m.trains != "all"
                                             or config.stage == "stage2_2d"):
        fail("loss.unrefined_weight", "needs model.refiner_steps >= 1 and model.trains: all "
             "(the encoder's own latent and the refined one decoded by a decoder that trains)")
    if config.optim.warmup_steps < 0:
        fail("optim.warmup_steps", "must be >= 0")
    if not 0.0 <= config.optim.min_lr_ratio <= 1.0:
        fail("optim.min_lr_ratio", "must be in [0, 1]")
    if not 0.0 <= config.optim.ema_decay < 1.0:
        fail("optim.ema_decay", "must be in [0, 1) (0: no average)")
    if len(config.optim.betas) != 2:
        fail("optim.betas", "must be two numbers")
    if config.model.lora_rank < 0:
        fail("model.lora_rank", "must be >= 0")
    if m.init == "scratch" and (m.norm_groups < 1 or m.ch % m.norm_groups):
        fail("model.norm_groups", f"must be >= 1 and divide model.ch ({m.ch}), got {m.norm_groups}")
    if config.stage == "stage2_2d" and config.embedder.kind == "none":
        fail("embedder.kind", "must name an image encoder for stage2_2d")
    wants_embedder = config.stage == "stage1" and config.loss.embedding_weight > 0
    if wants_embedder and config.embedder.kind == "none":
        fail("embedder.kind", "must name an image encoder when loss.embedding_weight > 0")
    adv = config.loss.adversarial
    smallest = config.data.patch if config.stage == "stage2_3d" else config.data.crop[0]
    if adversarial_runs(config) and smallest < 3 * 2**adv.layers:
        fail("loss.adversarial.layers",
             f"{adv.layers} needs crops of at least {3 * 2**adv.layers}, the smallest is {smallest}")
    if config.stage != "stage1" and config.model.init == "scratch":
        fail("model.init", f"must be a checkpoint or model name for {config.stage}")


def check_region(region: list, fail) -> None:
    """A region is one entry per array axis: null (the whole axis) or [start, stop] fractions."""
    if not region:
        fail("must list one entry per image axis (null or [start, stop] fractions)")
    for bounds in region:
        if bounds is not None and (len(bounds) != 2 or not 0.0 <= bounds[0] < bounds[1] <= 1.0):
            fail(f"entries must be null or [start, stop] with 0 <= start < stop <= 1, got {bounds}")


def resolve_path(config: TrainConfig, path: str) -> Path:
    """A path from the config, relative to the config file's folder."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else Path(config.base_dir) / p


def config_as_dict(config: TrainConfig) -> dict:
    """Plain data for the model card and checkpoints."""
    d = dataclasses.asdict(config)
    d.pop("base_dir")
    return d
