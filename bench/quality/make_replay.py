"""Replay rows: the base model's own greedy answers to everyday, unrelated questions.

Mixed into the fact rows (`run.py --replay data/replay.jsonl`), they keep showing the
adapter what the base model says outside the domain, so that fitting 140 product rows does
not pull every answer into the product's voice (forgetting). The questions are none of the
benchmark's `GENERAL` check, which stays held out, and none asks about the facts, or
the topics, that it asks about (capitals, planets, water, photosynthesis, calendars).

Answers are rendered exactly as training renders a row with `systemPrompt` unset (the
tokenizer's chat template, which adds its own default system prompt), greedy, at most
`--max-new-tokens` new tokens, cut back to the last full sentence; answers stuck in a
greedy loop are left out. They are whatever the base model says, right or wrong: the
point is to keep its behaviour, not to teach.

    python -m bench.quality.make_replay          # → bench/quality/data/replay.jsonl

Deterministic (greedy, CPU); takes about a minute on two cores.
"""

from __future__ import annotations

import argparse
import json
import re
from collections import Counter
from pathlib import Path

from . import make_dataset

OUT = make_dataset.OUT / "replay.jsonl"

QUESTIONS = (
    "Name three primary colours.",
    "How many legs does a spider have?",
    "What is 12 times 12?",
    "Who painted the Mona Lisa?",
    "Write a haiku about autumn.",
    'Give me a synonym for "happy".',
    "What does a thermometer measure?",
    'Translate "good morning" into Spanish.',
    "What is the tallest mountain in the world?",
    "Explain what a noun is.",
    "How many continents are there?",
    "What is the main language spoken in Brazil?",
    "Suggest a name for a pet cat.",
    "What is the square root of 81?",
    "Which ocean is the largest?",
    "What do bees make?",
    "Give me a tip for sleeping better.",
    'What is the opposite of "cold"?',
    "Who was the first person to walk on the moon?",
    "What is the currency of Japan?",
    "Write one sentence about the sea.",
    "What instrument has 88 keys?",
    "How many sides does a hexagon have?",
    "Name a fruit that is yellow.",
    "What is a verb?",
    "Recommend a healthy breakfast.",
    "What is the smallest prime number?",
    "What is the largest mammal?",
    'How do you say "thank you" in French?',
    "Who developed the theory of relativity?",
    "What is the longest river in Africa?",
    "Describe a rainbow in one sentence.",
    "Give me two ideas for a rainy afternoon.",
    "Why do we need to drink water?",
    "What is a good way to learn a new language?",
    "Summarise the story of Cinderella in one sentence.",
    "What are the three states of matter?",
    "How can I be more productive at work?",
    "What is the difference between weather and climate?",
    "Write a short thank-you note to a teacher.",
    "What is the fastest land animal?",
    "What is the hardest natural substance?",
    "Who invented the telephone?",
    "Which animal is known as the king of the jungle?",
    "What do cows drink?",
    "How do I boil an egg?",
    "What does a doctor do?",
    "Give me a fun fact about octopuses.",
    "What is the plural of mouse?",
    "Why do leaves change colour in autumn?",
)

_SENTENCE_END = re.compile(r"[.!?](?=\s|$)")
_LIST_MARK = re.compile(r"\s+\d+\.$")


def trim(answer: str) -> str:
    """Cut an answer that ran into the token limit back to its last full sentence."""
    ends = [m.end() for m in _SENTENCE_END.finditer(answer)]
    cut = answer[: ends[-1]] if ends and ends[-1] > 20 else answer
    return _LIST_MARK.sub("", cut).strip()  # "... sea air.  2." ends on the next item's number


def repetitive(answer: str) -> bool:
    """A greedy loop ("Boil an egg: Boil an egg: ..."): some 4 words in a row come 3 times."""
    words = answer.lower().split()
    grams = Counter(tuple(words[i : i + 4]) for i in range(len(words) - 3))
    return max(grams.values(), default=0) >= 3


def check_held_out() -> None:
    general = {q for q, _ in make_dataset.GENERAL}
    assert len(set(QUESTIONS)) == len(QUESTIONS)
    assert not general & set(QUESTIONS), "a replay question is a general-check prompt"
    words = [w.lower() for w in make_dataset.DOMAIN_WORDS]
    assert not any(w in q.lower() for q in QUESTIONS for w in words)


def generate(max_new_tokens: int) -> list[dict[str, str]]:
    from .run import answers, chat_prompt, load_base

    model, tok = load_base()
    model.eval()
    outs = answers(model, tok, [chat_prompt(tok, q, None) for q in QUESTIONS], max_new_tokens)
    pairs = zip(QUESTIONS, outs, strict=True)
    rows = [{"instruction": q, "input": "", "output": trim(a)} for q, a in pairs]
    return [r for r in rows if not repetitive(r["output"])]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--max-new-tokens", type=int, default=48)
    args = p.parse_args()
    check_held_out()
    rows = generate(args.max_new_tokens)
    args.out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    print(f"wrote {len(rows)} rows to {args.out}")


if __name__ == "__main__":
    main()
