"""Run configuration: dataclasses, presets, and the one function that merges them.

Precedence (style.md rule 9): command line (values that were given) > preset > dataset default >
dataclass default. ``None`` always means "not given". The merged config is stored with every
result.
"""
from __future__ import annotations

import dataclasses
import difflib
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Dict, List, Optional

from .errors import ConfigError
from .method import CIFAR_EPS, params_problem
from .registry import METHODS
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
        precision: clean, PGD and CW under ``auto`` (bf16 autocast on CUDA, fp32 on CPU), ``fp32`` or ``bf16``.
        aa_precision: AutoAttack's; fp32 unless asked, so that leaderboard AA numbers are full precision.
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
    precision: str = "auto"
    aa_precision: str = "fp32"
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
        val_size: training images held out for validation (clean + PGD-10 after every epoch);
            None → the dataset's default (200 on digits, 500 elsewhere); 0 turns validation off.
            With ``train_subset`` they come from the images outside the subset (see validation.py).
        select: which weights are evaluated: ``last`` (the papers' choice) or ``best-val`` (the
            epoch with the highest validation PGD accuracy; the last weights are evaluated too).
    """

    epochs: int = 20
    batch_size: int = 128
    lr: float = 0.025
    # Fields with a ``flag`` help are `bench run` options generated from this dataclass (cli.py).
    momentum: float = field(default=0.9, metadata={"flag": "SGD momentum of the fine-tuning (default: 0.9)",
                                                   "valid": "non-negative"})
    weight_decay: float = field(default=5e-4, metadata={"flag": "weight decay of the fine-tuning (default: 5e-4)",
                                                        "valid": "non-negative"})
    ema: Optional[bool] = field(default=None, metadata={
        "flag": "evaluate an EMA of the weights: on or off (default: each method's own choice; AFD: on)"})
    train_subset: Optional[int] = None
    num_workers: int = field(default=0, metadata={"flag": "DataLoader worker processes (default: 0)",
                                                  "valid": "non-negative"})
    feature_gap_probe: int = field(default=512, metadata={
        "flag": "training images on which the feature gap is measured after every epoch (default: the preset's; "
                "0 turns the probe off)", "valid": "non-negative"})
    precision: str = "auto"
    sync_bn: bool = False
    channels_last: str = "auto"
    compile: bool = False
    val_size: Optional[int] = None
    select: str = "last"


# Each preset sets TrainConfig / EvalConfig fields and, optionally, method parameters per dataset.
PRESETS: Dict[str, Dict[str, Any]] = {
    "quick": {
        "description": "the digits default: 10 epochs at batch 64, every test point, clean/pgd/cw/aa",
        "train": {"epochs": 10, "batch_size": 64, "lr": 0.025, "feature_gap_probe": 256},
        "eval": {"attacks": ["clean", "pgd", "cw", "aa"]},
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


@dataclass
class RunConfig:
    """Everything ``bench run`` needs; built by :func:`build_run_config`."""

    methods: List[str]
    dataset: str = "digits"
    arch: str = "smallcnn"
    preset: str = "quick"
    pretrained: str = "auto"
    pretrained_seed: int = 0
    seeds: List[int] = field(default_factory=lambda: [0])
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    method_params: Dict[str, Dict[str, Any]] = field(default_factory=dict)
    natural: Dict[str, Any] = field(default_factory=dict)
    db: str = DEFAULT_DB
    out: Optional[str] = None
    device: str = "auto"
    data_dir: Optional[str] = None
    download: bool = False
    # Experiment trackers (--log; trackers/): not part of the experiment, so a resume may change them.
    log: List[str] = field(default_factory=list)

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


def _apply(target: Any, values: Dict[str, Any], what: str) -> Any:
    names = {f.name for f in fields(target)}
    unknown = [k for k in values if k not in names]
    if unknown:
        raise ConfigError(f"unknown {what} option(s): {', '.join(unknown)}; known: {', '.join(sorted(names))}")
    return dataclasses.replace(target, **values)


def parse_value(text: str, annotation: Any, key: str) -> Any:
    """Parse ``text`` for a dataclass field of type ``annotation`` (bool, int, float, str, Optional)."""
    kind = str(annotation)
    try:
        if "bool" in kind:
            lowered = text.strip().lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if "Optional" in kind and text.strip().lower() in ("none", "null"):
            return None
        if "int" in kind:
            return int(text)
        if "float" in kind:
            if "/" in text:
                numerator, denominator = text.split("/")
                return float(numerator) / float(denominator)
            return float(text)
        return text
    except (ValueError, ZeroDivisionError):
        raise ConfigError(f"--set {key}={text}: expected a value of type {kind}") from None


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
        parsed.setdefault(canonical, {})[field_name] = parse_value(text, known[field_name].type, key)
    return parsed


def build_run_config(methods: List[str], *, dataset: str = "digits", arch: Optional[str] = None,
                     preset: Optional[str] = None, train_overrides: Optional[Dict[str, Any]] = None,
                     eval_overrides: Optional[Dict[str, Any]] = None,
                     method_params: Optional[Dict[str, Dict[str, Any]]] = None,
                     natural_overrides: Optional[Dict[str, Any]] = None, **run_fields: Any) -> RunConfig:
    """Merge dataclass defaults, the preset and the given values (``None`` = not given) into a RunConfig.

    ``natural_overrides``: the natural pre-training recipe's fields (epochs, batch_size, lr) over the
    preset's and the dataset's default."""
    from .data import default_preset, split_input_options

    if not methods:
        raise ConfigError("--methods is empty; choose from " + ", ".join(METHODS.names()))
    if [m.strip().lower() for m in methods] == ["all"]:
        methods = METHODS.names()
    canonical_methods = list(dict.fromkeys(METHODS.canonical(m) for m in methods))
    dataset_kind = split_input_options(dataset)[0].partition(":")[0]  # digits@16px is still digits
    preset_name = preset or default_preset(dataset)
    if preset_name not in PRESETS:
        close = difflib.get_close_matches(preset_name, list(PRESETS), n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise ConfigError(f"unknown preset {preset_name!r}.{hint} Available: {', '.join(sorted(PRESETS))}")
    chosen = PRESETS[preset_name]
    train = _apply(TrainConfig(), chosen.get("train", {}), "train")
    evaluation = _apply(EvalConfig(), chosen.get("eval", {}), "eval")
    train = _apply(train, {k: v for k, v in (train_overrides or {}).items() if v is not None}, "train")
    evaluation = _apply(evaluation, {k: v for k, v in (eval_overrides or {}).items() if v is not None}, "eval")

    params: Dict[str, Dict[str, Any]] = {}
    if chosen.get("method_presets"):
        for name in canonical_methods:
            values = METHODS.get(name).paper_presets.get(dataset_kind, {})
            if values:
                params[name] = dict(values)
    for name, values in (method_params or {}).items():
        canonical = METHODS.canonical(name)
        if canonical not in canonical_methods:
            raise ConfigError(f"--set {name}.…: {canonical} is not among --methods ({', '.join(canonical_methods)})")
        params.setdefault(canonical, {}).update(values)
    for name, values in params.items():
        params_cls = METHODS.get(name).Params
        known = {f.name for f in fields(params_cls)}
        unknown = [k for k in values if k not in known]
        if unknown:
            raise ConfigError(f"{name} has no parameter(s) {', '.join(unknown)}")
        for key, value in values.items():
            problem = params_problem(params_cls, key, value)
            if problem:
                raise ConfigError(f"--set {name}.{key}={value!r}: {problem}")

    natural = {**chosen.get("natural", {}), **{k: v for k, v in (natural_overrides or {}).items() if v is not None}}
    config = RunConfig(methods=canonical_methods, dataset=dataset, arch=arch or chosen.get("arch", "smallcnn"),
                       preset=preset_name, train=train, eval=evaluation, method_params=params, natural=natural,
                       **{k: v for k, v in run_fields.items() if v is not None})
    validate(config)
    return config


def validate(config: RunConfig) -> None:
    """Cross-field checks, each with a one-line message."""
    if not config.seeds:
        raise ConfigError("--seeds is empty")
    if any(seed < 0 for seed in config.seeds):
        raise ConfigError(f"--seeds must be >= 0, got {config.seeds}")
    if len(set(config.seeds)) != len(config.seeds):
        raise ConfigError(f"--seeds has duplicates: {config.seeds}")
    for name in ("epochs", "batch_size"):
        if getattr(config.train, name) <= 0:
            raise ConfigError(f"--{name.replace('_', '-')} must be positive")
    if config.train.lr <= 0:
        raise ConfigError("--lr must be positive")
    if config.train.train_subset is not None and config.train.train_subset <= 0:
        raise ConfigError("--train-subset must be positive")
    if config.train.val_size is not None and config.train.val_size < 0:
        raise ConfigError(f"--val-size must be >= 0, got {config.train.val_size}")
    if config.train.select not in SELECTIONS:
        raise ConfigError(f"--select must be one of {', '.join(SELECTIONS)}, got {config.train.select!r}")
    if config.train.select == "best-val" and config.train.val_size == 0:
        raise ConfigError("--select best-val needs a validation split; --val-size 0 turns it off")
    for where, value in (("train", config.train.precision), ("eval", config.eval.precision),
                         ("eval", config.eval.aa_precision)):
        if value not in ("auto", "fp32", "bf16"):
            raise ConfigError(f"{where} precision must be auto, fp32 or bf16, got {value!r}")
    if config.eval.eps is not None and config.eval.eps < 0:
        raise ConfigError("--eps must be >= 0")
