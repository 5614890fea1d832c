"""Which latent generates best: five designs of the VQ-VAE's code, each trained from scratch, at equal prior minutes.

Every design is trained and measured through the bundle's own commands, each in its own process, into a bundle root
of its own under ``--work-dir`` (the demo data is generated once, in ``<work-dir>/demo``, and shared):

1. ``training`` (the VQ-VAE, the recipe's 15 epochs), then ``evaluating`` (test SSIM and PSNR);
2. ``training_prior`` for one epoch, whose time sets the number of epochs that fill ``--prior-budget`` seconds
   (rounded to the nearest epoch, at least one), then resumed to that number (a resumed run follows the longer
   cosine schedule), so every prior trains for about the same minutes on the same machine;
3. ``generating`` with its defaults: 256 samples measured against the real test split (classifier and texture
   two-sample tests with their references, precision and recall, ...).

The designs (``--designs``, in this order, since d and e build on the better of b and c):

* ``a``: today's default, a 32x32 map of 512 codes (``train.json``);
* ``b``: a 16x16 map (8x downsampling: ``channels`` ``[64, 128, 256]``) of 256 codes;
* ``c``: a 16x16 map of 64 codes;
* ``d``: the better of b and c by the classifier's d' (generated vs test), its decoder trained on near-miss codes
  (``code_noise`` 0.1: a tenth of the codes decoded through one of their 8 nearest codebook neighbours);
* ``e``: d plus the patch adversarial loss on the decoder: the ``generative.json`` and ``adversarial.json`` presets
  with d's vocabulary.

The first study (``benchmarks/RESULTS.md``, sixth run) ran at commit ``7398912``, whose ``generative.json`` held
e's adversarial term (it moved to ``adversarial.json`` when the study picked d).

Results go to ``<output>/latent_study.{json,md}`` and the figure (real test slices above each design's samples at
the same slice positions) to ``--figure``. Steps already done in a work folder are not run again (a study can be
resumed), so run it in a fresh ``--work-dir`` for new numbers. Minutes are the trainers' own (the sum of
``epoch_seconds`` of the training histories, validation included), and each step's wall clock is recorded too.

Run ``python benchmarks/latent_study.py --work-dir /tmp/latent_study --prior-budget 480`` on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, NamedTuple

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIGS = REPO_ROOT / "bundle" / "configs"
SIXTEEN = {"network_def#channels": "[64, 128, 256]"}


class Design(NamedTuple):
    """One latent design: its configs (added to train.json) and command-line overrides."""

    name: str
    description: str
    configs: tuple[str, ...]
    overrides: dict[str, str]


def designs(vocabulary: int | None) -> dict[str, Design]:
    """The five designs; ``vocabulary`` is the codebook size of the better of b and c (d and e use it)."""
    chosen = {"network_def#num_embeddings": str(vocabulary)} if vocabulary else {}
    return {
        "a": Design("a", "32x32 latent, 512 codes (today)", (), {}),
        "b": Design("b", "16x16 latent, 256 codes", (), {**SIXTEEN, "network_def#num_embeddings": "256"}),
        "c": Design("c", "16x16 latent, 64 codes", (), {**SIXTEEN, "network_def#num_embeddings": "64"}),
        "d": Design("d", f"16x16, {vocabulary} codes, decoder trained on near-miss codes", (),
                    {**SIXTEEN, **chosen, "network_def#code_noise": "0.1"}),
        "e": Design("e", f"d + patch adversarial loss ({vocabulary} codes, adversarial.json)",
                    ("generative.json", "adversarial.json"), dict(chosen)),
    }


def bundle(run_id: str, design: Design, root: Path, demo: Path, extra: tuple[str, ...], *args: str) -> float:
    """Run ``python -m monai.bundle run <run_id>`` for a design, its log in ``<root>/<run_id>.log``; wall seconds."""
    files = ["train.json", *design.configs, *extra]
    config_file = "[" + ",".join(f"'{CONFIGS / name}'" for name in files) + "]"
    command = [sys.executable, "-m", "monai.bundle", "run", run_id, "--config_file", config_file,
               "--bundle_root", str(root), "--demo_dir", str(demo), "--progress", "false"]
    for key, value in design.overrides.items():
        command += [f"--{key}", value]
    command += list(args)
    log = root / f"{run_id}{'_' + args[1] if args and args[0] == '--prior_max_epochs' else ''}.log"
    started = time.perf_counter()
    with open(log, "w") as stream:
        result = subprocess.run(command, cwd=REPO_ROOT, stdout=stream, stderr=subprocess.STDOUT, check=False)
    seconds = time.perf_counter() - started
    if result.returncode:
        raise RuntimeError(f"{run_id} of design {design.name} failed (exit {result.returncode}); see {log}")
    return seconds


def _history(path: Path) -> list[dict[str, Any]]:
    return json.loads(path.read_text()) if path.is_file() else []


def run_design(design: Design, work: Path, demo: Path, budget: float) -> dict[str, Any]:
    """Train and measure one design (skipping steps whose outputs exist); its row of the results."""
    root = work / design.name
    root.mkdir(parents=True, exist_ok=True)
    ckpt = root / "models" / ("generative" if "generative.json" in design.configs else "")
    outputs = root / "outputs" / ("generative" if "generative.json" in design.configs else "")
    record_file = root / "study_steps.json"
    steps: dict[str, Any] = json.loads(record_file.read_text()) if record_file.is_file() else {}

    def step(name: str, run_id: str, extra: tuple[str, ...], *args: str) -> None:
        if name not in steps:
            print(f"[{time.strftime('%H:%M:%S')}] design {design.name}: {name}", flush=True)
            steps[name] = bundle(run_id, design, root, demo, extra, *args)
            record_file.write_text(json.dumps(steps, indent=1))

    step("training", "training", ())
    step("evaluating", "evaluating", ("evaluate.json",))
    step("prior_calibration", "training_prior", ("train_prior.json",), "--prior_max_epochs", "1")
    first_epoch = _history(ckpt / "prior_training_history.json")[0]["epoch_seconds"]
    epochs = steps.setdefault("prior_epochs", max(1, round(budget / first_epoch)))
    if epochs > 1:
        step("prior_training", "training_prior", ("train_prior.json",), "--prior_max_epochs", str(epochs),
             "--resume", "true")
    step("generating", "generating", ("train_prior.json", "generate.json"))

    vqvae_history = _history(ckpt / "training_history.json")
    prior_history = _history(ckpt / "prior_training_history.json")
    evaluation = json.loads((outputs / "metrics.json").read_text())
    generation = json.loads((outputs / "generated" / "generation_metrics.json").read_text())
    best_prior = min(prior_history, key=lambda record: record["val_bits_per_code"])
    return {
        "design": design.name,
        "description": design.description,
        "configs": ["train.json", *design.configs],
        "overrides": design.overrides,
        "vqvae_minutes": sum(r["epoch_seconds"] for r in vqvae_history) / 60,
        "prior_minutes": sum(r["epoch_seconds"] for r in prior_history) / 60,
        "prior_epochs": len(prior_history),
        "step_wall_seconds": {key: value for key, value in steps.items() if key != "prior_epochs"},
        "test_ssim": evaluation["ssim_mean"],
        "test_ssim_min": evaluation["ssim_min"],
        "test_psnr": evaluation["psnr_mean"],
        "evaluation": {key: value for key, value in evaluation.items() if not isinstance(value, list)},
        "val_bits_per_code": best_prior["val_bits_per_code"],
        "code_size": generation.get("code_size"),
        "generation": {key: generation.get(key) for key in GENERATION_KEYS},
    }


GENERATION_KEYS = (
    "classifier_auc_generated_vs_test", "classifier_auc_generated_vs_test_ci95",
    "classifier_dprime_generated_vs_test", "classifier_dprime_generated_vs_test_ci95",
    "classifier_auc_reconstructed_vs_test", "classifier_dprime_reconstructed_vs_test",
    "classifier_auc_train_vs_test", "classifier_dprime_train_vs_test",
    "texture_auc_generated_vs_test", "texture_auc_generated_vs_test_ci95", "texture_dprime_generated_vs_test",
    "texture_auc_reconstructed_vs_test", "texture_auc_reconstructed_vs_test_ci95",
    "texture_auc_train_vs_test", "texture_auc_train_vs_test_ci95",
    "precision_generated", "precision_generated_ci95", "recall_generated", "recall_generated_ci95",
    "precision_train_subset", "recall_train_subset", "code_size", "prior_uniform_bits_per_code",
)


def _number(value: Any, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _interval(value: Any, interval: Any, digits: int = 2) -> str:
    if value is None:
        return "–"
    if not interval:
        return _number(value, digits)
    return f"{value:.{digits}f} [{interval[0]:.{digits}f}, {interval[1]:.{digits}f}]"


def markdown(results: dict[str, Any]) -> str:
    """The study's table."""
    lines = [
        f"Machine: {results['machine']}; prior budget {results['prior_budget_seconds']:.0f} s a design.",
        "",
        "| design | code | test SSIM / PSNR | VQ-VAE min | prior min (epochs) | bits per code | CNN AUC | CNN d′ "
        "| precision | recall | texture AUC: generated | texture: reconstructions | texture: real vs real |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in results["designs"]:
        g = row["generation"]
        code = "x".join(str(s) for s in row["code_size"] or []) or "?"
        lines.append(
            f"| {row['design']}: {row['description']} | {code} | {_number(row['test_ssim'], 3)} / "
            f"{_number(row['test_psnr'], 1)} | {row['vqvae_minutes']:.1f} | {row['prior_minutes']:.1f} "
            f"({row['prior_epochs']}) | {_number(row['val_bits_per_code'])} | "
            f"{_interval(g['classifier_auc_generated_vs_test'], g['classifier_auc_generated_vs_test_ci95'])} | "
            f"{_interval(g['classifier_dprime_generated_vs_test'], g['classifier_dprime_generated_vs_test_ci95'])} | "
            f"{_interval(g['precision_generated'], g['precision_generated_ci95'])} | "
            f"{_interval(g['recall_generated'], g['recall_generated_ci95'])} | "
            f"{_interval(g['texture_auc_generated_vs_test'], g['texture_auc_generated_vs_test_ci95'])} | "
            f"{_number(g['texture_auc_reconstructed_vs_test'])} | {_number(g['texture_auc_train_vs_test'])} |"
        )
    lines += ["", "References per design (CNN AUC / d′): reconstructions vs real; real training vs real test."]
    for row in results["designs"]:
        g = row["generation"]
        lines.append(
            f"- {row['design']}: {_number(g['classifier_auc_reconstructed_vs_test'])} / "
            f"{_number(g['classifier_dprime_reconstructed_vs_test'])}; {_number(g['classifier_auc_train_vs_test'])} "
            f"/ {_number(g['classifier_dprime_train_vs_test'])}; precision / recall of real training slices: "
            f"{_number(g['precision_train_subset'])} / {_number(g['recall_train_subset'])}"
        )
    return "\n".join(lines) + "\n"


def figure(results: dict[str, Any], work: Path, demo: Path, output: Path, columns: int = 6) -> None:
    """Real test slices above each design's samples at the same slice positions (seeded, one sample a column)."""
    sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from readme_figure import load_parts, make_panels

    from monai_vqbrain.utils import atomic_path

    rows: list[tuple[str, torch.Tensor]] = []
    for row in results["designs"]:
        overrides = {key.split("#", 1)[1]: json.loads(value) for key, value in row["overrides"].items()
                     if key.startswith("network_def#")}
        options = argparse.Namespace(bundle_root=work / row["design"], ckpt_dir=None, dataset_dir=demo,
                                     image_size=128, network=overrides, config=list(row["configs"][1:]))
        with torch.no_grad():
            panels = make_panels(load_parts(options), columns, seed=0)
        if not rows:
            rows.append(("real test slices", panels["real"]))
        rows.append((f"{row['design']}: {row['description']}", panels["generated"]))
    cell = 1.2
    plot = plt.figure(figsize=(columns * cell + 0.3, len(rows) * (cell + 0.18)))
    for r, (label, images) in enumerate(rows):
        for c in range(columns):
            axis = plot.add_subplot(len(rows), columns, r * columns + c + 1)
            axis.imshow(images[c].numpy(), cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
            axis.set_xticks([])
            axis.set_yticks([])
            if c == 0:
                axis.set_title(label, fontsize=7, loc="left")
    plot.tight_layout(pad=0.3)
    with atomic_path(output, overwrite=True) as tmp:
        plot.savefig(tmp, dpi=100, format="png", facecolor="white")
    plt.close(plot)


def main(argv: list[str] | None = None) -> int:
    args = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    args.add_argument("--work-dir", type=Path, required=True, help="bundle roots of the designs and the demo data")
    args.add_argument("--prior-budget", type=float, default=480.0, help="seconds of prior training a design")
    args.add_argument("--designs", nargs="*", default=list("abcde"), help="which designs to run (default: all)")
    args.add_argument("--vocabulary", type=int, default=None, help="the codebook size of d and e (default: the "
                      "better of b and c by the classifier's d')")
    args.add_argument("--output", type=Path, default=REPO_ROOT / "benchmarks" / "results")
    args.add_argument("--figure", type=Path, default=None, help="the figure to write (default: none)")
    opts = args.parse_args(argv)

    work, demo = opts.work_dir.resolve(), opts.work_dir.resolve() / "demo"
    work.mkdir(parents=True, exist_ok=True)
    rows: dict[str, dict[str, Any]] = {}
    vocabulary = opts.vocabulary
    for name in opts.designs:
        if name in "de" and vocabulary is None:
            if not {"b", "c"} <= set(rows):
                raise SystemExit("designs d and e need b and c first, or --vocabulary")
            better = min(("b", "c"), key=lambda n: rows[n]["generation"]["classifier_dprime_generated_vs_test"])
            vocabulary = int(designs(None)[better].overrides["network_def#num_embeddings"])
            print(f"d and e use the vocabulary of design {better}: {vocabulary} codes", flush=True)
        rows[name] = run_design(designs(vocabulary)[name], work, demo, opts.prior_budget)

    results = {
        "machine": (f"{platform.processor() or platform.machine()}, torch {torch.__version__}, CPU capability "
                    f"{torch.backends.cpu.get_cpu_capability()}, {torch.get_num_threads()} torch thread(s), "
                    f"{len(os.sched_getaffinity(0))} core(s) available"),
        "prior_budget_seconds": opts.prior_budget,
        "vocabulary_of_d_and_e": vocabulary,
        "designs": list(rows.values()),
    }
    opts.output.mkdir(parents=True, exist_ok=True)
    (opts.output / "latent_study.json").write_text(json.dumps(results, indent=1))
    (opts.output / "latent_study.md").write_text(markdown(results))
    print(markdown(results))
    if opts.figure:
        figure(results, work, demo, opts.figure)
        print(f"wrote {opts.figure}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
