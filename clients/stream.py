"""A streaming request: reasoning and answer printed apart as they arrive.

python clients/stream.py [--base-url http://127.0.0.1:8000/v1] [--model lab-long] [QUESTION]
"""

import argparse
import sys

from openai import OpenAI


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("question", nargs="?", default="What is 33+22+67+48?")
    parser.add_argument("--base-url", default="http://127.0.0.1:8000/v1")
    parser.add_argument("--model", default="lab-long")
    parser.add_argument("--api-key", default="unused")
    args = parser.parse_args()
    client = OpenAI(base_url=args.base_url, api_key=args.api_key)
    stream = client.chat.completions.create(
        model=args.model,
        messages=[{"role": "user", "content": args.question}],
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    section = None
    for chunk in stream:
        for choice in chunk.choices:
            reasoning = (choice.delta.model_extra or {}).get("reasoning_content")
            for name, text in (("reasoning", reasoning), ("answer", choice.delta.content)):
                if text:
                    if section != name:
                        print(f"\n[{name}] ", end="")
                        section = name
                    print(text, end="")
                    sys.stdout.flush()
        if chunk.usage:
            print(
                f"\n\n[usage] reasoning tokens {chunk.usage.completion_tokens_details.reasoning_tokens}, "
                f"completion tokens {chunk.usage.completion_tokens}"
            )


if __name__ == "__main__":
    main()
