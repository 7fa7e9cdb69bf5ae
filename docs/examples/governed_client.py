"""The governed drop-in client (docs/guide-govern-existing-agent.md, "In-process").

    export VIBE_CLIENT_KEY=sk-my-agent-key          # serve.toml reads the key from here
    vibe-engine fake-api &                          # the upstream serve.toml names
    python docs/examples/governed_client.py docs/examples/serve.toml

One call and one stream made as the key ``my-agent`` of the config, on the governed
path, in this process; afterwards ``vibe-engine status`` shows them under that key.
"""

from __future__ import annotations

import sys

from scheduler.serve import governed_client

PROMPT = [{"role": "user", "content": "Name three prime numbers."}]


def main(config: str) -> None:
    # was: client = anthropic.Anthropic()
    with governed_client(config, key="my-agent") as client:
        msg = client.messages.create(model="claude-sonnet-4-6", max_tokens=128,
                                     messages=PROMPT)
        block = msg.content[0]
        sys.stdout.write((block.text if block.type == "text" else str(block)) + "\n")
        with client.messages.stream(model="claude-sonnet-4-6", max_tokens=128,
                                    messages=PROMPT) as stream:
            for text in stream.text_stream:
                sys.stdout.write(text)
                sys.stdout.flush()
        sys.stdout.write(f"\n{stream.get_final_message().usage.output_tokens} tokens out\n")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "docs/examples/serve.toml")
