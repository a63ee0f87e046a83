"""The `l2s` command line: one entry point, one subcommand per job.

Each subcommand imports its module only when it runs, so `l2s --help` is instant and a subcommand never pays
for another's dependencies (vLLM, TRL, mergekit load slowly).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from l2s.jsonl import CorruptFile


def _lab_build(args: argparse.Namespace) -> int:
    from l2s.lab.build import build

    build(
        Path(args.out), Path(args.recipe), force_measure=args.remeasure, seed=args.seed,
        checkpoint_every=args.checkpoint_every,
    )  # fmt: skip
    return 0


def _lab_errors(args: argparse.Namespace) -> int:
    from l2s.atomic import write_text_atomic
    from l2s.lab.errors import error_table, render

    try:
        table = render(error_table(Path(args.samples)))
    except (OSError, ValueError, KeyError) as error:  # no such file, not JSON lines, not a lab eval's samples
        print(f"l2s: error: {args.samples}: {error!r}", file=sys.stderr)
        return 2
    if args.out:
        write_text_atomic(Path(args.out), table + "\n")
    print(table)
    return 0


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a positive integer")
    return value


def _add_lab(subparsers) -> None:
    DEFAULT_RECIPE = Path(__file__).resolve().parents[1] / "configs" / "lab.yaml"  # (l2s.lab.build imports torch)

    lab = subparsers.add_parser("lab", help="the embedded reasoning lab (task, tiny models)")
    lab_commands = lab.add_subparsers(dest="lab_command", required=True, metavar="COMMAND")
    build = lab_commands.add_parser(
        "build",
        help="train lab-base, lab-long and lab-short from scratch and measure them",
        description="Train the shared base, fine-tune it into lab-long (long CoT) and lab-short (no CoT), and "
        "measure both on held-out test problems with the vLLM engine. Stages whose recipe has not changed are "
        "reused from the output directory; a stage killed midway resumes from its last checkpoint.",
    )
    build.add_argument("--out", default="models", help="models directory (default: %(default)s)")
    build.add_argument("--recipe", default=str(DEFAULT_RECIPE), help="lab recipe YAML (default: configs/lab.yaml)")
    build.add_argument(
        "--seed", type=int, default=None, help="override the recipe's seed (problems, tokenizer, training)"
    )
    build.add_argument(
        "--checkpoint-every", type=_positive_int, default=100, metavar="STEPS",
        help="save a resumable checkpoint of the stage in training every this many steps (default: %(default)s)",
    )  # fmt: skip
    build.add_argument(
        "--remeasure", action="store_true", help="measure the models again even if their cards have figures"
    )
    build.set_defaults(handler=_lab_build)
    errors = lab_commands.add_parser(
        "errors",
        help="where wrong lab answers went wrong (first mistake by kind, per model and level)",
        description="Walk every wrong completion in an eval's samples.jsonl along the lab's worked sum and count "
        "its first mistake by kind: copy (a number copied wrong), column, total, answer, unfinished.",
    )
    errors.add_argument("samples", help="an eval's samples.jsonl (l2s eval --out DIR writes DIR/samples.jsonl)")
    errors.add_argument("--out", default=None, help="also write the table to this Markdown file")
    errors.set_defaults(handler=_lab_errors)


def _add_serve(subparsers) -> None:
    from server import cli as server_cli  # argparse only; the server's heavy imports happen in run()

    serve = subparsers.add_parser(
        "serve",
        help="serve the variants behind one OpenAI-compatible endpoint",
        description="Host every variant (each on its own vLLM engine) behind /v1/chat/completions, with "
        "per-request reasoning budgets (thinking_token_budget, reasoning_effort) and model='auto' routing.",
    )
    server_cli.add_arguments(serve)
    serve.set_defaults(handler=server_cli.run)


def _add_eval(subparsers) -> None:
    from eval import cli as eval_cli  # argparse only

    evaluate = subparsers.add_parser(
        "eval",
        help="accuracy x tokens x budget for every variant, with plots and a calibration",
        description="Evaluate variants through an OpenAI-compatible API (--base-url) or offline on the vLLM engine "
        "(--offline): accuracy with a 95%% interval, reasoning/answer tokens, tokens per correct answer, AES, "
        "budget adherence; writes results.json, samples.jsonl, report.md and two plots to --out.",
    )
    eval_cli.add_arguments(evaluate)
    evaluate.set_defaults(handler=eval_cli.run)


def _add_distill(subparsers) -> None:
    from distill import cli as distill_cli  # argparse only

    distill = subparsers.add_parser(
        "distill",
        help="make short variants from a long-CoT model (merge, shortest, dpo, rl)",
        description="The k1.5 long2short methods. Each writes a Hugging Face model directory with card.json.",
    )
    distill_cli.add_arguments(distill)
    distill.set_defaults(handler=distill_cli.run)


def _add_loadtest(subparsers) -> None:
    from clients import loadtest  # argparse only; locust runs in its own process

    parser = subparsers.add_parser(
        "loadtest",
        help="locust, headless, against a server (or one it spawns)",
        description="Streaming chat users with a mix of variants and budgets; writes locust's CSVs, summary.md "
        "and a latency/throughput plot. Loopback targets only; bounded in users, time and requests.",
    )
    loadtest.add_arguments(parser)
    parser.set_defaults(handler=loadtest.run)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="l2s",
        description="long2short: distill, serve and evaluate short-thinking variants of reasoning models.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_lab(subparsers)
    _add_serve(subparsers)
    _add_eval(subparsers)
    _add_distill(subparsers)
    _add_loadtest(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except CorruptFile as error:  # a file we wrote that does not read back: say which, and where, not a traceback
        print(f"l2s: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
