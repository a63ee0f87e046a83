"""`l2s eval`: accuracy × tokens × budget for every variant, with plots and a calibration for the server."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from l2s.atomic import write_text_atomic
from l2s.flags import add_recipe_flags, recipe_overrides
from l2s.generation import EngineSettings
from l2s.jsonl import read_json
from l2s.tasks import PromptPolicy


class EvalOptions(BaseModel):
    """Everything one `l2s eval` run is given (the flags below; distill's quick evaluations build one too)."""

    model_config = ConfigDict(extra="forbid")

    models: list[str] = Field(min_length=1)
    out: str
    offline: bool = False
    base_url: str | None = None
    task: str = "lab"
    split: str = "test"
    system_prompt: str | None = None
    instruction: str | None = None
    budgets: str = "none"
    efforts: str = ""
    samples: int = Field(1, ge=1)
    temperature: float | None = Field(None, ge=0)
    num_problems: int | None = Field(None, ge=1)
    max_tokens: int = Field(512, ge=1)
    reference: str | None = None
    concurrency: int = Field(16, ge=1)
    api_key: str = "unused"
    seed: int = 0
    calibrate: bool = False
    engine: EngineSettings = Field(default_factory=EngineSettings)

    @property
    def prompt(self) -> PromptPolicy:
        return PromptPolicy(system_prompt=self.system_prompt, instruction=self.instruction)


ENGINE_FLAGS_SKIPPED = ("max_num_seqs", "seed")  # the engine's seed is the run's --seed


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        action="append",
        required=True,
        dest="models",
        metavar="M",
        help="a model directory (--offline) or a served model name (--base-url); repeat for more",
    )
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--base-url", help="an OpenAI-compatible server, e.g. http://127.0.0.1:8000/v1")
    mode.add_argument("--offline", action="store_true", help="run the vLLM engine directly on model directories")
    parser.add_argument(
        "--task",
        default="lab",
        help="lab, lab:LEVEL, jsonl:PATH or hf:NAME[:CONFIG][@SPLIT] (a hub id in the local cache, or a "
        "save_to_disk directory) (default: %(default)s)",
    )
    parser.add_argument(
        "--split",
        default="test",
        help="the lab's split, and an hf dataset's when the task names none (default: %(default)s)",
    )
    parser.add_argument("--system-prompt", default=None, help="a system message sent before every question")
    parser.add_argument(
        "--instruction",
        default=None,
        help="text appended to every question, e.g. DeepSeek-R1's 'Please reason step by step, and put your final "
        "answer within \\boxed{}.'",
    )
    parser.add_argument(
        "--budgets", default="none", help="comma-separated thinking budgets; 'none' = unbudgeted (default: %(default)s)"
    )
    parser.add_argument("--efforts", default="", help="comma-separated reasoning_effort levels (API mode only)")
    parser.add_argument("--samples", type=int, default=1, help="samples per problem, K (default: %(default)s)")
    parser.add_argument(
        "--temperature",
        type=float,
        default=None,
        help="sampling temperature (default: 0 for one sample, 1 for several)",
    )
    parser.add_argument(
        "--num-problems", type=int, default=None, help="first N problems of the task (lab: default 500)"
    )
    parser.add_argument("--max-tokens", type=int, default=512, help="completion cap per sample (default: %(default)s)")
    parser.add_argument(
        "--reference",
        default=None,
        help="the variant AES is measured against (default: the first model whose card says role long, else the first)",
    )
    parser.add_argument("--concurrency", type=int, default=16, help="API requests in flight (default: %(default)s)")
    parser.add_argument("--api-key", default="unused", help="API key for --base-url")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--calibrate", action="store_true", help="also write calibration.json for `l2s serve --calibration`"
    )
    parser.add_argument("--out", required=True, help="output directory (rerunning with the same arguments resumes)")
    engine = parser.add_argument_group("offline engine (default: from the model and the hardware)")
    add_recipe_flags(engine, EngineSettings, skip=ENGINE_FLAGS_SKIPPED)


def _conditions(args: EvalOptions):
    from eval.runner import Condition

    conditions = []
    for item in filter(None, (part.strip() for part in args.budgets.split(","))):
        if item.lower() in ("none", "-1", "unlimited"):
            conditions.append(Condition())
        elif item.isdigit():
            conditions.append(Condition(budget=int(item)))
        else:
            raise SystemExit(f"--budgets: {item!r} is not a non-negative integer or 'none'")
    for effort in filter(None, (part.strip() for part in args.efforts.split(","))):
        if effort not in ("none", "low", "medium", "high"):
            raise SystemExit(f"--efforts: {effort!r} is not one of none, low, medium, high")
        if args.offline:
            raise SystemExit("--efforts needs a server (--base-url): effort levels are the server's mapping")
        conditions.append(Condition(effort=effort))
    if not conditions:
        raise SystemExit("nothing to evaluate: give --budgets and/or --efforts")
    return conditions


def _reference(args: EvalOptions, names: list[str]) -> str:
    from l2s.cards import read_card

    if args.reference:
        return args.reference
    for model, name in zip(args.models, names):
        if ((read_card(model) if Path(model).is_dir() else None) or {}).get("role") == "long" or name == "lab-long":
            return name
    return names[0]


def run(args: argparse.Namespace) -> int:
    engine = EngineSettings(**recipe_overrides(args, EngineSettings, skip=ENGINE_FLAGS_SKIPPED))
    options = {name: getattr(args, name) for name in EvalOptions.model_fields if name != "engine"}
    return evaluate(EvalOptions(**options, engine=engine))


def evaluate(args: EvalOptions) -> int:
    """The public entry point (distill calls it for quick evaluations)."""
    from eval.calibration import build_calibration, write_calibration
    from eval.report import build_results, plot, write_report
    from eval.runner import EvalSettings, load_done, model_name, model_version, run_api, run_offline
    from l2s.tasks import load_task

    conditions = _conditions(args)
    if args.offline:
        from l2s.models import ModelNotFound, resolve_model

        for model in args.models:
            try:
                resolve_model(model)
            except ModelNotFound as error:
                raise SystemExit(f"--offline: {error}") from None
    try:
        problems = load_task(args.task, args.split, args.num_problems, seed=args.seed)
    except ValueError as error:
        raise SystemExit(f"--task: {error}") from None
    temperature = args.temperature if args.temperature is not None else (0.0 if args.samples == 1 else 1.0)
    settings = EvalSettings(
        models=args.models,
        problems=problems,
        conditions=conditions,
        samples=args.samples,
        temperature=temperature,
        max_tokens=args.max_tokens,
        seed=args.seed,
        concurrency=args.concurrency,
        base_url=args.base_url,
        api_key=args.api_key,
        prompt=args.prompt,
        engine=args.engine,
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {
        "task": args.task,
        "num_problems": len(problems),
        "samples": args.samples,
        "temperature": temperature,
        "max_tokens": args.max_tokens,
        "seed": args.seed,
        "mode": "offline" if args.offline else "api",
        "base_url": args.base_url,
        "models": args.models,
        "conditions": [c.label for c in conditions],
    }
    # only when set, so runs from before these options resume as they are
    meta.update({k: v for k, v in args.prompt.model_dump().items() if v})
    if args.split != "test":
        meta["split"] = args.split
    if args.engine.dtype != "auto":  # the only engine setting that changes what is sampled
        meta["dtype"] = args.engine.dtype
    arguments_path = out / "arguments.json"
    # Models and conditions may be added to a run (its samples are keyed by both); anything else would mix.
    addable = ("models", "conditions")
    if arguments_path.is_file() and {
        k: v for k, v in read_json(arguments_path, "eval arguments file").items() if k not in addable
    } != {k: v for k, v in meta.items() if k not in addable}:
        raise SystemExit(f"{out} holds a run with other arguments; use a new --out (or delete it)")
    write_text_atomic(arguments_path, json.dumps(meta, indent=2) + "\n")
    samples_path = out / "samples.jsonl"
    (run_offline if args.offline else run_api)(settings, samples_path)

    names = [model_name(model) for model in args.models]
    wanted = {(model_name(m), model_version(m), c.label) for m in args.models for c in conditions}
    ids = {p.id for p in problems}
    records = [
        r
        for r in load_done(samples_path).values()
        if (r["model"], r.get("model_version"), r["condition"]) in wanted
        and r["problem_id"] in ids
        and r["sample"] < args.samples
    ]
    # in one order whatever order they were written in (a resumed run writes them in another): the same figures
    records.sort(key=lambda r: (r["model"], r["condition"], r["problem_id"], r["sample"]))
    meta["reference"] = _reference(args, names)
    results = build_results(records, names, meta["reference"])
    write_report(out, results, meta)
    plot(out, results)
    if args.calibrate:
        write_calibration(out / "calibration.json", build_calibration(records, results, meta))
    print((out / "report.md").read_text())
    return 0
