"""``python -m agents.fake_api [--port N] [--input-ratio R] [--script FILE]``: serve."""

from __future__ import annotations

import argparse
import contextlib
import sys

from agents.fake_api._model import FakeApiConfig
from agents.fake_api._script import load_script
from agents.fake_api._server import FakeAnthropicServer


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m agents.fake_api",
                                     description="Fake Anthropic Messages API on 127.0.0.1.")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--input-ratio", type=float, default=1.2)
    parser.add_argument("--output-tokens", type=int, default=40)
    parser.add_argument("--script", help="JSON lines of response bodies, served in order")
    args = parser.parse_args(argv)
    server = FakeAnthropicServer(
        FakeApiConfig(input_ratio=args.input_ratio, output_tokens=args.output_tokens),
        port=args.port, script=load_script(args.script) if args.script else None,
    )
    sys.stdout.write(f"fake Anthropic API on {server.base_url} "
                     f"(set provider.base_url to it); Ctrl-C stops\n")
    sys.stdout.flush()
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()


if __name__ == "__main__":
    main()
