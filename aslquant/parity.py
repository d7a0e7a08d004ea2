"""Runtime parity: do the shipped files give the answers of the models that were validated?

The same evaluation images go through six runtimes:

* ``torch_fp32``: the FP32 model as aslquant runs it (channels-last, ``measure.fp32_runner``);
* ``torch_quantized``: the run's quantized model as the dashboard shows it (validated);
* ``torchscript`` and ``lite``: ``quantized.pt`` / ``quantized.ptl`` as written by
  ``aslquant.export``, reloaded from disk (``torch.jit.load``,
  ``torch.jit._load_for_lite_interpreter``);
* ``onnx_fp32`` and ``onnx_int8``: ``fp32.onnx`` / ``int8.onnx`` through ONNX Runtime.

Every shipped file is checked against the model it stands for on screen (``REFERENCES``): the
TorchScript, lite and INT8 ONNX files against the quantized torch model, the FP32 ONNX file
against FP32 torch. The result holds the top-1 agreement of every pair of runtimes (with its
interval over images, ``aslquant.stats.agreement_interval``), the images where a shipped file
disagrees with its reference, and how far its logits moved, in logits and in quantization
steps of the quantized model's output (``OutputStep``). ``runtime_gate`` turns the worst
shipped file's disagreement into the ``--max-runtime-disagreement`` verdict.

Cost is bounded: by default a class-stratified subset of ``DEFAULT_IMAGES`` evaluation images
(``images=None``: all of them), files exported to a temporary folder that is removed after.
Each runtime may be fed its own preprocessing (``preprocess=``), which is how a deployment
that, say, feeds BGR or unscaled pixels is simulated: the disagreement shows up here.
"""

from __future__ import annotations

import dataclasses
import math
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

import numpy as np
import pandas as pd
import torch

from aslquant import data as data_mod
from aslquant import export
from aslquant.data import LabeledImage, Preprocess
from aslquant.engine_lock import engine_session
from aslquant.errors import InputError
from aslquant.measure import fp32_runner
from aslquant.stats import (
    GateVerdict,
    Interval,
    accuracy_interval,
    agreement_interval,
    gate_verdict,
)

Progress = Callable[[str, float], None]
#: logits (N, classes) as float32 NumPy from a preprocessed batch (N, 3, s, s).
Runner = Callable[[torch.Tensor], np.ndarray]

#: Evaluation images a parity check uses by default: 10 per class for the 29 ASL classes.
#: Six runtimes over 290 images at 224 px cost tens of seconds on two cores (see the report).
DEFAULT_IMAGES = 290
PARITY_IMAGES = (1, 100_000)

TORCH_FP32, TORCH_QUANTIZED = "torch_fp32", "torch_quantized"
TORCHSCRIPT, LITE, ONNX_FP32, ONNX_INT8 = "torchscript", "lite", "onnx_fp32", "onnx_int8"
#: Every runtime, in display order (validated models first, then the shipped files).
RUNTIMES: tuple[str, ...] = (TORCH_FP32, TORCH_QUANTIZED, TORCHSCRIPT, LITE, ONNX_FP32, ONNX_INT8)
TITLES: Mapping[str, str] = MappingProxyType(
    {
        TORCH_FP32: "FP32 torch (validated)",
        TORCH_QUANTIZED: "quantized torch (validated)",
        TORCHSCRIPT: f"TorchScript {export.FILE_NAMES['torchscript']}",
        LITE: f"lite interpreter {export.FILE_NAMES['lite']}",
        ONNX_FP32: f"ONNX Runtime {export.FILE_NAMES['onnx_fp32']}",
        ONNX_INT8: f"ONNX Runtime {export.FILE_NAMES['onnx_int8']}",
    }
)
#: The validated model each shipped file is checked against.
REFERENCES: Mapping[str, str] = MappingProxyType(
    {
        TORCHSCRIPT: TORCH_QUANTIZED,
        LITE: TORCH_QUANTIZED,
        ONNX_INT8: TORCH_QUANTIZED,
        ONNX_FP32: TORCH_FP32,
    }
)


# ---------------------------------------------------------------------------------------------
# What a runtime is, and the unit logit differences are counted in


@dataclass(frozen=True)
class Runtime:
    """One way the model runs: how a batch becomes logits, and what it is checked against.

    ``run`` None means the runtime was not produced; ``reason`` says why. ``preprocess`` None
    means the run's own preprocessing; anything else is fed to this runtime alone.
    """

    name: str
    title: str
    run: Runner | None = field(default=None, compare=False, repr=False)
    reference: str | None = None
    reason: str = ""
    file: str | None = None
    size_bytes: int | None = None
    preprocess: Preprocess | None = None

    @property
    def produced(self) -> bool:
        return self.run is not None


@dataclass(frozen=True)
class RuntimeStatus:
    """A runtime as the report lists it (``Runtime`` without its callable)."""

    name: str
    title: str
    produced: bool
    reason: str
    reference: str | None
    file: str | None
    size_bytes: int | None
    #: The preprocessing this runtime was fed, when it differs from the run's (else None).
    preprocess: dict | None

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass(frozen=True)
class OutputStep:
    """The quantization step of the quantized model's logits, or None with the reason."""

    scale: float | None
    source: str

    def to_dict(self) -> dict:
        return {"scale": self.scale, "source": self.source}


def output_step(quantized) -> OutputStep:
    """The output scale of fc2 in the quantized model (an ``aslquant.quantize.QuantizedModel``).

    Eager and FX models carry it on the quantized ``fc2`` module (``scale``: one step of the
    INT8 logits). pt2e graphs, dynamic and FP16 models, or fc2 kept in FP32 have float logits:
    then differences are only reported in logits, and the source says why.
    """
    method = quantized.recipe.method
    module = quantized.inspectable
    fc2 = dict(module.named_modules()).get("fc2")
    dynamic = isinstance(fc2, torch.ao.nn.quantized.dynamic.Linear)
    # A dynamic Linear inherits a ``scale`` attribute (1.0) but returns float logits.
    scale = getattr(fc2, "scale", None) if fc2 is not None and not dynamic else None
    if isinstance(scale, torch.Tensor) and scale.numel() == 1:
        scale = float(scale)
    if isinstance(scale, (int, float)) and math.isfinite(scale) and scale > 0:
        kind = f"{type(fc2).__module__.split('.modules')[0]}.{type(fc2).__name__}"
        return OutputStep(float(scale), f"output scale of fc2 ({kind}, method {method})")
    if dynamic:
        why = "fc2 is dynamically quantized (INT8 weights, float output)"
    elif "fc2" in quantized.recipe.keep_fp32:
        why = "fc2 is kept in FP32, so the logits are float"
    elif not quantized.recipe.method_spec.has_layer_modules:
        # Checked on the converted graph: X86InductorQuantizer quantizes the input of the last
        # linear layer, and leaves its output (the logits) in float.
        why = f"method {method}'s graph leaves the last linear layer's output in float"
    elif fc2 is None:
        why = f"method {method} leaves no fc2 module with output quantization parameters"
    else:
        why = f"fc2 of method {method} ({type(fc2).__name__}) produces float logits"
    return OutputStep(None, f"no quantization step: {why}; differences are in logits only")


# ---------------------------------------------------------------------------------------------
# Results


@dataclass(frozen=True)
class DisagreeingImage:
    """One image on which a shipped file's top-1 differs from its reference's."""

    runtime: str
    reference: str
    index: int  # position in the parity subset
    path: str
    display: str
    true: str
    runtime_top1: str
    reference_top1: str
    max_abs_logit_diff: float

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass(frozen=True)
class ShippedCheck:
    """One shipped file against the validated model it stands for.

    Logit differences: per image the largest |logit difference| over the classes, then its
    maximum and 99th percentile over the images; ``*_steps`` divide them by ``OutputStep``.
    """

    runtime: str
    reference: str
    n: int
    agreement: Interval  # fraction of images with the same top-1
    max_abs_logit: float
    p99_abs_logit: float
    max_steps: float | None
    p99_steps: float | None
    images: tuple[DisagreeingImage, ...]

    @property
    def disagreeing(self) -> int:
        return len(self.images)

    @property
    def disagreement_pct(self) -> Interval:
        """Share of images (percent) where the top-1 differs, with the agreement's interval."""
        a = self.agreement
        return Interval(
            100.0 * (1.0 - a.estimate),
            100.0 * (1.0 - a.high),
            100.0 * (1.0 - a.low),
            a.level,
            a.method,
            "percent",
            a.n,
        )

    def to_dict(self) -> dict:
        return {
            "runtime": self.runtime,
            "reference": self.reference,
            "n": self.n,
            "agreement": self.agreement.to_dict(),
            "disagreement_pct": self.disagreement_pct.to_dict(),
            "disagreeing": self.disagreeing,
            "max_abs_logit": self.max_abs_logit,
            "p99_abs_logit": self.p99_abs_logit,
            "max_steps": self.max_steps,
            "p99_steps": self.p99_steps,
            "images": [image.to_dict() for image in self.images],
        }


@dataclass(frozen=True)
class Parity:
    """Every runtime over the same images. ``agreement[(a, b)]`` for produced a before b."""

    runtimes: tuple[RuntimeStatus, ...]
    n_images: int
    subset: str
    agreement: Mapping[tuple[str, str], Interval]
    accuracy: Mapping[str, Interval]
    shipped: tuple[ShippedCheck, ...]
    step: OutputStep
    threads: int
    seconds: float  # wall time of the whole check (exports, reloads, runs)
    notes: tuple[str, ...] = ()
    labels: np.ndarray = field(default_factory=lambda: np.zeros(0, int), compare=False, repr=False)
    top1: Mapping[str, np.ndarray] = field(default_factory=dict, compare=False, repr=False)

    @property
    def produced(self) -> list[str]:
        return [r.name for r in self.runtimes if r.produced]

    @property
    def not_produced(self) -> list[RuntimeStatus]:
        return [r for r in self.runtimes if not r.produced]

    def status(self, name: str) -> RuntimeStatus:
        return next(r for r in self.runtimes if r.name == name)

    def check(self, runtime: str) -> ShippedCheck:
        return next(c for c in self.shipped if c.runtime == runtime)

    def pair(self, a: str, b: str) -> Interval:
        """Top-1 agreement of two produced runtimes (either order)."""
        return self.agreement[(a, b)] if (a, b) in self.agreement else self.agreement[(b, a)]

    def matrix(self) -> pd.DataFrame:
        """Agreement in percent, produced runtimes x produced runtimes (100 on the diagonal)."""
        names = self.produced
        values = [
            [100.0 if a == b else 100.0 * self.pair(a, b).estimate for b in names] for a in names
        ]
        return pd.DataFrame(values, index=names, columns=names)

    def to_dict(self) -> dict:
        names = self.produced
        return {
            "n_images": self.n_images,
            "subset": self.subset,
            "threads": self.threads,
            "seconds": self.seconds,
            "runtimes": [r.to_dict() for r in self.runtimes],
            "matrix": {"runtimes": names, "agreement_pct": self.matrix().values.tolist()},
            "pairs": [
                {"a": a, "b": b, "agreement": interval.to_dict()}
                for (a, b), interval in self.agreement.items()
            ],
            "accuracy": {name: interval.to_dict() for name, interval in self.accuracy.items()},
            "shipped": [check.to_dict() for check in self.shipped],
            "step": self.step.to_dict(),
            "notes": list(self.notes),
        }


# ---------------------------------------------------------------------------------------------
# Comparing runtimes


def _lockstep_batches(
    items: Sequence[LabeledImage], preprocesses: Sequence[Preprocess], batch_size: int
):
    """Batches of the same images under each preprocessing, in step (decoded once each)."""
    streams = [data_mod.iter_batches(list(items), pp, batch_size) for pp in preprocesses]
    for batches in zip(*streams, strict=True):
        paths = [tuple(item.path for item in b.items) for b in batches]
        if len(set(paths)) != 1:  # a file became unreadable between two decodes
            raise InputError(f"{paths[0][0]}: images changed while the parity check read them")
        yield batches


def _per_image_max_abs(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.abs(a.astype(np.float64) - b.astype(np.float64)).max(axis=1)


def compare_runtimes(
    runtimes: Sequence[Runtime],
    items: Sequence[LabeledImage],
    preprocess: Preprocess,
    class_names: Sequence[str],
    *,
    step: OutputStep,
    threads: int = 1,
    batch_size: int = 32,
    subset: str = "",
    notes: Sequence[str] = (),
    progress: Progress | None = None,
) -> Parity:
    """Run every produced runtime over ``items`` and compare them (see the module docstring).

    ``preprocess``: how images are prepared unless a runtime names its own. ``threads`` is
    recorded; each runner sets its own engine and threads. Unreadable images are left out of
    every runtime alike.
    """
    started = time.perf_counter()
    names = [r.name for r in runtimes]
    if len(set(names)) != len(names):
        raise ValueError(f"runtime names repeat: {names}")
    by_name = {r.name: r for r in runtimes}
    for r in runtimes:
        if r.reference is not None and r.reference not in by_name:
            raise ValueError(f"runtime {r.name}: reference {r.reference} is not among {names}")
    produced = [r for r in runtimes if r.produced]
    feeds = list(dict.fromkeys(r.preprocess or preprocess for r in produced))
    logits: dict[str, list[np.ndarray]] = {r.name: [] for r in produced}
    labels: list[np.ndarray] = []
    kept: list[LabeledImage] = []
    total = max(1, len(items))
    for batches in _lockstep_batches(items, feeds, batch_size):
        x_by_feed = {pp: b.x for pp, b in zip(feeds, batches, strict=True)}
        for r in produced:
            out = r.run(x_by_feed[r.preprocess or preprocess])
            logits[r.name].append(np.asarray(out, dtype=np.float32))
        labels.append(batches[0].y.numpy())
        kept += batches[0].items
        if progress:
            progress("runtime parity", len(kept) / total)
    n = len(kept)
    y = np.concatenate(labels) if labels else np.zeros(0, int)
    k = len(class_names)
    full = {
        name: np.concatenate(parts) if parts else np.zeros((0, k), np.float32)
        for name, parts in logits.items()
    }
    top1 = {name: values.argmax(axis=1) for name, values in full.items()}
    for name, values in full.items():
        if values.shape != (n, k):
            raise ValueError(
                f"runtime {name} returned logits of shape {values.shape}, not {(n, k)}"
            )

    agreement: dict[tuple[str, str], Interval] = {}
    for i, a in enumerate(produced):
        for b in produced[i + 1 :]:
            agreement[(a.name, b.name)] = agreement_interval(top1[a.name], top1[b.name])
    accuracy = {r.name: accuracy_interval(top1[r.name] == y) for r in produced}

    checks = []
    for r in produced:
        if r.reference is None or not by_name[r.reference].produced:
            continue
        ref = r.reference
        diff = _per_image_max_abs(full[r.name], full[ref])
        max_abs = float(diff.max()) if n else math.nan
        p99 = float(np.percentile(diff, 99)) if n else math.nan
        images = tuple(
            DisagreeingImage(
                r.name,
                ref,
                int(i),
                kept[i].path,
                kept[i].display,
                class_names[int(y[i])],
                class_names[int(top1[r.name][i])],
                class_names[int(top1[ref][i])],
                float(diff[i]),
            )
            for i in np.nonzero(top1[r.name] != top1[ref])[0]
        )
        checks.append(
            ShippedCheck(
                r.name,
                ref,
                n,
                agreement[(ref, r.name)]
                if (ref, r.name) in agreement
                else agreement[(r.name, ref)],
                max_abs,
                p99,
                max_abs / step.scale if step.scale else None,
                p99 / step.scale if step.scale else None,
                images,
            )
        )
    statuses = tuple(
        RuntimeStatus(
            r.name,
            r.title,
            r.produced,
            r.reason,
            r.reference,
            r.file,
            r.size_bytes,
            None if r.preprocess in (None, preprocess) else r.preprocess.to_dict(),
        )
        for r in runtimes
    )
    return Parity(
        runtimes=statuses,
        n_images=n,
        subset=subset or f"{n} images",
        agreement=MappingProxyType(agreement),
        accuracy=MappingProxyType(accuracy),
        shipped=tuple(checks),
        step=step,
        threads=threads,
        seconds=time.perf_counter() - started,
        notes=tuple(notes),
        labels=y,
        top1=MappingProxyType(top1),
    )


# ---------------------------------------------------------------------------------------------
# A run's runtimes


def parity_items(
    items: Sequence[LabeledImage], images: int | None = DEFAULT_IMAGES, seed: int = 0
) -> tuple[list[LabeledImage], str]:
    """The images to check: a class-stratified, seeded subset of ``images`` of ``items`` (all
    of them, in order, when None or when there are fewer). Returns (items, description)."""
    if images is not None:
        lo, hi = PARITY_IMAGES
        if isinstance(images, bool) or not isinstance(images, int) or not lo <= images <= hi:
            raise InputError(f"parity images must be a whole number in {lo}..{hi}, got {images!r}")
    items = list(items)
    if images is None or images >= len(items):
        return items, f"all {len(items)} evaluation images"
    chosen = data_mod.sample(items, images, seed)
    return chosen, (
        f"{len(chosen)} of {len(items)} evaluation images, class-stratified (seed {seed})"
    )


def evaluation_items(result) -> list[LabeledImage]:
    """A run's evaluation images, in evaluation order."""
    ev = result.evaluation
    return [
        LabeledImage(p, d, int(label))
        for p, d, label in zip(ev.paths, ev.displays, ev.labels, strict=True)
    ]


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return (text[0] if text else type(err).__name__)[:200]


def _torch_runner(module, backend: str | None, threads: int) -> Runner:
    def run(x: torch.Tensor) -> np.ndarray:
        with engine_session(backend, threads), torch.inference_mode():
            return module(x).float().numpy()

    return run


def _ort_runner(path: Path, threads: int) -> Runner:
    session = export.ort_session(path, threads)
    return lambda x: export.ort_run(session, x.numpy())


def _not_scriptable(result) -> str | None:
    spec = result.quantized.recipe.method_spec
    if spec.scriptable:
        return None
    return (
        f"not produced: method {spec.name} is a torch.compile'd graph, which has no "
        "TorchScript or lite-interpreter export"
    )


def _no_calibration(result) -> str | None:
    if result.n_calib > 0:
        return None
    return (
        f"not produced: method {result.quantized.recipe.method} has no calibration images "
        "for onnxruntime's quantize_static"
    )


def _write(kind: str, result, folder: Path, written: dict[str, Path], notes: list[str]) -> Path:
    path = folder / export.FILE_NAMES[kind]
    if kind == TORCHSCRIPT:
        return export.export_torchscript(result, path)
    if kind == LITE:
        path, lite_notes = export.export_lite(result, path)
        notes.extend(lite_notes)
        return path
    if kind == ONNX_FP32:
        return export.export_onnx_fp32(result, path)
    fp32_path = written.get(ONNX_FP32) or export.export_onnx_fp32(
        result, folder / export.FILE_NAMES[ONNX_FP32]
    )
    return export.export_onnx_int8(result, fp32_path, path)


def _load(kind: str, path: Path, backend: str | None, threads: int) -> Runner:
    if kind in (ONNX_FP32, ONNX_INT8):
        return _ort_runner(path, threads)
    with engine_session(backend, threads):
        if kind == TORCHSCRIPT:
            module = torch.jit.load(str(path))
        else:
            from torch.jit.mobile import _load_for_lite_interpreter

            module = _load_for_lite_interpreter(str(path))
    return _torch_runner(module, backend, threads)


def runtime_parity(
    result,
    work_dir: str | Path | None = None,
    *,
    images: int | None = DEFAULT_IMAGES,
    seed: int = 0,
    files: Mapping[str, str | Path] | None = None,
    preprocess: Mapping[str, Preprocess] | None = None,
    progress: Progress | None = None,
) -> Parity:
    """Check a run's exported files against its validated models (see the module docstring).

    ``result``: an ``aslquant.run.RunResult``. The files are exported to a temporary folder
    inside ``work_dir`` (default: Python's temporary folder) and removed afterwards, unless
    ``files`` names already written ones ({"torchscript"|"lite"|"onnx_fp32"|"onnx_int8":
    path}, as ``export.Exported.files``): then exactly those files are checked. ``images``:
    size of the class-stratified subset (None: every evaluation image). ``preprocess``: a
    different preprocessing for some runtimes ({runtime name: Preprocess}), to see what a
    deployment that prepares images differently would answer.
    """
    preprocess = dict(preprocess or {})
    unknown = sorted(set(preprocess) - set(RUNTIMES))
    if unknown:
        raise InputError(
            f"parity preprocessing: unknown runtime(s) {unknown}; known: {list(RUNTIMES)}"
        )
    given = {k: Path(v) for k, v in (files or {}).items() if k in REFERENCES}
    for kind, path in given.items():
        if not path.is_file():
            raise InputError(f"{path}: exported {kind} file not found")
    started = time.perf_counter()
    items, subset = parity_items(evaluation_items(result), images, seed)
    config, qm = result.config, result.quantized
    threads = result.threads
    notes: list[str] = []
    blocked = {
        TORCHSCRIPT: _not_scriptable(result),
        LITE: _not_scriptable(result),
        ONNX_FP32: None,
        ONNX_INT8: _no_calibration(result),
    }

    def stage(name: str, fraction: float) -> None:
        if progress:
            progress(name, fraction)

    runtimes = [
        Runtime(
            TORCH_FP32,
            TITLES[TORCH_FP32],
            _torch_runner(fp32_runner(result.fp32_model), None, threads),
            preprocess=preprocess.get(TORCH_FP32),
        ),
        Runtime(
            TORCH_QUANTIZED,
            TITLES[TORCH_QUANTIZED],
            _torch_runner(qm.module, qm.backend, threads),
            preprocess=preprocess.get(TORCH_QUANTIZED),
        ),
    ]
    with tempfile.TemporaryDirectory(prefix="aslquant-parity-", dir=work_dir) as tmp:
        folder = Path(tmp)
        written: dict[str, Path] = {}
        for i, kind in enumerate((TORCHSCRIPT, LITE, ONNX_FP32, ONNX_INT8)):
            stage("exporting for runtime parity", i / 4)
            common = {"reference": REFERENCES[kind], "preprocess": preprocess.get(kind)}
            reason = blocked[kind]
            if reason is None and files is not None and kind not in given:
                reason = "not produced: not among the exported files given"
            if reason is not None:
                runtimes.append(Runtime(kind, TITLES[kind], reason=reason, **common))
                continue
            try:
                path = given.get(kind) or _write(kind, result, folder, written, notes)
                written[kind] = path
                run = _load(kind, path, qm.backend, threads)
            except Exception as err:  # a failed export is a finding to report, not a crash
                runtimes.append(
                    Runtime(
                        kind,
                        TITLES[kind],
                        reason=f"not produced: export or reload failed ({_first_line(err)})",
                        **common,
                    )
                )
                continue
            runtimes.append(
                Runtime(
                    kind,
                    TITLES[kind],
                    run,
                    file=str(path) if kind in given else path.name,
                    size_bytes=int(path.stat().st_size),
                    **common,
                )
            )
        stage("exporting for runtime parity", 1.0)
        parity = compare_runtimes(
            runtimes,
            items,
            config.preprocess,
            result.class_names,
            step=output_step(qm),
            threads=threads,
            subset=subset,
            notes=tuple(dict.fromkeys(notes)),
            progress=progress,
        )
    # The whole check (exports, reloads, runs): what a user waits for.
    return dataclasses.replace(parity, seconds=time.perf_counter() - started)


# ---------------------------------------------------------------------------------------------
# The gate


def runtime_gate(parity: Parity, max_disagreement_pct: float) -> GateVerdict:
    """``--max-runtime-disagreement PCT``: fails when a shipped file's top-1 differs from the
    validated model's on more than PCT % of the images.

    The verdict is the worst shipped file's (highest disagreement), judged with its interval by
    ``stats.gate_verdict``; its reason names the file and lists files that were not produced.
    """
    pct = max_disagreement_pct
    if isinstance(pct, bool) or not isinstance(pct, (int, float)) or not 0 <= pct <= 100:
        raise InputError(f"--max-runtime-disagreement must be a percentage in 0..100, got {pct!r}")
    if not parity.shipped:
        raise InputError("--max-runtime-disagreement: no shipped file was produced to check")
    worst = max(parity.shipped, key=lambda c: (c.disagreement_pct.estimate, c.runtime))
    verdict = gate_verdict(worst.disagreement_pct, float(pct))
    who = (
        f"{TITLES.get(worst.runtime, worst.runtime)} vs {TITLES.get(worst.reference, worst.reference)}"
        f": {worst.disagreeing} of {worst.n} images differ"
    )
    skipped = [export.FILE_NAMES[r.name] for r in parity.not_produced if r.name in REFERENCES]
    tail = f" (not checked, not produced: {', '.join(skipped)})" if skipped else ""
    return GateVerdict(
        verdict.outcome, verdict.threshold, verdict.estimate, f"{who}; {verdict.reason}{tail}"
    )
