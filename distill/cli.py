"""`l2s distill {merge,shortest,dpo,rl}`: make short variants from a long-CoT model.

Each reads an optional YAML recipe (`--recipe configs/distill/NAME.yaml`); flags override it; the recipe is
validated before any weights load. Outputs are Hugging Face model directories with `card.json`, written
atomically. `--register` adds the result to the server's registry so `l2s serve` hosts it next start.
"""

from __future__ import annotations

import argparse
from pathlib import Path

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def _common(parser: argparse.ArgumentParser, recipe_name: str) -> None:
    parser.add_argument(
        "--recipe",
        default=None,
        help=f"YAML recipe (the lab variant's: configs/distill/{recipe_name}.yaml); flags override it",
    )
    parser.add_argument("--out", required=True, help="output model directory")
    parser.add_argument(
        "--register",
        action="store_true",
        help="add the result to $L2S_HOME/registered_variants.yaml (default: ./), so `l2s serve` hosts it",
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    methods = parser.add_subparsers(dest="method", required=True, metavar="METHOD")
    merge = methods.add_parser(
        "merge",
        help="average a long and a short model's weights (mergekit)",
        description="Merge a long-CoT and a short-CoT model with mergekit (k1.5 model merging).",
    )
    merge.add_argument("--long", default=None, help="the long-CoT model directory")
    merge.add_argument("--short", default=None, help="the short-CoT model directory")
    merge.add_argument(
        "--method",
        dest="merge_method",
        default=None,
        choices=["linear", "ties", "dare_ties", "slerp", "task_arithmetic"],
        help="default: linear",
    )
    weights = merge.add_mutually_exclusive_group()
    weights.add_argument("--weight", type=float, default=None, help="weight of the long model (default 0.5)")
    weights.add_argument("--sweep", default=None, help="comma-separated weights: one model per weight")
    merge.add_argument("--base", default=None, help="shared ancestor for ties/dare_ties/task_arithmetic")
    merge.add_argument("--seed", type=int, default=None)
    merge.add_argument("--eval", action="store_true", help="evaluate the merged model(s) on the lab (offline)")
    merge.add_argument("--eval-problems", type=int, default=200, help="problems for --eval (default: %(default)s)")
    _common(merge, "merge")
    merge.set_defaults(method_handler=_merge)

    from distill.dpo import DPORecipe
    from distill.shortest import ShortestRecipe
    from l2s.flags import add_recipe_flags

    shortest = methods.add_parser(
        "shortest",
        help="shortest rejection sampling + SFT (TRL)",
        description="Fine-tune the long model on its own shortest correct samples.",
    )
    add_recipe_flags(shortest, ShortestRecipe)
    _common(shortest, "shortest")
    shortest.set_defaults(method_handler=_shortest)

    dpo = methods.add_parser(
        "dpo",
        help="DPO on shortest-vs-longer pairs (TRL)",
        description="DPO with chosen = shortest correct, rejected = wrong and longer or "
        "correct and >= 1.5x longer; the long model is the reference.",
    )
    add_recipe_flags(dpo, DPORecipe)
    _common(dpo, "dpo")
    dpo.set_defaults(method_handler=_dpo)
    _add_rl(methods)
    _add_rollout_server(methods)


def _add_rollout_server(methods) -> None:
    from l2s.flags import add_recipe_flags
    from l2s.generation import EngineSettings

    server = methods.add_parser(
        "rollout-server",
        help="serve rollouts to `distill rl --rollout-server` from other GPUs (vLLM's server)",
        description="Start vLLM's OpenAI server on MODEL for RL's rollouts: `distill rl --rollout-server "
        "http://HOST:PORT` samples from it and loads each checkpoint into it by path (a shared filesystem).",
    )
    server.add_argument("--model", required=True, help="the model RL starts from (a directory or a hub id)")
    server.add_argument("--host", default="127.0.0.1", help="default: %(default)s")
    server.add_argument("--port", type=int, default=8001, help="default: %(default)s")
    add_recipe_flags(server.add_argument_group("engine (default: from the model and the hardware)"), EngineSettings)
    server.set_defaults(method_handler=_rollout_server)


def _rollout_server(args: argparse.Namespace) -> int:
    from distill.rollout_server import serve
    from l2s.flags import recipe_overrides
    from l2s.generation import EngineSettings

    serve(args.model, args.port, args.host, EngineSettings(**recipe_overrides(args, EngineSettings)))
    return 0


def _add_rl(methods) -> None:
    from distill.rl import RLRecipe
    from l2s.flags import add_recipe_flags

    rl = methods.add_parser(
        "rl",
        help="k1.5 online mirror-descent RL with the length penalty",
        description="Iterations of: sample k responses per problem from the current policy "
        "(vLLM), reward correctness + w * length reward, minimise the OPMD surrogate, "
        "push the weights into the engine. Checkpoints every iteration; the kept checkpoint is chosen on "
        "validation problems. Every recipe field is a flag.",
    )
    add_recipe_flags(rl, RLRecipe)
    rl.add_argument(
        "--resume",
        action="store_true",
        help="continue from the last complete checkpoint (also: extend a run to more --iterations, curriculum off)",
    )
    rl.add_argument(
        "--stop-after",
        type=int,
        default=None,
        help="stop after this many iterations, as an interruption would (resume with --resume)",
    )
    _common(rl, "rl")
    rl.set_defaults(method_handler=_rl)


def _rl(args: argparse.Namespace) -> int:
    from distill.rl import RLRecipe, run
    from l2s.flags import recipe_overrides

    recipe = RLRecipe.load(args.recipe, recipe_overrides(args, RLRecipe))
    output = run(recipe, Path(args.out), resume=args.resume, stop_after=args.stop_after)
    if args.register and output is not None:
        register([output])
    return 0


def register(model_dirs: list[Path]) -> None:
    from l2s.distributed import is_main
    from l2s.registry import register_variant

    if not is_main():  # under `accelerate launch`: once
        return
    for model_dir in model_dirs:
        register_variant(model_dir.name, model_dir)
        print(f"registered {model_dir.name}: `l2s serve` hosts it next start")


def _merge(args: argparse.Namespace) -> int:
    from distill.merge import MergeRecipe, run

    sweep = [float(w) for w in args.sweep.split(",")] if args.sweep else None
    recipe = MergeRecipe.load(
        args.recipe,
        {
            "long": args.long,
            "short": args.short,
            "method": args.merge_method,
            "weight": args.weight,
            "sweep": sweep,
            "base": args.base,
            "seed": args.seed,
        },
    )
    out = Path(args.out)
    outputs = run(recipe, out)
    if args.eval:
        from eval.cli import EvalOptions, evaluate

        evaluate(
            EvalOptions(
                models=[recipe.long, *map(str, outputs), recipe.short],
                offline=True,
                num_problems=args.eval_problems,
                max_tokens=768,
                reference=Path(recipe.long).name,
                concurrency=1,
                out=str(out.parent / f"{out.name}-eval"),
            )
        )
    if args.register:
        register(outputs)
    return 0


def _trained(args: argparse.Namespace, module: str, recipe_class: str) -> int:
    import importlib

    from l2s.flags import recipe_overrides

    method = importlib.import_module(f"distill.{module}")
    recipe_type = getattr(method, recipe_class)
    recipe = recipe_type.load(args.recipe, recipe_overrides(args, recipe_type))
    output = method.run(recipe, Path(args.out))
    if args.register:
        register([output])
    return 0


def _shortest(args: argparse.Namespace) -> int:
    return _trained(args, "shortest", "ShortestRecipe")


def _dpo(args: argparse.Namespace) -> int:
    return _trained(args, "dpo", "DPORecipe")


def run(args: argparse.Namespace) -> int:
    from distill.recipe import RecipeError
    from l2s.models import ModelNotFound
    from l2s.registry import check_variant_name

    if getattr(args, "register", False):  # before any work: the output's name is the served model id
        try:
            check_variant_name(Path(args.out).name)
        except ValueError as error:
            raise SystemExit(f"--register: {error}") from None
    try:
        return args.method_handler(args)
    except (RecipeError, ModelNotFound) as error:
        raise SystemExit(str(error)) from None
