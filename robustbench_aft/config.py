"""Run configuration: dataclasses, presets, the options of `bench run`, and the one merge.

Precedence (style.md rule 9), lowest first: dataclass default, preset, config file, command line;
the dataset's defaults (eps, validation size) fill what is still unset when the data is loaded.
``None`` always means "not given". :meth:`RunConfig.from_cli` reads the command line and the file,
:func:`build_run_config` merges and :func:`validate` checks, once; the merged config is stored with
every result.
"""
from __future__ import annotations

import argparse
import dataclasses
import difflib
import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

from .errors import ConfigError
from .params import params_problem
from .parsing import (
    non_negative_float,
    non_negative_int,
    on_off,
    parse_arch,
    parse_attacks,
    parse_eps,
    parse_methods,
    parse_seeds,
    parse_trackers,
    parse_value,
    positive_float,
    positive_int,
    share,
    type_in_words,
)
from .registry import METHODS
from .threat import CIFAR_EPS, NORMS, ThreatModel
from .validation import SELECTIONS


@dataclass
class EvalConfig:
    """What to evaluate and how.

    Attributes:
        attacks: attack names; ``clean`` is always evaluated (first) even if not listed.
        eps: budget in pixel units; None → the dataset's default.
        norm: ``Linf`` or ``L2``.
        n_eval: size of the seeded test subset; None → the whole test set.
        seed: seeds the subset and the attacks' random starts.
        batch_size: evaluation batch size.
        sanity: run the extra eps checks (PGD at 2×eps and unbounded on the first batch).
        attack_options: per-attack constructor options, e.g. ``{"pgd": {"relative_step": 0.09}}``
            (the ``paper`` preset uses it for AFD's PGD-20 step 0.003).
        precision: every evaluation attack but AutoAttack: ``fp32`` (the default on every device) or
            ``bf16`` (autocast; only when asked, ``--eval-precision bf16``).
        aa_precision: AutoAttack's; fp32 unless asked, so that leaderboard AA numbers are full precision.
            bf16 (either of the two) is *verified* bf16 (docs/protocol.md): a point counts as broken only if
            the fp32 model misclassifies the bf16 attack's image too, and a seeded share of the points is
            attacked in fp32 as well, to measure what bf16 costs in attack strength.
        bf16_check_share, bf16_check_min: that share of the evaluated points (default 10 %), at least
            ``bf16_check_min`` of them (default 200), capped at all of them.
        eps_text: eps as the user wrote it (``8/255``), kept in every metric's budget; None: the default.
        transfer_from: the ``transfer`` attack's source model: ``natural`` (the run's natural model)
            or a checkpoint path; None when no transfer attack runs.
    """

    attacks: List[str] = field(default_factory=lambda: ["clean", "pgd", "cw"])
    eps: Optional[float] = None
    norm: str = "Linf"
    n_eval: Optional[int] = None
    seed: int = 0
    batch_size: int = 256
    sanity: bool = True
    attack_options: Dict[str, Dict[str, float]] = field(default_factory=dict)
    precision: str = "fp32"
    aa_precision: str = "fp32"
    bf16_check_share: float = 0.1
    bf16_check_min: int = 200
    eps_text: Optional[str] = None
    transfer_from: Optional[str] = None


@dataclass
class TrainConfig:
    """The fine-tuning budget shared by every method of a run (AFD's protocol, methods.md §13.3).

    Attributes:
        epochs, batch_size, lr, momentum, weight_decay: SGD fine-tuning settings.
        ema: evaluate an EMA of the weights; None → the method's own choice (AFD: yes).
        train_subset: fine-tune on a seeded subset of this many training images (CPU-scale runs).
        num_workers: DataLoader worker processes.
        feature_gap_probe: training images on which the feature gap is measured after every epoch
            (PGD-20 at the evaluation eps; 0 turns it off).
        precision: ``auto`` (bf16 autocast on CUDA, fp32 on CPU), ``fp32`` or ``bf16``.
        sync_bn: under torchrun, BatchNorm statistics over the global batch instead of each
            process's shard (no effect in a single process).
        channels_last: ``auto`` (on CUDA and on CPUs with oneDNN: the model and the input batches
            in channels_last memory format, which tensor cores and oneDNN's convolutions prefer),
            ``on`` or ``off``. The maths is unchanged (float rounding aside).
        compile: compile the networks' bodies with ``torch.compile`` (inductor) for fine-tuning.
            The first batches pay the compilation (tens of seconds per network and BN mode); off
            by default because it did not pay on the CPUs measured (benchmarks/RESULTS.md). The
            evaluated model is always run eagerly.
        capture: ``on`` records a capturable method's update as a CUDA graph (capture.py); ``auto``
            stays eager until capture has been measured on a GPU; ``off``.
        val_size: training images held out for validation (clean + PGD-10 after every epoch);
            None → the dataset's default (200 on digits, 500 elsewhere); 0 turns validation off.
            With ``train_subset`` they come from the images outside the subset (see validation.py).
        select: which weights are evaluated: ``last`` (the papers' choice) or ``best-val`` (the
            epoch with the highest validation PGD accuracy; the last weights are evaluated too).
    """

    # Every field is a `bench run` option of the same name (``--weight-decay`` for weight_decay); its
    # help and range come from here (config.OPTIONS).
    epochs: int = field(default=20, metadata={"flag": "fine-tuning epochs (default: the preset's)",
                                              "valid": "positive"})
    batch_size: int = field(default=128, metadata={"flag": "fine-tuning batch size (default: the preset's)",
                                                   "valid": "positive"})
    lr: float = field(default=0.025, metadata={"flag": "base learning rate (default: the preset's)",
                                               "valid": "positive"})
    momentum: float = field(default=0.9, metadata={"flag": "SGD momentum of the fine-tuning (default: 0.9)",
                                                   "valid": "non-negative"})
    weight_decay: float = field(default=5e-4, metadata={"flag": "weight decay of the fine-tuning (default: 5e-4)",
                                                        "valid": "non-negative"})
    ema: Optional[bool] = field(default=None, metadata={
        "flag": "evaluate an EMA of the weights: on or off (default: each method's own choice; AFD: on)"})
    train_subset: Optional[int] = field(default=None, metadata={
        "flag": "fine-tune on a seeded subset of this many training images", "valid": "positive"})
    num_workers: int = field(default=0, metadata={"flag": "DataLoader worker processes (default: 0)",
                                                  "valid": "non-negative"})
    feature_gap_probe: int = field(default=512, metadata={
        "flag": "training images on which the feature gap is measured after every epoch (default: the preset's; "
                "0 turns the probe off)", "valid": "non-negative"})
    precision: str = field(default="auto", metadata={
        "flag": "fine-tuning: auto = bf16 autocast on CUDA, fp32 on CPU (default: auto)",
        "choices": ("auto", "fp32", "bf16")})
    sync_bn: bool = field(default=False, metadata={
        "flag": "under torchrun: BatchNorm statistics of the global batch (default: per process, like the AFD "
                "official code's DataParallel)", "switch": True})
    channels_last: str = field(default="auto", metadata={
        "flag": "fine-tune in channels_last memory format (default auto: on CUDA and on CPUs with oneDNN)",
        "choices": ("auto", "on", "off")})
    compile: bool = field(default=False, metadata={
        "flag": "fine-tune with the networks compiled by torch.compile (off by default: the compilation costs tens "
                "of seconds and did not pay on CPU; see benchmarks/RESULTS.md)", "switch": True})
    capture: str = field(default="auto", metadata={
        "flag": "record each fine-tuning update once as a CUDA graph and replay it per batch: on (CUDA and a "
                "capturable method only), off, or auto (default; eager until capture is measured on a GPU)",
        "choices": ("auto", "on", "off")})
    val_size: Optional[int] = field(default=None, metadata={
        "flag": "training images held out for validation, clean + PGD-10 after every epoch (default: 200 on "
                "digits, 500 elsewhere; taken outside --train-subset; 0: no validation)", "valid": "non-negative"})
    select: str = field(default="last", metadata={
        "flag": "weights to evaluate: last (default, what the papers report) or best-val (the epoch with the "
                "highest validation PGD accuracy; the last weights are evaluated and stored too)",
        "choices": SELECTIONS})


# Each preset sets TrainConfig / EvalConfig fields and, optionally, method parameters per dataset.
PRESETS: Dict[str, Dict[str, Any]] = {
    "quick": {
        "description": "the digits default: 10 epochs at batch 64, every test point, clean/pgd/cw/aa in "
                       "evaluation batches of 512",
        "train": {"epochs": 10, "batch_size": 64, "lr": 0.025, "feature_gap_probe": 256},
        # One batch holds digits' 360 test points: each AutoAttack batch costs about 8 s on 2 CPU cores
        # however few points reach FAB-T and Square (their iterations are launch-bound on 8×8 images).
        "eval": {"attacks": ["clean", "pgd", "cw", "aa"], "batch_size": 512},
    },
    "ci": {
        "description": "the regression check of .ci/run: digits, 5 epochs at batch 64, clean/pgd/cw/aa-fast on a "
                       "fixed seeded subset of 200 test points",
        "train": {"epochs": 5, "batch_size": 64, "lr": 0.025, "feature_gap_probe": 128},
        "eval": {"attacks": ["clean", "pgd", "cw", "aa-fast"], "n_eval": 200},
    },
    # The CPU-scale CIFAR-10 protocol of leaderboard/cifar10-jpeg-cpu.md (2 CPU cores, a few hours).
    # Why these choices: the arch is tinycnn because standard AutoAttack dominates the cost (Square's
    # 5,000 queries and FAB-T's 9 targets on every still-robust point) and smallcnn would need about
    # 20 minutes of AutoAttack per model on 2 cores (estimated from its measured 1,215 training
    # images/s), tinycnn 3.5× less (measured: about 5 minutes of evaluation per fine-tuned model).
    # The natural model trains on all 50,000 training images (20 epochs, cosine lr 0.05) so that it
    # is a real pre-trained model: measured 76.5 % test accuracy (19 minutes on one thread), and 0.0 %
    # PGD-20, CW and AutoAttack accuracy at 8/255 on the 1,000 evaluation images. Fine-tuning
    # sees a seeded subset of 5,000 images for 5 epochs (25,000 adversarial examples per method) with
    # every method's official training attack (PGD-10 for most): enough to move PGD accuracy from ~0
    # to clearly robust, while a whole run of every method stays within a few hours. Evaluation: the
    # standard protocol (PGD-20, CW∞-30, AutoAttack standard) on a fixed seeded subset of 1,000 test
    # images, the minimum, which gives ±1.5 points of binomial standard error at 50 %.
    "cpu-cifar10": {
        "description": "CIFAR-10 at CPU scale: tinycnn, natural 20 epochs on all training images, fine-tuning "
                       "5 epochs on a seeded 5,000-image subset, clean/pgd/cw/aa on 1,000 fixed test images",
        "arch": "tinycnn",
        "natural": {"epochs": 20, "batch_size": 128, "lr": 0.05},
        "train": {"epochs": 5, "batch_size": 128, "lr": 0.025, "train_subset": 5000},
        "eval": {"attacks": ["clean", "pgd", "cw", "aa"], "n_eval": 1000},
    },
    "paper": {
        "description": "AFD's protocol (methods.md §1.6, §1.8): 20 epochs, batch 128, lr 0.025 with AFD's "
                       "table, PGD-20 step 0.003 and CW∞-20 step 0.007 at eps 8/255, AutoAttack standard",
        "train": {"epochs": 20, "batch_size": 128, "lr": 0.025, "momentum": 0.9, "weight_decay": 5e-4},
        "eval": {
            "attacks": ["clean", "pgd", "cw", "aa"],
            "attack_options": {
                "pgd": {"steps": 20, "relative_step": 0.003 / CIFAR_EPS},
                "cw": {"steps": 20, "relative_step": 0.007 / CIFAR_EPS},
            },
        },
        # Per-dataset method parameters come from each method's ``paper_presets``.
        "method_presets": True,
    },
}


# Where results are stored unless --db says otherwise (every command that reads or writes a store).
DEFAULT_DB = "runs/results.db"
# Where the cells of a run are worked on: this process, Slurm jobs, or the same jobs as local processes.
LAUNCHERS = ("local", "slurm", "submitit-local")


@dataclass
class RunConfig:
    """Everything ``bench run`` needs; built by :func:`build_run_config` (Python) or
    :meth:`RunConfig.from_cli` (the command line and ``--config`` files)."""

    methods: List[str]
    dataset: str = "digits"
    arch: str = "smallcnn"
    preset: str = "quick"
    pretrained: str = "auto"
    pretrained_seed: int = 0
    seeds: List[int] = field(default_factory=lambda: [0])
    threat: ThreatModel = field(default_factory=ThreatModel)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    method_params: Dict[str, Dict[str, Any]] = field(default_factory=dict)
    natural: Dict[str, Any] = field(default_factory=dict)
    db: str = DEFAULT_DB
    out: Optional[str] = None
    device: str = "auto"
    data_dir: Optional[str] = None
    download: bool = False
    skip_bad_images: bool = False
    # Experiment trackers (--log; trackers/): not part of the experiment, so a resume may change them.
    log: List[str] = field(default_factory=list)

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    def eval_config(self, threat: ThreatModel) -> EvalConfig:
        """The evaluator's settings under the run's resolved ``threat`` model."""
        return dataclasses.replace(self.eval, eps=threat.eps, norm=threat.norm, eps_text=threat.eps_text)

    @classmethod
    def from_cli(cls, args: Mapping[str, Any], file: Optional[Mapping[str, Any]] = None,
                 file_name: str = "") -> "RunConfig":
        """The configuration of a ``bench run`` command line over a ``--config`` file's mapping.

        ``args`` maps option names (``OPTIONS``; argparse's namespace as a dict) to the text or value
        the user gave, ``None`` for every option not given. Precedence, lowest first: dataclass
        defaults, the preset, the file, the command line; the dataset's defaults (eps, validation
        size) fill what is still unset when the data is loaded.
        """
        given = _file_values(file or {}, file_name) if file else {"options": {}, "sections": _empty_sections()}
        options = dict(given["options"])
        for name, value in args.items():
            if name not in OPTIONS or value is None or value == []:
                continue
            if isinstance(value, (str, list)):  # text argparse left alone: parsed here, like a file's
                value = _parse_option(OPTIONS[name], value, "")
            if name == "set":  # the command line's parameters over the file's, method by method
                value = {m: {**options.get("set", {}).get(m, {}), **p} for m, p in
                         {**options.get("set", {}), **value}.items()}
            options[name] = value
        return _build_from_options(options, given["sections"])


def _empty_sections() -> Dict[str, Dict[str, Any]]:
    return {name: {} for name in SECTIONS}


@dataclass(frozen=True)
class Option:
    """One ``bench run`` option: its name (the config-file key; ``--`` + dashes on the command line),
    where its value goes, how its text is parsed, and its help."""

    name: str
    help: str
    parse: Optional[Callable[[str], Any]] = None  # None: the text itself
    choices: Optional[Tuple[str, ...]] = None
    switch: bool = False  # a flag without value (store_true)
    targets: Tuple[Tuple[str, str], ...] = ()  # (section, field); empty: a RunConfig field of the same name
    metavar: Optional[str] = None


def _field_option(section: str, spec: dataclasses.Field) -> Option:
    meta = spec.metadata
    kind = str(spec.type)
    if meta.get("switch"):
        parse = None
    elif meta.get("choices"):
        parse = None
    elif "bool" in kind:
        parse = on_off
    elif "float" in kind:
        parse = {"positive": positive_float, "non-negative": non_negative_float}.get(meta.get("valid"), float)
    elif "int" in kind:
        parse = {"positive": positive_int, "non-negative": non_negative_int}.get(meta.get("valid"), int)
    else:
        parse = None
    return Option(spec.name, meta["flag"], parse, meta.get("choices"), bool(meta.get("switch")),
                  ((section, spec.name),))


# Help of the precision options, shared by `bench run` (below) and `bench eval` (cli/_common.py).
EVAL_PRECISION_HELP = ("PGD, CW and every evaluation attack but AutoAttack: fp32 (default, on every device) or "
                       "verified bf16 (attacks under bf16 autocast; a point counts as broken only if the fp32 model "
                       "misclassifies the attack's image too; a seeded share is also attacked in fp32 and a flag "
                       "fires when the two differ significantly); clean accuracy is always fp32")
AA_PRECISION_HELP = ("AutoAttack: fp32 (default, so that leaderboard AA numbers are full precision) or verified bf16 "
                     "(as --eval-precision)")
BF16_CHECK_SHARE_HELP = ("verified bf16: the share of the evaluated points also attacked in fp32 (default: 0.1; at "
                         "least --bf16-check-min points, at most all)")
BF16_CHECK_MIN_HELP = "verified bf16: the fewest points attacked in fp32 as well (default: 200, at most all)"

# The options of `bench run` that configure the run (the others — --resume, --format, --launcher … —
# say how this command runs or prints, see cli/run.py). The table is the one place that knows how a
# flag's text becomes a configuration value.
OPTIONS: Dict[str, Option] = {option.name: option for option in [
    Option("methods", "comma-separated methods, e.g. ours,trades, or all (see `bench list methods`); required",
           parse_methods),
    Option("dataset", "dataset name or folder:PATH (default: digits, bundled with scikit-learn)"),
    Option("arch", "architecture (default: the preset's, else smallcnn)"),
    Option("arch_kwargs", "keyword arguments of an external --arch (timm:, torchvision:, py:), e.g. img_size=32; "
                          "they become part of the arch's name: timm:vit_tiny_patch16_224[img_size=32]",
           metavar="K=V,..."),
    Option("image_size", "resize every split to N×N (e.g. 224 for an ImageNet model on CIFAR); the dataset is then "
                         "named DATASET@Npx and eps is in pixels of the resized images", positive_int),
    Option("mean", "per-channel mean of the model's Normalize layer, overriding the dataset's and any the model "
                   "declares (one value for every channel, or one per channel)", metavar="M1,M2,M3"),
    Option("std", "per-channel std of the model's Normalize layer (as --mean)", metavar="S1,S2,S3"),
    Option("preset", "quick (the digits default), paper (the default elsewhere), ci or cpu-cifar10 "
                     "(see `bench list presets`)"),
    Option("pretrained", "natural model: auto (cache or pre-train, default), a path, robustbench:NAME"),
    Option("pretrained_seed", "seed of the natural model (default: 0)", non_negative_int),
    Option("seeds", "comma-separated fine-tuning seeds (default: 0)", parse_seeds),
    Option("eps", "budget, e.g. 8/255 or 0.5 in L2 (default: the dataset's for the norm)",
           targets=(("threat", "eps"),)),
    Option("norm", "threat model of the training attacks and the evaluation (default: Linf)", choices=NORMS,
           targets=(("threat", "norm"),)),
    Option("natural_epochs", "epochs of the natural pre-training when --pretrained auto has to pre-train "
                             "(default: the preset's, else 30 on digits and 100 elsewhere); part of the cache key",
           positive_int, targets=(("natural", "epochs"),)),
    *[_field_option("train", spec) for spec in fields(TrainConfig)],
    Option("attacks", "evaluation attacks (default: the preset's; see `bench list attacks`)", parse_attacks,
           targets=(("eval", "attacks"),)),
    Option("n_eval", "size of the seeded test subset (default: the preset's, else the whole test set)",
           positive_int, targets=(("eval", "n_eval"),)),
    Option("eval_batch_size", "evaluation batch size (default: 256)", positive_int,
           targets=(("eval", "batch_size"),)),
    Option("eval_precision", EVAL_PRECISION_HELP, choices=("fp32", "bf16"), targets=(("eval", "precision"),)),
    Option("aa_precision", AA_PRECISION_HELP, choices=("fp32", "bf16"), targets=(("eval", "aa_precision"),)),
    Option("bf16_check_share", BF16_CHECK_SHARE_HELP, share, targets=(("eval", "bf16_check_share"),)),
    Option("bf16_check_min", BF16_CHECK_MIN_HELP, positive_int, targets=(("eval", "bf16_check_min"),)),
    Option("transfer_from", "source model of the transfer attack (default: the run's natural model)",
           metavar="natural|PATH", targets=(("eval", "transfer_from"),)),
    Option("set", "override a method parameter, e.g. --set afd.alpha=0.1 (repeatable)", None,
           metavar="METHOD.PARAM=VALUE", targets=(("set", ""),)),
    Option("db", f"results store (default: {DEFAULT_DB})"),
    Option("out", "folder for checkpoints and per-sample results (default: next to the store, per run)"),
    Option("device", "auto (CUDA if available), cpu, cuda, cuda:1, ..."),
    Option("data_dir", "root folder of downloadable datasets (default: ./data)"),
    Option("download", "let torchvision download a missing dataset", switch=True),
    Option("log", "experiment trackers, offline, under the run folder: tensorboard, mlflow, wandb (default: none)",
           parse_trackers, metavar="TRACKER,..."),
    Option("skip_bad_images", "leave out the images of a folder: dataset that cannot be read (counted in the "
                              "run's record) instead of refusing the dataset", switch=True),
]}
# Config-file sections: the fields of each part of the configuration by name, for what has no option.
SECTIONS = {"train": TrainConfig, "eval": EvalConfig, "threat": ThreatModel}
# Written by versions before the threat model had its own section (eval.eps …); read into it.
_LEGACY_EVAL_THREAT = ("eps", "norm", "eps_text")


def _apply(target: Any, values: Dict[str, Any], what: str) -> Any:
    names = {f.name for f in fields(target)}
    unknown = [k for k in values if k not in names]
    if unknown:
        raise ConfigError(f"unknown {what} option(s): {', '.join(unknown)}; known: {', '.join(sorted(names))}")
    return dataclasses.replace(target, **values)


def _as_text(value: Any) -> str:
    return ",".join(str(v) for v in value) if isinstance(value, (list, tuple)) else str(value)


def _parse_option(option: Option, value: Any, where: str) -> Any:
    """The value of ``option`` from the text (or, from a file, the YAML value) the user gave."""
    if option.switch:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}{option.name.replace('_', '-')} must be true or false, got {value!r}")
        return value
    if option.name == "set":
        items = value if isinstance(value, list) else [value]
        return parse_set_options([str(item) for item in items])
    text = _as_text(value)
    if option.choices is not None and text not in option.choices:
        raise ConfigError(f"{where}--{option.name.replace('_', '-')} must be one of {', '.join(option.choices)}, "
                          f"got {text!r}")
    if option.parse is None or option.name == "eps":  # eps is read once the norm is known
        return text
    try:
        return option.parse(text)
    except argparse.ArgumentTypeError as exc:
        raise ConfigError(f"{where}{option.name.replace('_', '-')}: {exc}") from None


def _section_values(name: str, values: Any, where: str) -> Dict[str, Any]:
    cls = SECTIONS[name]
    if not isinstance(values, dict):
        raise ConfigError(f"{where}{name} must be a mapping of {cls.__name__} fields")
    known = {f.name: f for f in fields(cls)}
    parsed: Dict[str, Any] = {}
    for key, value in values.items():
        if key not in known:
            raise ConfigError(f"{where}{name}.{key} is not a {cls.__name__} field; known: {', '.join(sorted(known))}")
        if (name, key) == ("eval", "attacks") and isinstance(value, (str, list)):
            parsed[key] = parse_attacks(_as_text(value))
        elif key == "eps" and name in ("eval", "threat") and value is not None:
            parsed[key] = str(value)  # read with the norm once known, and kept as written (``8/255``)
        elif value is None or isinstance(value, (list, dict)):
            parsed[key] = value
        else:
            parsed[key] = parse_value(str(value), known[key].type, f"{where}{name}.{key}")
    return parsed


def _file_values(content: Mapping[str, Any], path: str) -> Dict[str, Any]:
    """A config file's mapping split into option values (parsed as their flags are) and sections."""
    where = f"--config {path}: "
    options: Dict[str, Any] = {}
    sections = _empty_sections()
    for key, value in content.items():
        name = str(key).replace("-", "_")
        if name in SECTIONS:
            sections[name] = _section_values(name, value, where)
        elif name == "set":
            options["set"] = _set_items(value, where)
        elif name in OPTIONS:
            if value is not None:
                options[name] = _parse_option(OPTIONS[name], value, where)
        else:
            raise ConfigError(f"{where}unknown option {key!r}; use `bench run` option names, set, train, eval or "
                              "threat (see `bench run --help`)")
    for legacy in _LEGACY_EVAL_THREAT:
        if legacy in sections["eval"]:
            sections["threat"].setdefault(legacy, sections["eval"].pop(legacy))
    overlap = [f"{section}.{fname}" for option in options for section, fname in
               (OPTIONS[option].targets or (("run", option),)) if fname in sections.get(section, {})]
    if overlap:
        raise ConfigError(f"{where}{', '.join(overlap)} is also given as a top-level option; keep one")
    return {"options": options, "sections": sections}


def _set_items(value: Any, where: str) -> Dict[str, Dict[str, Any]]:
    if isinstance(value, dict):
        items = []
        for method, params in value.items():
            if not isinstance(params, dict):
                raise ConfigError(f"{where}set.{method} must map parameter names to values")
            items += [f"{method}.{name}={_as_text(v)}" for name, v in params.items()]
        return parse_set_options(items)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return parse_set_options(value)
    raise ConfigError(f"{where}set must be a mapping {{method: {{param: value}}}} or a list of "
                      "METHOD.PARAM=VALUE strings")


def _build_from_options(options: Dict[str, Any], sections: Dict[str, Dict[str, Any]]) -> RunConfig:
    """Route every option value to its place and merge through :func:`build_run_config`."""
    from .data import with_input_options

    if options.get("methods") is None:
        raise ConfigError("the following arguments are required: --methods (or methods: in the --config file)")
    routed: Dict[str, Dict[str, Any]] = {"train": dict(sections["train"]), "eval": dict(sections["eval"]),
                                         "threat": dict(sections["threat"]), "natural": {}, "set": {}}
    run_fields: Dict[str, Any] = {}
    for name, value in options.items():
        for section, fname in OPTIONS[name].targets or (("run", name),):
            if section == "set":
                for method, params in value.items():
                    routed["set"].setdefault(method, {}).update(params)
            elif section == "run":
                run_fields[fname] = value
            else:
                routed[section][fname] = value
    threat = routed["threat"]
    if threat.get("eps") is not None:
        text = str(threat["eps"])
        threat["eps"] = parse_eps(text, threat.get("norm") or "Linf")
        threat.setdefault("eps_text", text)
    methods = run_fields.pop("methods")
    dataset = with_input_options(run_fields.pop("dataset", "digits"), run_fields.pop("image_size", None),
                                 run_fields.pop("mean", None), run_fields.pop("std", None))
    arch, arch_kwargs = run_fields.pop("arch", None), run_fields.pop("arch_kwargs", None)
    return build_run_config(
        methods, dataset=dataset, arch=parse_arch(arch, arch_kwargs) if arch else None,
        preset=run_fields.pop("preset", None), threat=ThreatModel(**threat), train_overrides=routed["train"],
        eval_overrides=routed["eval"], method_params=routed["set"], natural_overrides=routed["natural"],
        **run_fields)


def parse_set_options(items: List[str]) -> Dict[str, Dict[str, Any]]:
    """``['afd.alpha=0.1', 'trades.beta=3']`` → ``{'afd': {'alpha': 0.1}, 'trades': {'beta': 3.0}}``.

    The method name may be an alias; the field must exist in that method's ``Params``.
    """
    parsed: Dict[str, Dict[str, Any]] = {}
    for item in items:
        key, sep, text = item.partition("=")
        method_name, dot, field_name = key.partition(".")
        if not sep or not dot or not field_name:
            raise ConfigError(f"--set expects METHOD.PARAM=VALUE, got {item!r}")
        canonical = METHODS.canonical(method_name)
        params_cls = METHODS.get(canonical).Params
        known = {f.name: f for f in fields(params_cls)}
        if field_name not in known:
            close = difflib.get_close_matches(field_name, list(known), n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise ConfigError(f"--set {key}: {canonical} has no parameter {field_name!r}.{hint} "
                              f"Parameters: {', '.join(known) or '(none)'}")
        parsed.setdefault(canonical, {})[field_name] = parse_value(text, known[field_name].type, f"--set {key}")
    return parsed


def _canonical_methods(methods: List[str]) -> List[str]:
    if not methods:
        raise ConfigError("--methods is empty; choose from " + ", ".join(METHODS.names()))
    if [m.strip().lower() for m in methods] == ["all"]:
        return METHODS.names()
    return parse_methods(",".join(methods))


def default_eval_batch_size(dataset: str) -> int:
    """The evaluation batch size of ``dataset``'s default preset (digits' ``quick``: 512; otherwise
    EvalConfig's 256), so that ``bench eval`` batches a model's points, and so seeds its attacks, as
    ``bench run`` does."""
    from .data import default_preset

    preset = PRESETS.get(default_preset(dataset), {})
    return int(preset.get("eval", {}).get("batch_size", EvalConfig.batch_size))


def _preset(name: Optional[str], dataset: str) -> Tuple[str, Dict[str, Any]]:
    from .data import default_preset

    preset_name = name or default_preset(dataset)
    if preset_name not in PRESETS:
        close = difflib.get_close_matches(preset_name, list(PRESETS), n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise ConfigError(f"unknown preset {preset_name!r}.{hint} Available: {', '.join(sorted(PRESETS))}")
    return preset_name, PRESETS[preset_name]


def _method_params(methods: List[str], dataset_kind: str, paper_presets: bool,
                   given: Dict[str, Dict[str, Any]]) -> Dict[str, Dict[str, Any]]:
    params: Dict[str, Dict[str, Any]] = {}
    if paper_presets:
        for name in methods:
            values = METHODS.get(name).paper_presets.get(dataset_kind, {})
            if values:
                params[name] = dict(values)
    for name, values in given.items():
        canonical = METHODS.canonical(name)
        if canonical not in methods:
            raise ConfigError(f"--set {name}.…: {canonical} is not among --methods ({', '.join(methods)})")
        params.setdefault(canonical, {}).update(values)
    for name, values in params.items():
        params_cls = METHODS.get(name).Params
        unknown = [k for k in values if k not in {f.name for f in fields(params_cls)}]
        if unknown:
            raise ConfigError(f"{name} has no parameter(s) {', '.join(unknown)}")
        for key, value in values.items():
            problem = params_problem(params_cls, key, value)
            if problem:
                raise ConfigError(f"--set {name}.{key}={value!r}: {problem}")
    return params


def build_run_config(methods: List[str], *, dataset: str = "digits", arch: Optional[str] = None,
                     preset: Optional[str] = None, threat: Optional[ThreatModel] = None,
                     train_overrides: Optional[Dict[str, Any]] = None,
                     eval_overrides: Optional[Dict[str, Any]] = None,
                     method_params: Optional[Dict[str, Dict[str, Any]]] = None,
                     natural_overrides: Optional[Dict[str, Any]] = None, **run_fields: Any) -> RunConfig:
    """Merge dataclass defaults, the preset and the given values (``None`` = not given) into a
    RunConfig, and validate it once.

    ``natural_overrides``: the natural pre-training recipe's fields (epochs, batch_size, lr) over the
    preset's and the dataset's default. ``eval_overrides`` may still carry ``eps``/``norm`` (the
    form before :class:`ThreatModel`): they become the threat model's.
    """
    from .data import split_input_options

    canonical_methods = _canonical_methods(list(methods))
    dataset_kind = split_input_options(dataset)[0].partition(":")[0]  # digits@16px is still digits
    preset_name, chosen = _preset(preset, dataset)
    eval_given = {k: v for k, v in (eval_overrides or {}).items() if v is not None}
    threat_given = {k: eval_given.pop(k) for k in _LEGACY_EVAL_THREAT if k in eval_given}
    threat = dataclasses.replace(threat or ThreatModel(),
                                 **{k: v for k, v in threat_given.items() if getattr(threat, k, None) is None})
    train = _apply(_apply(TrainConfig(), chosen.get("train", {}), "train"),
                   {k: v for k, v in (train_overrides or {}).items() if v is not None}, "train")
    evaluation = _apply(_apply(EvalConfig(), chosen.get("eval", {}), "eval"), eval_given, "eval")
    params = _method_params(canonical_methods, dataset_kind, bool(chosen.get("method_presets")), method_params or {})
    natural = {**chosen.get("natural", {}), **{k: v for k, v in (natural_overrides or {}).items() if v is not None}}
    config = RunConfig(methods=canonical_methods, dataset=dataset, arch=arch or chosen.get("arch", "smallcnn"),
                       preset=preset_name, threat=threat, train=train, eval=evaluation, method_params=params,
                       natural=natural, **{k: v for k, v in run_fields.items() if v is not None})
    validate(config)
    return config


def _field_problem(spec: dataclasses.Field, value: Any) -> Optional[str]:
    """What is wrong with ``value`` for a TrainConfig field, by its declared type, range and choices."""
    meta, kind = spec.metadata, str(spec.type)
    if value is None:
        return None if "Optional" in kind else f"expected {type_in_words(spec.type)}, got none"
    if "bool" in kind:
        return None if isinstance(value, bool) else f"expected true or false, got {value!r}"
    if meta.get("choices"):
        return None if value in meta["choices"] else f"must be one of {', '.join(meta['choices'])}, got {value!r}"
    if ("int" in kind or "float" in kind) and (isinstance(value, bool) or not isinstance(value, (int, float))):
        return f"expected {type_in_words(spec.type)}, got {value!r}"
    if "int" in kind and not isinstance(value, int):
        return f"expected an integer, got {value!r}"
    valid = meta.get("valid")
    if isinstance(value, (int, float)) and not math.isfinite(value):
        return f"expected a finite number, got {value!r}"
    if valid == "positive" and not value > 0:
        return f"must be positive, got {value!r}"
    if valid == "non-negative" and not value >= 0:
        return f"must be >= 0, got {value!r}"
    return None


def validate(config: RunConfig) -> None:
    """Every check of a configuration, each with a one-line message (the one place they live)."""
    if not config.seeds:
        raise ConfigError("--seeds is empty")
    if any(isinstance(seed, bool) or not isinstance(seed, int) or seed < 0 for seed in config.seeds):
        raise ConfigError(f"--seeds must be integers >= 0, got {config.seeds}")
    if len(set(config.seeds)) != len(config.seeds):
        raise ConfigError(f"--seeds has duplicates: {config.seeds}")
    for spec in fields(TrainConfig):
        problem = _field_problem(spec, getattr(config.train, spec.name))
        if problem:
            raise ConfigError(f"--{spec.name.replace('_', '-')} (train.{spec.name}): {problem}")
    if config.train.select == "best-val" and config.train.val_size == 0:
        raise ConfigError("--select best-val needs a validation split; --val-size 0 turns it off")
    evaluation = config.eval
    if not isinstance(evaluation.attacks, list) or not all(isinstance(a, str) for a in evaluation.attacks):
        raise ConfigError(f"eval.attacks must be a list of attack names, got {evaluation.attacks!r}")
    parse_attacks(",".join(evaluation.attacks))
    for name, value in (("n_eval", evaluation.n_eval), ("batch_size", evaluation.batch_size)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
            raise ConfigError(f"eval.{name} must be a positive integer, got {value!r}")
    if isinstance(evaluation.seed, bool) or not isinstance(evaluation.seed, int) or evaluation.seed < 0:
        raise ConfigError(f"eval.seed must be an integer >= 0, got {evaluation.seed!r}")
    if not isinstance(evaluation.sanity, bool):
        raise ConfigError(f"eval.sanity must be true or false, got {evaluation.sanity!r}")
    if not isinstance(evaluation.attack_options, dict) or not all(
            isinstance(options, dict) for options in evaluation.attack_options.values()):
        raise ConfigError("eval.attack_options must map attack names to mappings of options, e.g. {pgd: {steps: 50}}")
    for where, value in (("eval.precision", evaluation.precision), ("eval.aa_precision", evaluation.aa_precision)):
        if value not in ("auto", "fp32", "bf16"):
            raise ConfigError(f"{where} must be auto, fp32 or bf16, got {value!r}")
    share_value = evaluation.bf16_check_share
    if isinstance(share_value, bool) or not isinstance(share_value, (int, float)) or not 0 < share_value <= 1:
        raise ConfigError(f"eval.bf16_check_share must be a share in (0, 1], got {share_value!r}")
    minimum = evaluation.bf16_check_min
    if isinstance(minimum, bool) or not isinstance(minimum, int) or minimum <= 0:
        raise ConfigError(f"eval.bf16_check_min must be a positive integer, got {minimum!r}")
    if config.threat.norm not in NORMS:
        raise ConfigError(f"--norm must be one of {', '.join(NORMS)}, got {config.threat.norm!r}")
    if config.threat.eps is not None:
        if isinstance(config.threat.eps, bool) or not isinstance(config.threat.eps, (int, float)):
            raise ConfigError(f"--eps must be a number, got {config.threat.eps!r}")
        parse_eps(config.threat.eps_text or repr(config.threat.eps), config.threat.norm)
