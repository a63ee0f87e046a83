"""Reasoning budgets three ways: `thinking_token_budget`, `reasoning_effort`, and `model="auto"`.

python clients/budgets.py [--base-url http://127.0.0.1:8000/v1]
"""

import argparse

from openai import OpenAI

QUESTION = [{"role": "user", "content": "What is 33+22+67+48?"}]


def show(label: str, response) -> None:
    print(
        f"{label:<38} model={response.model:<10} reasoning tokens="
        f"{response.usage.completion_tokens_details.reasoning_tokens:<4} answer={response.choices[0].message.content!r}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base-url", default="http://127.0.0.1:8000/v1")
    parser.add_argument("--api-key", default="unused")
    args = parser.parse_args()
    client = OpenAI(base_url=args.base_url, api_key=args.api_key)
    for budget in (0, 16, 128, -1):
        show(
            f"lab-long thinking_token_budget={budget}",
            client.chat.completions.create(
                model="lab-long", messages=QUESTION, temperature=0, extra_body={"thinking_token_budget": budget}
            ),
        )
    for effort in ("none", "low", "medium", "high"):
        show(
            f"lab-long reasoning_effort={effort}",
            client.chat.completions.create(model="lab-long", messages=QUESTION, temperature=0, reasoning_effort=effort),
        )
    for budget in (8, None):
        extra = {"thinking_token_budget": budget} if budget is not None else {}
        show(
            f"auto thinking_token_budget={budget}",
            client.chat.completions.create(model="auto", messages=QUESTION, temperature=0, extra_body=extra),
        )


if __name__ == "__main__":
    main()
