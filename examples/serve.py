"""Serve tokensched over HTTP with OpenAI's API, on 127.0.0.1.

    python examples/serve.py                      # the tiny MLA model on CPU (real tokens), port 8000
    python examples/serve.py --sim                # a simulated 8B model on one H100, paced to wall time
    python examples/serve.py --port 0 --self-test # start, stream one chat with the openai client, stop

Then, from another shell:

    curl -s http://127.0.0.1:8000/v1/completions -H 'content-type: application/json' \\
         -d '{"model": "tokensched", "prompt": "Hello", "max_tokens": 16}'

The tiny model has random weights: its bytes are real model output, not prose.
"""

from __future__ import annotations

import argparse

from tokensched.server import BackgroundServer, ServerSettings, create_app, serve, sim_backend, torch_backend


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sim", action="store_true", help="serve the simulated GPU instead of the tiny model")
    parser.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    parser.add_argument("--self-test", action="store_true", help="ask one question over loopback, then exit")
    args = parser.parse_args()

    runner, tokenizer = sim_backend() if args.sim else torch_backend(num_blocks=1024)
    settings = ServerSettings(host="127.0.0.1", port=args.port, model_name="tokensched")
    app = create_app(runner, tokenizer, settings)
    if not args.self_test:
        serve(app, settings)
        return

    from openai import OpenAI

    with BackgroundServer(app, settings.host, settings.port) as server:
        client = OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60.0)
        stream = client.chat.completions.create(
            model=settings.model_name,
            messages=[{"role": "user", "content": "Say something."}],
            max_tokens=24,
            temperature=0,
            stream=True,
        )
        pieces = [chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices]
        print(f"served on {server.url}: {''.join(pieces)!r}")


if __name__ == "__main__":
    main()
