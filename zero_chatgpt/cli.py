"""`zero-chatgpt`: run the pipeline, serve it as a Prefect deployment, show the resolved config."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from zero_chatgpt.config import ConfigError, config_to_yaml, load_config, overrides_from_set_options, preset_names
from zero_chatgpt.prefect_settings import apply_prefect_defaults


def _add_config_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--preset",
        default="tiny",
        help=f"preset name ({', '.join(preset_names())}) or a YAML file (may say `base: tiny`)",
    )
    parser.add_argument(
        "--set",
        dest="set_options",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one config value, e.g. --set pretrain.optim.max_steps=200 (repeatable)",
    )


def _preset_parameters(preset: str) -> dict[str, str]:
    """The flow's `preset` for a shipped preset, its `preset_file` (an absolute path, so the flow finds it wherever
    it runs) for a YAML file."""
    path = Path(preset)
    return (
        {"preset_file": str(path.resolve())}
        if path.suffix in (".yaml", ".yml") or path.is_file()
        else {"preset": preset}
    )


def _whole_lists(overrides: dict[str, Any], resolved: dict[str, Any]) -> dict[str, Any]:
    """`overrides` with each list given whole, from the resolved config: `--set data.sources.0.limit=3` edits one
    entry, but the flow's parameters take lists whole (that is what the UI form can show)."""
    whole = {}
    for key, value in overrides.items():
        if isinstance(resolved.get(key), list):
            whole[key] = resolved[key]
        elif isinstance(value, dict) and isinstance(resolved.get(key), dict):
            whole[key] = _whole_lists(value, resolved[key])
        else:
            whole[key] = value
    return whole


def _cmd_run(args: argparse.Namespace) -> int:
    # Resolve the whole config here first: a bad key fails before Prefect or any stage starts.
    resolved = load_config(args.preset, set_options=args.set_options)
    from prefect.settings import PREFECT_API_URL

    from zero_chatgpt.artifacts import read_manifest, write_json_atomic
    from zero_chatgpt.console import print_summary
    from zero_chatgpt.flows.pipeline import (  # Prefect is imported only when needed
        PIPELINE_STAGES,
        cached_route,
        zero_chatgpt,
    )
    from zero_chatgpt.prefect_settings import terminal_logs_without_tracebacks

    terminal_logs_without_tracebacks()  # this command prints the failure in one line and keeps the traceback

    for name in [args.until, *args.force]:
        if name is not None and name not in PIPELINE_STAGES:
            raise ConfigError(f"unknown stage {name!r}; stages of this pipeline: {list(PIPELINE_STAGES)}")
    root = Path(args.root).resolve()
    # Without a configured server every run starts a temporary one; a run with nothing to build skips it.
    latest = None if PREFECT_API_URL.value() else cached_route(resolved, root, args.until, args.force)
    if latest is not None:
        write_json_atomic(root / "latest.json", latest)
        print(f"every stage is cached in {root}: nothing to run, so no Prefect server was started")
    else:
        latest = zero_chatgpt(
            **_preset_parameters(args.preset),
            overrides=_whole_lists(overrides_from_set_options(args.set_options), resolved.model_dump(mode="json")),
            root=str(root),
            **({"until": args.until} if args.until else {}),
            force=args.force,
        )
    metrics = {stage: (read_manifest(entry["path"]) or {}).get("metrics", {}) for stage, entry in latest.items()}
    print_summary(latest, metrics, root)
    print(f"latest: {root / 'latest.json'}")
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from zero_chatgpt.serving import ServeRefused, serve_pipeline

    try:
        serve_pipeline(args.name, args.root)
    except ServeRefused as refusal:
        print(f"zero-chatgpt serve: {refusal}", file=sys.stderr)
        return 1
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    from zero_chatgpt.artifacts import MANIFEST, artifact_problems, read_manifest

    root = Path(args.root)
    artifacts = sorted(
        manifest.parent for manifest in root.glob(f"*/*/{MANIFEST}") if not manifest.parent.name.startswith(".")
    )
    if not artifacts:
        raise FileNotFoundError(f"{root}: no artifacts (no <stage>/<fingerprint>/{MANIFEST})")
    damaged = 0
    for path in artifacts:
        manifest = read_manifest(path)
        problems = (
            ["manifest.json is not valid JSON"]
            if manifest is None
            else artifact_problems(path, manifest, "deep" if args.deep else "sizes")
        )
        damaged += bool(problems)
        print(
            f"{'DAMAGED' if problems else 'ok':<8}{path.relative_to(root)}"
            + (f": {'; '.join(problems)}" if problems else "")
        )
    print(
        f"{len(artifacts) - damaged} of {len(artifacts)} artifacts match their manifests"
        + ("" if args.deep else " (sizes; --deep also compares content hashes)")
    )
    return 1 if damaged else 0


def _cmd_config_show(args: argparse.Namespace) -> int:
    config = load_config(args.preset, set_options=args.set_options)
    if args.json:
        print(json.dumps(config.model_dump(mode="json"), indent=2, ensure_ascii=False))
    else:
        print(config_to_yaml(config), end="")
    return 0


def model_dir_of(reference: str) -> Path:
    """`ROOT/latest:STAGE` -> that stage's artifact dir in ROOT/latest.json; anything else is a path as given."""
    root, sep, stage = reference.rpartition("latest:")
    if not sep or "/" in stage:
        return Path(reference)
    latest_file = Path(root or ".") / "latest.json"
    try:
        latest = json.loads(latest_file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(
            f"{reference}: {latest_file} does not exist (no run has finished a stage there)"
        ) from None
    if stage not in latest:
        raise FileNotFoundError(
            f"{reference}: the newest run in {latest_file} has no stage {stage!r}; it has {sorted(latest)}"
        )
    return Path(latest[stage]["path"])


def _cmd_chat(args: argparse.Namespace) -> int:
    from zero_chatgpt.model.chat import ChatSession, load_chat_model

    model, tokenizer = load_chat_model(model_dir_of(args.model), args.device)
    session = ChatSession(model, tokenizer, args.max_new_tokens, args.temperature, args.top_p, args.system, args.seed)
    interactive = sys.stdin.isatty()
    if interactive:
        print("zero-chatgpt chat: /reset forgets the conversation, /exit or Ctrl-D quits", file=sys.stderr)
    while True:
        if interactive:
            print("> ", end="", flush=True)
        line = sys.stdin.readline()
        if not line:  # EOF
            if interactive:
                print()
            return 0
        text = line.strip()
        if not text:
            continue
        if text == "/exit":
            return 0
        if text == "/reset":
            session.reset()
            continue
        session.reply(text, on_text=lambda piece: print(piece, end="", flush=True))
        print(flush=True)


def _cmd_generate(args: argparse.Namespace) -> int:
    from zero_chatgpt.model.chat import generate_replies, load_chat_model, read_prompts

    prompts = read_prompts(args.prompts)
    model, tokenizer = load_chat_model(model_dir_of(args.model), args.device)
    rows = generate_replies(
        model, tokenizer, prompts, args.max_new_tokens, args.temperature, args.top_p, args.batch_size, args.seed
    )
    lines = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    if args.out:
        Path(args.out).write_text(lines, encoding="utf-8")
        print(f"wrote {len(rows)} answers to {args.out}", file=sys.stderr)
    else:
        sys.stdout.write(lines)
    return 0


def _add_sampling_options(parser: argparse.ArgumentParser, temperature: float) -> None:
    parser.add_argument(
        "--model",
        required=True,
        help="a model dir (e.g. runs/ppo/<fingerprint>), or ROOT/latest:STAGE for the model that "
        "stage wrote in the newest run under ROOT (e.g. runs/latest:ppo)",
    )
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--temperature", type=float, default=temperature, help="0 = greedy")
    parser.add_argument("--top-p", type=float, default=0.9 if temperature > 0 else 1.0)
    parser.add_argument("--seed", type=int, default=None if temperature > 0 else 0)


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    parser = argparse.ArgumentParser(prog="zero-chatgpt", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run the pipeline locally (cached stages are reused)")
    _add_config_options(run)
    run.add_argument("--root", default="runs", help="artifact root directory (default: ./runs)")
    run.add_argument("--until", default=None, metavar="STAGE", help="stop after this stage")
    run.add_argument(
        "--force",
        action="append",
        default=[],
        metavar="STAGE",
        help="rebuild this stage even if its artifact exists (repeatable)",
    )
    run.set_defaults(handler=_cmd_run)

    serve = commands.add_parser("serve", help="serve flow `zero-chatgpt` as deployment `full`")
    serve.add_argument("--name", default="full", help="deployment name (default: full)")
    serve.add_argument(
        "--root",
        default=None,
        help="default artifact root of deployment runs (default: the deployment's current one, else ./runs)",
    )
    serve.set_defaults(handler=_cmd_serve)

    chat = commands.add_parser("chat", help="chat with a trained model (streams tokens; reads stdin until EOF)")
    _add_sampling_options(chat, temperature=0.7)
    chat.add_argument("--system", default=None, help="an optional system message")
    chat.set_defaults(handler=_cmd_chat)

    generate = commands.add_parser("generate", help="answer every prompt of a file (.txt lines or .jsonl `prompt`)")
    _add_sampling_options(generate, temperature=0.0)
    generate.add_argument("--prompts", required=True, help="prompt file")
    generate.add_argument("--out", default=None, help="write JSONL here instead of stdout")
    generate.add_argument("--batch-size", type=int, default=16)
    generate.set_defaults(handler=_cmd_generate)

    verify = commands.add_parser("verify", help="check every artifact under a root against its manifest")
    verify.add_argument("root", nargs="?", default="runs", help="artifact root directory (default: ./runs)")
    verify.add_argument("--deep", action="store_true", help="also compare content hashes (reads every file)")
    verify.set_defaults(handler=_cmd_verify)

    config = commands.add_parser("config", help="inspect configuration")
    config_commands = config.add_subparsers(dest="config_command", required=True)
    show = config_commands.add_parser("show", help="print the resolved config")
    _add_config_options(show)
    show.add_argument("--json", action="store_true", help="print JSON instead of YAML")
    show.set_defaults(handler=_cmd_config_show)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `zero-chatgpt` command."""
    apply_prefect_defaults()
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except ConfigError as err:
        print(f"zero-chatgpt: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("zero-chatgpt: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # one line for the person at the terminal; the whole story in a file
        if os.environ.get("ZERO_CHATGPT_TRACEBACK"):
            raise
        log = _write_traceback(args, err)
        print(
            f"zero-chatgpt: {args.command} failed: {type(err).__name__}: {_first_line(err)}\n"
            f"  full traceback: {log} (or set ZERO_CHATGPT_TRACEBACK=1)",
            file=sys.stderr,
        )
        return 1


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else "(no message)"


def _write_traceback(args: argparse.Namespace, err: BaseException) -> Path:
    """The failure's full traceback in `<root>/logs/` for runs (beside the artifacts), else the temp dir."""
    import tempfile
    import time
    import traceback

    folder = Path(args.root) / "logs" if args.command == "run" else Path(tempfile.gettempdir())
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        folder = Path(tempfile.gettempdir())
    path = folder / f"zero-chatgpt-{args.command}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.txt"
    path.write_text("".join(traceback.format_exception(err)), encoding="utf-8")
    return path


if __name__ == "__main__":
    sys.exit(main())
