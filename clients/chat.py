"""A chat request with the official openai SDK, reasoning and answer apart.

python clients/chat.py [--base-url http://127.0.0.1:8000/v1] [--model lab-long] [QUESTION]
"""

import argparse

from openai import OpenAI


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("question", nargs="?", default="What is 33+22+67+48?")
    parser.add_argument("--base-url", default="http://127.0.0.1:8000/v1")
    parser.add_argument("--model", default="lab-long")
    parser.add_argument("--api-key", default="unused")
    args = parser.parse_args()
    client = OpenAI(base_url=args.base_url, api_key=args.api_key)
    response = client.chat.completions.create(
        model=args.model, messages=[{"role": "user", "content": args.question}], temperature=0
    )
    message = response.choices[0].message
    print("model:    ", response.model)
    print("reasoning:", getattr(message, "reasoning_content", None))
    print("answer:   ", message.content)
    print(
        "reasoning tokens:",
        response.usage.completion_tokens_details.reasoning_tokens,
        "of",
        response.usage.completion_tokens,
    )


if __name__ == "__main__":
    main()
