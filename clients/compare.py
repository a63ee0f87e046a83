"""One prompt across every variant × a few budgets: answers, reasoning tokens and latency side by side.

python clients/compare.py [--base-url http://127.0.0.1:8000/v1] [--budgets none,0,64,128] [QUESTION]
"""

import argparse
import time

from openai import OpenAI


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("question", nargs="?", default="What is 33+22+67+48?")
    parser.add_argument("--base-url", default="http://127.0.0.1:8000/v1")
    parser.add_argument("--api-key", default="unused")
    parser.add_argument("--budgets", default="none,0,64,128")
    args = parser.parse_args()
    client = OpenAI(base_url=args.base_url, api_key=args.api_key)
    variants = [m.id for m in client.models.list().data if m.id != "auto"]
    budgets = [None if b == "none" else int(b) for b in args.budgets.split(",")]
    print(f"{'variant':<14}{'budget':>7}{'reasoning':>11}{'latency s':>11}  answer")
    for variant in variants:
        for budget in budgets:
            extra = {} if budget is None else {"thinking_token_budget": budget}
            started = time.perf_counter()
            response = client.chat.completions.create(
                model=variant, messages=[{"role": "user", "content": args.question}], temperature=0, extra_body=extra
            )
            latency = time.perf_counter() - started
            print(
                f"{variant:<14}{str(budget):>7}{response.usage.completion_tokens_details.reasoning_tokens:>11}"
                f"{latency:>11.3f}  {response.choices[0].message.content}"
            )


if __name__ == "__main__":
    main()
