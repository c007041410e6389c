"""The settings of each pipeline stage: the one place where an option's name, type, default, help and
config key live. The stages' command lines are derived from these classes and the
workflow's job options rendered from them (:mod:`strdiffusion.settings.fields`); defaults are the reference's.

- :class:`SDESettings` (config ``sde``) and :class:`ModelSettings` (``model``): shared by training and
  the checkpoints; :class:`TrainSettings`: how one network is trained (``train``, plus ``seed``,
  ``image_size``, ``structure.sigma_train``).
- :class:`SamplerSettings`: the reverse process's constants (``sampling``); :class:`RunSettings`: how
  the inpaint stage runs a diffusion method (seed, batch, T, device, speed).
- :class:`DataSettings` (``datasets.<name>``), :class:`StructureSettings`, :class:`TableSettings`,
  :class:`FigureSettings`, :class:`ExplorerSettings` (``explorer``); :class:`WeightSettings` (``metrics``: the
  metric networks' weights).
- :class:`MaskSettings`, :class:`PoolSettings`, :class:`PairSettings` (``datasets.<name>.masks``): the test
  masks, the training pool and the test pairs; :class:`ImageMetricSettings`, :class:`SetMetricSettings`
  (``metrics``); :class:`ImportSettings` (``external_methods.<method>``): how an outside method's outputs are scored.

:func:`job_options` gives one workflow job's options. This module imports no torch: the workflow
reads it when it parses the rules. Every stage's options stand side by side (the mask stage's in
:mod:`strdiffusion.settings.masks`), so that an option shared by stages (seed, device, tf32) has one name and one
default.
"""
from __future__ import annotations

import dataclasses

from strdiffusion.core.constants import ACCEPT, LATE_GUIDANCE, PARAMETERIZATIONS, SCHEDULES, SamplerConfig, SDEConfig
from strdiffusion.io.errors import UserError
from strdiffusion.settings.external import RESIZE, external_methods, row_methods
from strdiffusion.settings.fields import command_line, config_values, from_config, nested, option, to_argv
from strdiffusion.settings.methods import (
    CLASSICAL,
    FID_METHODS,
    IMAGE_METRICS,
    SET_METRICS,
    given_checkpoints,
    train_iterations,
)
from strdiffusion.settings.values import GivenCheckpoint, OutsideRows, bin_label

PRECISIONS = ("none", "bf16", "fp16")
HOLE_FILLS = ("recipe", "mean")  # hole value of the denoisers' mu: the recipe's (0 or 1) or the known mean colour


def device_option():
    return option("auto", "auto (CUDA when available) | cpu | cuda | cuda:N")


def _tf32(key):
    return option(False, "allow TF32 matmuls and convolutions on CUDA (changes results slightly)", key=key)


def _deterministic():
    return option(False, "deterministic CUDA kernels: byte-identical GPU re-runs, slower", key="run.deterministic")


def _positive(settings, names) -> None:
    for name in names:
        if getattr(settings, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(settings, name)}")


# ---------------------------------------------------------------------------------------------
# SDE, networks and training


@dataclasses.dataclass(frozen=True)
class SDESettings:
    """The mean-reverting SDE (:class:`strdiffusion.core.sde.IRSDE`); the defaults are the core's
    :class:`~strdiffusion.core.constants.SDEConfig`."""

    T: int = option(SDEConfig.T, "diffusion steps", key="sde.T")
    max_sigma: float = option(SDEConfig.max_sigma, "stationary std in 0..255 units (below 1: used as is)",
                              key="sde.max_sigma")
    schedule: str = option(SDEConfig.schedule, "theta schedule", key="sde.schedule", choices=SCHEDULES)
    eps: float = option(SDEConfig.eps, "share of x0 - mu left at t = T", key="sde.eps")

    def __post_init__(self):
        _positive(self, ("T",))

    def sde(self) -> SDEConfig:
        return SDEConfig(**dataclasses.asdict(self))


@dataclasses.dataclass(frozen=True)
class ModelSettings:
    """Network sizes; the defaults are the paper's (UNet width 64, depth 4, 4 attention heads of 32
    channels; critic width 64)."""

    nf: int = option(64, "UNet base width", key="model.nf")
    depth: int = option(4, "UNet depth", key="model.depth")
    critic_ngf: int = option(64, "critic base width", key="model.critic_ngf")
    attn_heads: int = option(4, "UNet attention heads", key="model.attn_heads")
    attn_dim_head: int = option(32, "UNet channels per attention head", key="model.attn_dim_head")

    def __post_init__(self):
        _positive(self, ("nf", "depth", "critic_ngf", "attn_heads", "attn_dim_head"))


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainSettings:
    """How one network is trained. ``milestones`` are FRACTIONS of ``iterations`` (the reference halves
    the lr at 0.25, 0.5, 0.75 of 8M); the critic's lr and betas come from ``train.critic_lr`` and
    ``train.critic_betas`` (:meth:`from_config`). ``ema`` 0 (the reference) saves and samples the raw
    weights."""

    model: ModelSettings = nested(ModelSettings, "network size (config: model)")
    sde: SDESettings = nested(SDESettings, "SDE (config: sde)")
    iterations: int = option(help="training iterations", key="train.iterations")
    batch_size: int = option(16, "global batch (split over DDP ranks)", key="train.batch_size")
    lr: float = option(1e-4, "Adam learning rate", key="train.lr")
    betas: tuple[float, ...] = option((0.9, 0.99), "Adam betas, e.g. 0.9,0.99 (critic: 0.5,0.99)", key="train.betas")
    milestones: tuple[float, ...] = option((), "comma-separated fractions of --iterations where the lr is multiplied "
                                           "by --gamma (reference: 0.25,0.5,0.75)", key="train.lr_milestones")
    gamma: float = option(0.5, "lr factor at each milestone", key="train.lr_gamma")
    warmup: float = option(0.0, "linear lr warm-up over this fraction of the run", key="train.lr_warmup")
    ema: float = option(0.0, "EMA decay; 0 = off, the reference (then the raw weights are saved and sampled)",
                        key="train.ema")
    ema_warmup: bool = option(False, "EMA decay min(ema, (1+n)/(10+n)) at update n", key="train.ema_warmup")
    grad_clip: float = option(0.0, "max gradient norm; 0 = off", key="train.grad_clip")
    loss: str = option("l1", "loss of the denoisers", key="train.loss", choices=("l1", "l2"))
    guidance_state: str = option("optimal", "texture guidance: the structure's optimal step from t (reference) or "
                                 "its sample at t-1", key="train.guidance_state", choices=("optimal", "marginal"))
    recipe: str = option("irsde", "IR-SDE baseline only: IR-SDE's inpainting recipe (plain L1, t in 1..T, holes 1) "
                         "or the texture net's (10x hole weight, t in 2..T, holes 0)", key="train.irsde_recipe",
                         choices=("irsde", "reference"))
    parameterization: str = option("noise", "what the structure, texture and IR-SDE UNets output: the noise "
                                   "(reference) or the clean image less mu (x0)", key="train.parameterization",
                                   choices=PARAMETERIZATIONS)
    hole_fill: str = option("recipe", "holes of the texture and IR-SDE nets' mu (and the critic's states): the "
                            "recipe's value (reference 0; IR-SDE's 1) or each image's mean known colour (mean)",
                            key="train.hole_fill", choices=HOLE_FILLS)
    checkpoint_every: int = option(200, "iterations between saved states and learning-curve points",
                                   key="train.checkpoint_every")
    val_count: int = option(8, "held-out training crops scored every --checkpoint-every iterations (0 = no curve)",
                            key="train.val_count")
    workers: int = option(0, "DataLoader workers (0 = main process)", key="train.workers")
    seed: int = option(0, "global seed", key="seed")
    size: int = option(0, "working size in px (random crops); 0 = the images' size", key="image_size")
    sigma: float = option(3.0, "Canny sigma of the structure maps (metadata)", key="structure.sigma_train")
    amp: str = option("none", "mixed precision (CUDA only)", key="train.amp", choices=PRECISIONS)
    tf32: bool = _tf32("train.tf32")
    deterministic: bool = _deterministic()

    def __post_init__(self):
        if len(self.betas) != 2:
            raise UserError(f"--betas needs two values like 0.9,0.99, got {','.join(map(str, self.betas))}")
        bad = [m for m in self.milestones if not 0 < m < 1]
        if bad:
            raise UserError(f"--milestones are fractions of --iterations in (0, 1), got {bad[0]}; "
                            f"e.g. 0.5 halves the lr half-way")
        _positive(self, ("iterations", "batch_size", "checkpoint_every"))
        if not 0 <= self.ema < 1:
            raise UserError(f"--ema must be in [0, 1), got {self.ema}")
        if not 0 <= self.warmup < 1:
            raise UserError(f"--warmup must be a fraction in [0, 1), got {self.warmup}")

    @classmethod
    def from_config(cls, config: dict, net: str, **_) -> TrainSettings:
        values = config_values(cls, config, given={"iterations": train_iterations(config, net)})
        if net == "critic":
            t = config["train"]
            values.update(lr=float(t["critic_lr"]), betas=tuple(float(b) for b in t["critic_betas"]))
        return cls(**values)


# ---------------------------------------------------------------------------------------------
# inpainting


@dataclasses.dataclass
class SamplerSettings:
    """The reverse process's constants (config ``sampling``); :meth:`sampler` gives the core's
    :class:`~strdiffusion.core.constants.SamplerConfig`, whose docstring says what each one does and
    whose defaults (the reference sampler's) these are."""

    u_max: int = option(SamplerConfig.u_max, "at most u_max-1 resampling trials per step", key="sampling.u_max")
    u_min: int = option(SamplerConfig.u_min, "from trial u_min on, a rejected trial stops resampling",
                        key="sampling.u_min")
    jump: int = option(SamplerConfig.jump, "resample at steps t % jump == 0", key="sampling.jump")
    re: int = option(SamplerConfig.re, "forward re-noising steps of the structure per trial", key="sampling.re")
    switch: float = option(SamplerConfig.switch, "early stage for t >= floor(switch*T)", key="sampling.switch")
    accept: str = option(SamplerConfig.accept, "keep a trial when its critic score is lower (reference) or higher than "
                         "the first sample's", key="sampling.accept", choices=ACCEPT)
    late_guidance: str = option(SamplerConfig.late_guidance, "late-stage guidance: mean over RGB (reference) or BT.709 "
                                "gray", key="sampling.late_guidance", choices=LATE_GUIDANCE)
    hole_fill: float = option(SamplerConfig.hole_fill, "value of hole pixels in the degraded input",
                              key="sampling.hole_fill")
    denoise_last: bool = option(SamplerConfig.denoise_last, "the step at t = 1 returns the x0 estimate, without noise "
                                "(reference: a reverse-SDE step with noise)", key="sampling.denoise_last")
    resample: bool = option(SamplerConfig.resample, cli=False)

    def __post_init__(self):
        try:
            self.sampler()
        except ValueError as e:
            raise UserError(f"sampling.{e}") from None

    def sampler(self) -> SamplerConfig:
        return SamplerConfig(**dataclasses.asdict(self))


@dataclasses.dataclass(frozen=True)
class ShardSettings:
    """How the inpaint stage's pipeline jobs split a bin's test pairs (every method, classical ones too)."""

    shard_size: int = option(16, "test pairs per pipeline shard (one inpainting job each)", key="sampling.shard_size")

    def __post_init__(self):
        _positive(self, ("shard_size",))


@dataclasses.dataclass(frozen=True)
class RunSettings:
    """How the inpaint stage runs a diffusion method. compile and channels_last change speed only;
    autocast and tf32 are CUDA only and change results slightly."""

    seed: int = option(0, "global seed; image noise is seeded from (seed, image id, bin)", key="seed")
    batch_size: int = option(16, "images sampled together (results do not depend on it)", key="sampling.batch_size")
    sigma: float = option(2.0, "Canny sigma of structure computed on the fly (reference test: 2)",
                          key="structure.sigma_test")
    T: int | None = option(None, "diffusion steps the networks were trained with (checked against the "
                           "checkpoints; required for the authors' bare state dicts)", key="sde.T")
    device: str = device_option()
    compile: bool = option(False, "torch.compile the networks", key="sampling.compile")
    channels_last: bool = option(False, "channels-last memory format", key="sampling.channels_last")
    autocast: str = option("none", "CUDA mixed precision (changes results slightly)", key="sampling.autocast",
                           choices=PRECISIONS)
    tf32: bool = _tf32("sampling.tf32")
    deterministic: bool = _deterministic()
    save_structure: bool = option(False, "also write the final structure state to structure/")


# ---------------------------------------------------------------------------------------------
# data, structure, report


_FOLDER = ("source", "folder")


@dataclasses.dataclass(frozen=True)
class DataSettings:
    """A data set: the builtin photographs, or a folder tree split by file lists or by a hash (the
    folder options apply to source folder only)."""

    source: str = option("builtin", "builtin photographs or a folder", key="datasets.{dataset}.source",
                         choices=("builtin", "folder"))
    path: str = option("", "image folder (source folder)", key="datasets.{dataset}.path", when=_FOLDER)
    test_path: str = option("", "folder of test images (then all of --path is training)",
                            key="datasets.{dataset}.test_path", when=_FOLDER)
    train_list: str = option("", "file of training image paths relative to --path",
                             key="datasets.{dataset}.train_list", when=_FOLDER)
    test_list: str = option("", "file of test image paths relative to --path", key="datasets.{dataset}.test_list",
                            when=_FOLDER)
    test_fraction: float = option(0.1, "share of test images (hash split)", key="datasets.{dataset}.test_fraction",
                                  when=_FOLDER)
    resize: str = option("center_crop", "how images reach the working size", key="datasets.{dataset}.resize",
                         choices=("center_crop", "resize", "random_crop"), when=_FOLDER)
    max_train: int = option(0, "cap on training images (0 = all)", key="datasets.{dataset}.max_train", when=_FOLDER)
    skip_bad_files: bool = option(False, "list undecodable files instead of stopping",
                                  key="datasets.{dataset}.skip_bad_files", when=_FOLDER)
    n_test: int = option(0, "test images the pairs take per bin: a test split with fewer is an error (0 = no check)",
                         key="datasets.{dataset}.n_test", when=_FOLDER)
    size: int = option(64, "working size in px", key="image_size")
    seed: int = option(0, "seed of the split", key="seed")


@dataclasses.dataclass(frozen=True)
class StructureSettings:
    sigma: float = option(help="Canny sigma (reference: 3 train, 2 test)", key="structure.sigma_{split}")


def _with_bin_labels(cls, config: dict, dataset: str, **given):
    """``cls`` from the config, its ``bins`` the labels of the data set's bins (10-20, ...)."""
    labels = tuple(bin_label(lo, hi) for lo, hi in config["datasets"][dataset]["masks"]["bins"])
    return cls(**config_values(cls, config, given={"bins": labels, **given}, dataset=dataset))


_BINS = "datasets.{dataset}.masks.bins"


@dataclasses.dataclass(frozen=True)
class FigureSettings:
    methods: tuple[str, ...] = option(help="methods, comma-separated, in row order", key="methods")
    bins: tuple[str, ...] = option(help="bin labels, comma-separated, e.g. 10-20,20-30", key=_BINS)
    per_bin: int = option(2, "example rows per bin in the qualitative grid")
    external: OutsideRows = option(OutsideRows(), "outside rows: JSON of each one's name and protocol",
                                   key="external_methods")

    @classmethod
    def from_config(cls, config: dict, dataset: str, **_) -> FigureSettings:
        return _with_bin_labels(cls, config, dataset, methods=tuple(row_methods(config)), external=OutsideRows(external_methods(config)))


@dataclasses.dataclass(frozen=True)
class ExplorerSettings:
    """The results explorer's page (``explorer``): which test images of each bin it shows and how large their
    thumbnails are. A bin of at most 4 x ``per_group`` pairs is shown whole."""

    methods: tuple[str, ...] = option(help="methods, comma-separated, in row order", key="methods")
    bins: tuple[str, ...] = option(help="bin labels, comma-separated, e.g. 10-20,20-30", key=_BINS)
    per_group: int = option(16, "test images per group of a bin: the worst, the best, the median and seeded random "
                            "ones", key="explorer.per_group")
    method: str = option("", "row whose metric ranks the images (empty: strdiffusion when it is a row, else the "
                         "first row)", key="explorer.method")
    metric: str = option("psnr", "per-image metric that ranks the images", key="explorer.metric",
                         choices=IMAGE_METRICS)
    thumbnail: int = option(128, "longest side of the thumbnails in px (never larger than the image)",
                            key="explorer.thumbnail")
    seed: int = option(0, "seed of the random group", key="seed")
    shard_size: int = option(16, "test pairs per inpainting shard (where each output is)", key="sampling.shard_size")
    external: OutsideRows = option(OutsideRows(), "outside rows: JSON of each one's name and protocol",
                                   key="external_methods")

    def __post_init__(self):
        _positive(self, ("per_group", "thumbnail", "shard_size"))
        if self.method and self.method not in self.methods:
            raise UserError(f"--method '{self.method}' (config key 'explorer.method') is not a row of this run "
                            f"({', '.join(self.methods)}); name one of them or leave it empty")

    @classmethod
    def from_config(cls, config: dict, dataset: str, **_) -> ExplorerSettings:
        return _with_bin_labels(cls, config, dataset, methods=tuple(row_methods(config)), external=OutsideRows(external_methods(config)))


@dataclasses.dataclass(frozen=True)
class TableSettings:
    methods: tuple[str, ...] = option(help="methods, comma-separated, in row order", key="methods")
    bins: tuple[str, ...] = option(help="bin labels, comma-separated, e.g. 10-20,20-30", key=_BINS)
    seed: int = option(0, "seed of the bootstrap", key="seed")
    reference: str = option("", "published reference row, e.g. paris_streetview", key="datasets.{dataset}.reference_row")
    columns: tuple[str, ...] = option(("psnr", "ssim", "lpips", "fid"), "metrics shown in the main table")
    given: tuple[GivenCheckpoint, ...] = option((), "NET=PATH of each given checkpoint a row samples (footnoted)",
                                                key="checkpoints")
    external: OutsideRows = option(OutsideRows(), "outside rows: JSON of each one's name and protocol (footnoted)",
                                   key="external_methods")

    @classmethod
    def from_config(cls, config: dict, dataset: str, **_) -> TableSettings:
        return _with_bin_labels(cls, config, dataset, given=tuple(map(GivenCheckpoint, given_checkpoints(config).items())),
                                methods=tuple(row_methods(config)), external=OutsideRows(external_methods(config)))


_EXTERNAL = "external_methods.{method}."


@dataclasses.dataclass(frozen=True)
class ImportSettings:
    """How an outside method's outputs are scored (``import``; config ``external_methods.<method>``)."""

    path: str = option(help="path template of the outputs: {image_id}, {bin}, {dataset}", key=_EXTERNAL + "path")
    as_is: bool = option(False, "score the outputs as delivered, without copying the known pixels from the input",
                         key=_EXTERNAL + "as_is")
    resize: str = option("none", "resize outputs of another size to the test image's (none: an error)",
                         key=_EXTERNAL + "resize", choices=tuple(RESIZE))
    allow_partial: bool = option(False, "score the images that have an output (otherwise a missing output is an error)",
                                 key=_EXTERNAL + "allow_partial")


from strdiffusion.settings.masks import MaskSettings, PairSettings, PoolSettings  # noqa: E402  (re-exported: JOBS)


def _alexnet_weights():
    return option("", "path of LPIPS's AlexNet weights (default: in the torch hub cache)",
                  key="metrics.alexnet_weights")


def _inception_weights():
    return option("", "path of the FID/KID Inception weights (default: in the torch hub cache)",
                  key="metrics.inception_weights")


@dataclasses.dataclass(frozen=True)
class WeightSettings:
    """Where the metric networks' pretrained weights are (fetched once by ``strdiffusion weights fetch``)."""

    alexnet_weights: str = _alexnet_weights()
    inception_weights: str = _inception_weights()


def _metric_batch():
    return option(16, "images per network batch")


@dataclasses.dataclass(frozen=True)
class ImageMetricSettings:
    """Per-image metrics (``metrics images``) of whole composited images against the ground truth."""

    metrics: tuple[str, ...] = option(IMAGE_METRICS, f"subset of {','.join(IMAGE_METRICS)}; empty or no value: none",
                                      key="metrics.per_image")
    crop: int = option(0, "border in px removed before PSNR and SSIM (IR-SDE: 4)", key="metrics.crop")
    alexnet_weights: str = _alexnet_weights()
    device: str = device_option()
    batch_size: int = _metric_batch()
    tf32: bool = _tf32("metrics.tf32")


@dataclasses.dataclass(frozen=True)
class SetMetricSettings:
    """Set metrics (``metrics sets``): FID and KID of the inpainted set against its ground truths."""

    metrics: tuple[str, ...] = option(SET_METRICS, f"subset of {','.join(SET_METRICS)}; empty or no value: none",
                                      key="metrics.per_set")
    inception_weights: str = _inception_weights()
    fid_method: str = option("exact", "pytorch-fid: its calculate_frechet_distance (scipy sqrtm of 2048x2048, "
                             "about 25-100 s per set on a 2-core CPU; falls back to exact if it fails); exact: the "
                             "same distance from an SVD/eigendecomposition (seconds, stable for small sets)",
                             key="metrics.fid_method", choices=FID_METHODS)
    kid_subsets: int = option(100, "KID: random subsets averaged")
    kid_subset_size: int = option(1000, "KID: images per subset (at most the set's size)")
    device: str = device_option()
    batch_size: int = _metric_batch()
    tf32: bool = _tf32("metrics.tf32")


# ---------------------------------------------------------------------------------------------
# the workflow's jobs


# the settings each stage's jobs take from the config
JOBS = {
    "data": (DataSettings,),
    "structure": (StructureSettings,),
    "train": (TrainSettings,),
    "inpaint": (ShardSettings, SamplerSettings, RunSettings),
    "figures": (FigureSettings,),
    "tables": (TableSettings,),
    "explorer": (ExplorerSettings,),
    "weights": (WeightSettings,),
    "masks generate": (MaskSettings,),
    "masks pool": (PoolSettings,),
    "masks pairs": (PairSettings,),
    "metrics images": (ImageMetricSettings,),
    "metrics sets": (SetMetricSettings,),
    "import": (ImportSettings,),
}


def job_options(stage: str, config: dict, **where) -> str:
    """Shell-quoted options of one workflow job of ``strdiffusion <stage>``, rendered from the stage's
    settings built from the validated ``config``; ``where``: the job's wildcards (dataset, split, method)
    and, for training, the network (``net``)."""
    classes = JOBS[stage]
    if stage == "inpaint" and where.get("method") in CLASSICAL:
        classes = (ShardSettings,)  # a classical method takes no sampling options
    return command_line([arg for cls in classes for arg in to_argv(from_config(cls, config, **where))])
