"""Command line: `python -m moe_runtime {make-checkpoint,download,generate,serve,router,loadgen,adapter-sync} ...`."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
from pathlib import Path

from moe_runtime.model.tensor_names import LAYOUTS


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "serve":
        from moe_runtime.serve.command import (
            main as serve_main,  # the HTTP layer pulls in fastapi/uvicorn: load it only here
        )

        return serve_main(argv[1:]) or 0
    if argv and argv[0] == "router":
        from moe_runtime.router.command import (
            main as router_main,
        )  # no torch: starts in a fraction of the time

        return router_main(argv[1:])
    if argv and argv[0] == "adapter-sync":  # a sidecar of vLLM and SGLang pods: no torch
        from moe_runtime.adapter_sync.command import main as adapter_sync_main

        return adapter_sync_main(argv[1:])
    if argv and argv[0] == "loadgen":
        from moe_runtime.tools.loadgen import main as loadgen_main

        return loadgen_main(argv[1:])
    # progress of s3:// downloads goes to stderr, away from what the commands print
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if argv and argv[0] == "download":  # without torch: quick to start, e.g. as an init container
        args = _download_parser().parse_args(argv[1:])
    else:
        args = _parser().parse_args(argv)
    return args.run(args)


def _parser() -> argparse.ArgumentParser:
    from moe_runtime.tools.checkpoint import (
        CheckpointSpec,  # torch: not for `loadgen` or `download`, which must start fast
    )

    parser = argparse.ArgumentParser(prog="python -m moe_runtime")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("serve", help="run the HTTP server (see `serve --help`)")
    commands.add_parser("router", help="run the inference router of a ModelDeployment (see `router --help`)")
    commands.add_parser(
        "loadgen", help="drive runtime servers and print a JSON summary (see `loadgen --help`)"
    )
    commands.add_parser("download", help="download an s3:// checkpoint (see `download --help`)")
    commands.add_parser(
        "adapter-sync",
        help="keep a vLLM/SGLang server's LoRA adapters equal to a list (see `adapter-sync --help`)",
    )

    make = commands.add_parser("make-checkpoint", help="write a random-weight checkpoint with a tokenizer")
    make.add_argument("--family", required=True, choices=["qwen2_moe", "qwen3_moe", "mixtral"])
    make.add_argument("--out", required=True)
    for field in dataclasses.fields(CheckpointSpec):
        if field.name == "family":
            continue
        flag = "--" + field.name.replace("_", "-")
        if field.type.startswith("bool"):
            make.add_argument(flag, action=argparse.BooleanOptionalAction, default=field.default)
        elif field.name == "layout":
            make.add_argument(flag, choices=LAYOUTS, default=field.default)
        elif field.name == "mlp_only_layers":
            make.add_argument(flag, type=int, nargs="*", default=[])
        else:
            make.add_argument(flag, type=_type_of(field.type), default=field.default)
    make.set_defaults(run=_make_checkpoint)

    gen = commands.add_parser("generate", help="generate text from a prompt")
    gen.add_argument("--model", required=True, help="checkpoint directory, or s3://bucket/prefix")
    _add_download_dir(gen)
    gen.add_argument("--prompt", required=True)
    gen.add_argument(
        "--chat", action="store_true", help="wrap the prompt as a user message in the chat template"
    )
    gen.add_argument("--max-tokens", type=int, default=16)
    gen.add_argument("--temperature", type=float, default=0.0)
    gen.add_argument("--top-p", type=float, default=1.0)
    gen.add_argument("--seed", type=int)
    gen.add_argument("--device")
    gen.add_argument("--dtype")
    gen.add_argument("--quantize", choices=["int8"])
    gen.add_argument("--window", type=int)
    gen.add_argument("--global-tokens", type=int, default=0)
    gen.add_argument("--lora", help="a PEFT LoRA adapter directory to generate with")
    gen.add_argument("--max-lora-rank", type=int, default=16, help="highest rank --lora may have")
    gen.add_argument("--json", action="store_true", help="print token ids and text as one JSON object")
    gen.set_defaults(run=_generate)
    return parser


def _download_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m moe_runtime download",
        description="Download an s3:// checkpoint into the cache and print its local directory",
    )
    parser.add_argument("--model", required=True, help="s3://bucket/prefix")
    _add_download_dir(parser)
    parser.add_argument(
        "--link",
        help="also make this path a symbolic link to the local directory: a fixed path for another engine to "
        "read, whatever folder the endpoint's copies live in",
    )
    parser.set_defaults(run=_download)
    return parser


def _add_download_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--download-dir",
        default=os.environ.get("MOE_RUNTIME_DOWNLOAD_DIR") or None,
        help="cache for s3:// checkpoints [env MOE_RUNTIME_DOWNLOAD_DIR]",
    )


def _type_of(annotation: str):
    return float if "float" in annotation else str if "str" in annotation else int


def _make_checkpoint(args) -> int:
    from moe_runtime.tools.checkpoint import CheckpointSpec, write_checkpoint

    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(CheckpointSpec)}
    values["mlp_only_layers"] = tuple(values["mlp_only_layers"])
    out = write_checkpoint(CheckpointSpec(**values), args.out)
    print(out)
    return 0


def _download(args) -> int:
    from moe_runtime.download.plan import is_s3_uri
    from moe_runtime.download.s3 import DownloadError, link_model_dir, local_model_dir

    if not is_s3_uri(args.model):
        print(f"--model {args.model!r}: not an s3:// URI", file=sys.stderr)
        return 2
    try:
        local = local_model_dir(args.model, args.download_dir)
    except DownloadError as err:
        logging.getLogger("moe_runtime.download.s3.s3").error("%s", err)
        return 1
    if args.link:
        link_model_dir(Path(args.link), Path(local))
    print(local)
    return 0


def _generate(args) -> int:
    from moe_runtime.download.s3 import local_model_dir
    from moe_runtime.engine.engine import Engine
    from moe_runtime.engine.sampling import SamplingParams

    engine = Engine.load(
        local_model_dir(args.model, args.download_dir),
        device=args.device,
        dtype=args.dtype,
        quantize=args.quantize,
        window=args.window,
        global_tokens=args.global_tokens,
    )
    adapter = None
    if args.lora:
        from moe_runtime.model.lora import AdapterError

        engine.max_lora_rank = args.max_lora_rank
        try:
            adapter = engine.load_adapter("lora", args.lora).name
        except AdapterError as err:
            print(f"--lora {args.lora}: {err.reason}", file=sys.stderr)
            return 2
    tokenizer = engine.tokenizer
    if args.chat:
        prompt_ids = tokenizer.encode_chat([{"role": "user", "content": args.prompt}])
    else:
        prompt_ids = tokenizer.encode(args.prompt)
    params = SamplingParams(
        max_tokens=args.max_tokens, temperature=args.temperature, top_p=args.top_p, seed=args.seed
    )
    token_ids = engine.generate([prompt_ids], params, adapters=[adapter])[0]
    text = tokenizer.decode(token_ids)
    if args.json:
        print(
            json.dumps(
                {
                    "model": engine.model_name,
                    "prompt_token_ids": prompt_ids,
                    "token_ids": token_ids,
                    "text": text,
                }
            )
        )
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
