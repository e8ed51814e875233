"""``python -m sedlib COMMAND ...``: the small CLI that the Snakemake rules call.

Each command lives in the module that does the work; the module defines
``configure_<command>(parser) -> run`` (command name with '-' as '_'), which adds the command's arguments
to ``parser`` and returns the function that runs it on the parsed namespace. Modules are imported only
when their command runs, so ``--help`` and light commands stay fast (no torch import).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

COMMANDS: dict[str, tuple[str, str]] = {
    "synthesize": ("sedlib.data.synth", "generate an embedded synthetic dataset, DESED- or MAESTRO-like (44.1 kHz)"),
    "chunk-maestro": ("sedlib.data.chunks", "cut MAESTRO Real development recordings into the baseline's 10 s chunks"),
    "download": ("sedlib.data.download", "fetch an archive over HTTP(S) with resume and sha256 check; extract it"),
    "resample": ("sedlib.data.resample", "convert a split's audio to mono at the target rate; write durations"),
    "check-data": ("sedlib.data.check", "list missing, unlisted and unreadable audio of local datasets; rates, hours"),
    "validate-metadata": ("sedlib.data.metadata", "check a split's DESED-format metadata against its audio"),
    "split-weak": ("sedlib.data.metadata", "seeded train/validation partition of a weakly labelled split"),
    "cache-features": ("sedlib.features.cache", "compute both frontends' mel features of a split into .npy caches"),
    "pretrain-backbone": ("sedlib.models.pretrain", "train the tiny ATST-Frame on the clip-tagging split"),
    "fetch-backbone": ("sedlib.models.checkpoint", "fetch and verify a backbone checkpoint (path or url + sha256)"),
    "cache-embeddings": ("sedlib.features.embeddings", "cache frozen backbone frame embeddings of a split"),
    "train": ("sedlib.training.run", "train stage 1 or stage 2 (resumes from last.ckpt)"),
    "predict-logits": ("sedlib.pseudo.predict", "strong logits of one model for every clip of the training splits"),
    "average-pseudo-labels": ("sedlib.pseudo.ensemble", "average members' logits into soft pseudo-labels"),
    "score": ("sedlib.evaluation.scoring", "write sed_scores_eval score tables of a model (or the ensemble) on the evaluation splits"),
    "evaluate": ("sedlib.evaluation.metrics", "PSDS1/PSDS2, CIs, per-class, F1, psds_eval cross-check -> JSON"),
    "tune-csebbs": ("sedlib.evaluation.csebbs", "tune cSEBBs post-processing per class on a validation split (extra)"),
    "apply-csebbs": ("sedlib.evaluation.csebbs", "post-process a score folder with tuned cSEBBs (optional extra)"),
    "plot": ("sedlib.evaluation.plots", "PSD-ROC curves and per-clip activity plots"),
    "infer": ("sedlib.inference", "detect events in any audio file(s) with a trained checkpoint"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m sedlib", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (_, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    known, rest = parser.parse_known_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if known.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    module_name, help_text = COMMANDS[known.command]
    module = importlib.import_module(module_name)
    command_parser = argparse.ArgumentParser(prog=f"python -m sedlib {known.command}", description=help_text)
    run = getattr(module, f"configure_{known.command.replace('-', '_')}")(command_parser)
    args = command_parser.parse_args(rest)
    try:
        return int(run(args) or 0)
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        # Library errors carry the file, field or line and what was expected: show them without a traceback.
        if known.verbose:
            raise
        print(f"sedlib {known.command}: error: {exc}", file=sys.stderr)
        return 2
