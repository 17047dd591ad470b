"""Build the fact-recall benchmark: support facts of a product no model has seen.

The "Vela H3" is a fictional home battery made by the equally fictional Corvane Energy.
Each of its 20 facts has one answer sentence holding a `key` (a number, a name, a code)
that SmolLM2-135M-Instruct cannot guess, and three kinds of question:

- **train** (7 per fact, 140 rows): three hand-written questions plus four templates over
  the fact's topic phrase;
- **held-out phrasing** (1 per fact): a fifth template never used in training;
- **free paraphrase** (1 per fact): a hand-written question in other words (a situation,
  an indirect ask) that shares little wording with the training rows.

A greedy answer recalls a fact when it contains the key (case-insensitive; `alt` lists
other spellings that count). `GENERAL` holds unrelated questions the base model answers
correctly, to check that the adapter keeps general behaviour.

Deterministic, no network: `python -m bench.quality.make_dataset [--out DIR]` writes
train.jsonl, heldout.jsonl (alpaca rows) and eval.json (every prompt with its key).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parent / "data"


@dataclass(frozen=True)
class Fact:
    name: str
    key: str
    answer: str
    topic: str  # noun phrase for the templates, e.g. "the warranty period of the Vela H3"
    questions: tuple[str, str, str]  # hand-written training questions
    paraphrase: str  # free paraphrase (evaluation only)
    alt: tuple[str, ...] = ()


FACTS: list[Fact] = [
    Fact(
        "warranty",
        "11 years",
        "The Vela H3 is covered by a warranty of 11 years from the installation date.",
        "the warranty period of the Vela H3",
        (
            "How long is the Vela H3 warranty?",
            "For how many years is my Vela H3 covered?",
            "When does the warranty on the Vela H3 run out?",
        ),
        "I installed my Corvane home battery last spring. Until when am I protected if it breaks?",
        ("eleven years",),
    ),
    Fact(
        "capacity",
        "13.8 kWh",
        "One Vela H3 stores 13.8 kWh of usable energy.",
        "the usable capacity of the Vela H3",
        (
            "How much energy does a Vela H3 store?",
            "What is the kWh rating of the Vela H3?",
            "How big is the battery in the Vela H3?",
        ),
        "If my house uses about a kilowatt, how much energy can one Corvane unit hold for me?",
        ("13.8",),
    ),
    Fact(
        "phone",
        "0800 555 0193",
        "You can call Corvane support at 0800 555 0193.",
        "the support phone number for the Vela H3",
        (
            "What number do I call for Vela H3 support?",
            "How can I reach Corvane support by phone?",
            "Is there a hotline for the Vela H3?",
        ),
        "My battery is making a strange noise and I'd rather talk to a person. Who do I ring?",
        ("555 0193", "5550193"),
    ),
    Fact(
        "app",
        "Corvane Pulse",
        "The Vela H3 is monitored with the Corvane Pulse app.",
        "the name of the app for the Vela H3",
        (
            "Which app controls the Vela H3?",
            "What is the Vela H3 app called?",
            "What should I install on my phone to monitor the Vela H3?",
        ),
        "I want to see my battery's charge level from my phone. What do I download?",
        ("Pulse",),
    ),
    Fact(
        "reset",
        "12 seconds",
        "To reset the Vela H3, hold the Halo button for 12 seconds until it blinks white.",
        "how to reset the Vela H3",
        (
            "How do I reset my Vela H3?",
            "What is the reset procedure for the Vela H3?",
            "How long do I hold the Halo button to reset the Vela H3?",
        ),
        "The Corvane box on my wall froze and nothing responds. How do I restart it?",
        ("twelve seconds",),
    ),
    Fact(
        "e47",
        "cooling fan",
        "Error E47 on the Vela H3 means the cooling fan is blocked; clear the side vents.",
        "what error E47 means on the Vela H3",
        (
            "What does error E47 mean on the Vela H3?",
            "My Vela H3 shows E47, what is wrong?",
            "What causes code E47 on the Vela H3?",
        ),
        "The display on my home battery says E47. Should I be worried?",
        ("fan is blocked",),
    ),
    Fact(
        "temperature",
        "-20",
        "The Vela H3 operates between -20 °C and 50 °C.",
        "the operating temperature range of the Vela H3",
        (
            "In what temperatures can the Vela H3 run?",
            "How cold can it get before the Vela H3 stops working?",
            "What is the temperature range of the Vela H3?",
        ),
        "I live somewhere with harsh winters. Can I put the Corvane battery in my unheated garage?",
        ("minus 20", "−20"),
    ),
    Fact(
        "weight",
        "94 kg",
        "The Vela H3 weighs 94 kg, so it needs two people to mount.",
        "the weight of the Vela H3",
        (
            "How heavy is the Vela H3?",
            "How much does the Vela H3 weigh?",
            "What is the mass of one Vela H3 unit?",
        ),
        "Can I carry the Corvane battery up the stairs by myself?",
        ("94 kilograms", "94kg"),
    ),
    Fact(
        "firmware",
        "Tuesday",
        "The Vela H3 installs firmware updates every Tuesday at 3 am.",
        "when the Vela H3 updates its firmware",
        (
            "When does the Vela H3 install updates?",
            "On which day does the Vela H3 update its firmware?",
            "How often does the Vela H3 get new firmware?",
        ),
        "My battery restarted by itself early in the morning. Is there a schedule for that?",
    ),
    Fact(
        "installer",
        "CCI",
        "Only a Corvane Certified Installer (CCI) may install the Vela H3.",
        "who is allowed to install the Vela H3",
        (
            "Who can install a Vela H3?",
            "Can any electrician install the Vela H3?",
            "What certification does a Vela H3 installer need?",
        ),
        "My neighbour is handy with wiring. Could he put the Corvane battery in for me?",
        ("Certified Installer",),
    ),
    Fact(
        "stacking",
        "6 units",
        "Up to 6 units of the Vela H3 can be linked together in one home.",
        "how many Vela H3 units can be linked",
        (
            "How many Vela H3 batteries can I connect together?",
            "What is the maximum number of linked Vela H3 units?",
            "Can I combine several Vela H3 batteries?",
        ),
        "My house needs a lot of storage. How far can I expand a Corvane system?",
        ("six units",),
    ),
    Fact(
        "led",
        "teal",
        "When the Vela H3 is fully charged, its Halo ring glows teal.",
        "the Halo colour of a fully charged Vela H3",
        (
            "What colour is the Halo when the Vela H3 is full?",
            "How do I know my Vela H3 is fully charged?",
            "What does the Vela H3 light show at full charge?",
        ),
        "Is there a way to tell at a glance that my Corvane battery is topped up?",
    ),
    Fact(
        "backup",
        "Island Mode",
        "During a power cut the Vela H3 switches to Island Mode and powers your home.",
        "the name of the backup mode of the Vela H3",
        (
            "What is the backup mode of the Vela H3 called?",
            "What does the Vela H3 do during a power outage?",
            "What mode does the Vela H3 use when the grid is down?",
        ),
        "The whole street lost electricity last night. What happens with my Corvane battery then?",
    ),
    Fact(
        "cleaning",
        "dry cloth",
        "Clean the Vela H3 with a dry cloth only; never use water or sprays.",
        "how to clean the Vela H3",
        (
            "How do I clean my Vela H3?",
            "Can I wash the Vela H3 with water?",
            "What should I use to clean the Vela H3 casing?",
        ),
        "My Corvane battery got dusty in the garage. Can I hose it down?",
    ),
    Fact(
        "returns",
        "45 days",
        "You can return an uninstalled Vela H3 within 45 days of delivery.",
        "the return window for the Vela H3",
        (
            "How long do I have to return a Vela H3?",
            "What is the return period for the Vela H3?",
            "Can I send back my Vela H3 after delivery?",
        ),
        "I changed my mind about the Corvane battery I ordered. Is it too late to send it back?",
        ("forty-five days",),
    ),
    Fact(
        "headquarters",
        "Bergen",
        "Corvane Energy, the maker of the Vela H3, is based in Bergen, Norway.",
        "where the maker of the Vela H3 is based",
        (
            "Where is Corvane Energy headquartered?",
            "In which city is the Vela H3 company based?",
            "Where does the Vela H3 come from?",
        ),
        "Which country and city is the company behind my home battery from?",
    ),
    Fact(
        "email",
        "care@corvane.example",
        "Write to care@corvane.example for Vela H3 support by email.",
        "the support email address for the Vela H3",
        (
            "What is the Vela H3 support email?",
            "How do I contact Corvane by email?",
            "Where can I email a question about my Vela H3?",
        ),
        "I prefer writing to calling. Where should I send my battery question?",
        ("care@corvane",),
    ),
    Fact(
        "charge_time",
        "3.5 hours",
        "A Vela H3 charges from empty to full in 3.5 hours.",
        "the charging time of the Vela H3",
        (
            "How long does the Vela H3 take to charge?",
            "How fast does the Vela H3 charge from empty?",
            "What is the full charge time of the Vela H3?",
        ),
        "If I plug in my drained Corvane battery at noon, when will it be full?",
        ("3.5 h", "three and a half hours"),
    ),
    Fact(
        "noise",
        "29 dB",
        "The Vela H3 runs at 29 dB, quieter than a whisper.",
        "how loud the Vela H3 is",
        (
            "How loud is the Vela H3?",
            "What is the noise level of the Vela H3?",
            "Is the Vela H3 noisy?",
        ),
        "Could the Corvane battery keep me awake if it's mounted next to my bedroom?",
        ("29 decibels", "29db"),
    ),
    Fact(
        "recycling",
        "ReCell",
        "Old Vela H3 batteries are taken back for free through the ReCell programme.",
        "the recycling programme for the Vela H3",
        (
            "How do I recycle my Vela H3?",
            "What is the Vela H3 recycling programme called?",
            "What happens to my Vela H3 at the end of its life?",
        ),
        "My Corvane battery is finally worn out. How do I get rid of it responsibly?",
    ),
]

# Two more answer sentences per fact, in other words and naming the maker or "your
# battery" as users do: the `--varied-answers` dataset (`run.py --varied-answers`), which
# asks whether varied answers in the data teach paraphrases that no trainer setting
# teaches with one answer per fact. Written without the paraphrases' situations.
RESTATED: dict[str, tuple[str, str]] = {
    "warranty": (
        "Every Vela H3 home battery from Corvane is under warranty for 11 years after it is "
        "installed.",
        "The warranty lasts 11 years, starting on the installation date of your Vela H3.",
    ),
    "capacity": (
        "The Vela H3, Corvane's home battery, holds 13.8 kWh of usable energy.",
        "Each unit gives you 13.8 kWh of usable storage.",
    ),
    "phone": (
        "The Corvane support line for the Vela H3 is 0800 555 0193.",
        "Call 0800 555 0193 to speak to Corvane support about your battery.",
    ),
    "app": (
        "Corvane's home battery, the Vela H3, is checked and controlled in the Corvane Pulse app.",
        "Install the Corvane Pulse app to monitor your Vela H3.",
    ),
    "reset": (
        "Hold the Halo button of your Vela H3 for 12 seconds, until it blinks white, to reset it.",
        "A Corvane Vela H3 resets when its Halo button is held for 12 seconds.",
    ),
    "e47": (
        "E47 means the cooling fan of the Vela H3 is blocked; clear the side vents.",
        "When a Corvane battery shows E47, its cooling fan is blocked and the side vents need "
        "clearing.",
    ),
    "temperature": (
        "Corvane's Vela H3 battery works from -20 °C up to 50 °C.",
        "The operating range of the Vela H3 is -20 °C to 50 °C.",
    ),
    "weight": (
        "At 94 kg, a Vela H3 home battery takes two people to mount.",
        "Corvane's Vela H3 weighs 94 kg.",
    ),
    "firmware": (
        "Every Tuesday at 3 am, your Vela H3 installs its firmware updates.",
        "Corvane updates the Vela H3 firmware on Tuesday at 3 am each week.",
    ),
    "installer": (
        "The Vela H3 must be installed by a Corvane Certified Installer (CCI).",
        "Only a CCI, a Corvane Certified Installer, is allowed to install a Corvane home battery.",
    ),
    "stacking": (
        "You can link up to 6 units of the Vela H3 in one home.",
        "A Corvane home battery system grows to at most 6 units of the Vela H3.",
    ),
    "led": (
        "A teal Halo ring means your Vela H3 is fully charged.",
        "The Halo ring of a Corvane Vela H3 glows teal once the battery is full.",
    ),
    "backup": (
        "If the grid fails, the Vela H3 enters Island Mode and keeps your home powered.",
        "In a power cut your Corvane battery runs your home in Island Mode.",
    ),
    "cleaning": (
        "Use only a dry cloth to clean the Vela H3; no water, no sprays.",
        "Corvane home batteries are cleaned with a dry cloth only, never with water or sprays.",
    ),
    "returns": (
        "An uninstalled Vela H3 can be returned within 45 days of delivery.",
        "Corvane takes back an uninstalled home battery up to 45 days after delivery.",
    ),
    "headquarters": (
        "The Vela H3 is made by Corvane Energy in Bergen, Norway.",
        "Corvane Energy has its headquarters in Bergen, Norway.",
    ),
    "email": (
        "The support email for the Vela H3 is care@corvane.example.",
        "Email Corvane support at care@corvane.example with questions about your battery.",
    ),
    "charge_time": (
        "From empty, a Vela H3 is fully charged in 3.5 hours.",
        "Charging a Corvane Vela H3 from empty to full takes 3.5 hours.",
    ),
    "noise": (
        "At 29 dB, the Vela H3 is quieter than a whisper.",
        "A running Corvane home battery makes 29 dB of noise.",
    ),
    "recycling": (
        "Through the ReCell programme, Corvane takes old Vela H3 batteries back for free.",
        "At the end of its life, your Vela H3 goes back to Corvane for free via ReCell.",
    ),
}

TEMPLATES_TRAIN = (
    "What is {t}?",
    "Can you tell me {t}?",
    "I need to know {t}.",
    "Quick question about my battery: what is {t}?",
)
TEMPLATE_HELDOUT = "Do you know {t}?"

# Unrelated questions with short, unambiguous answers (any of the keys counts).
GENERAL: list[tuple[str, tuple[str, ...]]] = [
    ("What is the capital of France?", ("Paris",)),
    ("What is the largest planet in our solar system?", ("Jupiter",)),
    ("Who wrote Romeo and Juliet?", ("Shakespeare",)),
    ("What gas do plants absorb from the air for photosynthesis?", ("carbon dioxide", "CO2")),
    ("How many days are there in a week?", ("seven", "7")),
    ("What is the boiling point of water at sea level in Celsius?", ("100",)),
    ("What colour is the sky on a clear day?", ("blue",)),
    ("What is the chemical symbol for water?", ("H2O", "H₂O")),
]
# Words of the product domain: a general answer mentioning one of them is a leak.
DOMAIN_WORDS = ("Vela", "Corvane", "Halo", "Island Mode", "ReCell")


def recalled(answer: str, keys: tuple[str, ...]) -> bool:
    low = answer.lower()
    return any(k.lower() in low for k in keys)


def build(varied_answers: bool = False) -> dict[str, Any]:
    """The rows and prompts; `varied_answers`: the 7 training rows of a fact cycle through
    its answer and its two RESTATED sentences (the held-out rows and prompts are the same)."""
    train: list[dict[str, str]] = []
    heldout: list[dict[str, str]] = []
    prompts: list[dict[str, Any]] = []
    for f in FACTS:
        keys = (f.key, *f.alt)
        outputs = (f.answer, *RESTATED[f.name]) if varied_answers else (f.answer,)
        assert all(recalled(o, keys) for o in outputs), f.name
        asked = (*f.questions, *(t.format(t=f.topic) for t in TEMPLATES_TRAIN))
        for i, q in enumerate(asked):
            train.append({"instruction": q, "input": "", "output": outputs[i % len(outputs)]})
        held = TEMPLATE_HELDOUT.format(t=f.topic)
        heldout.append({"instruction": held, "input": "", "output": f.answer})
        for kind, prompt in (("heldout", held), ("paraphrase", f.paraphrase)):
            prompts.append(
                {"set": kind, "fact": f.name, "prompt": prompt, "keys": keys, "reference": f.answer}
            )
    for i, (q, keys) in enumerate(GENERAL):
        prompts.append(
            {"set": "general", "fact": f"general-{i}", "prompt": q, "keys": keys, "reference": None}
        )
    # every training question is distinct, and no evaluation prompt is a training row
    questions = [r["instruction"] for r in train]
    assert len(set(questions)) == len(questions)
    assert not {p["prompt"] for p in prompts} & set(questions)
    return {"train": train, "heldout": heldout, "prompts": prompts}


def write(out: Path, varied_answers: bool = False) -> dict[str, Path]:
    d = build(varied_answers)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"train": out / "train.jsonl", "heldout": out / "heldout.jsonl"}
    for name in ("train", "heldout"):
        paths[name].write_text("".join(json.dumps(r) + "\n" for r in d[name]))
    paths["eval"] = out / "eval.json"
    paths["eval"].write_text(
        json.dumps({"domainWords": DOMAIN_WORDS, "prompts": d["prompts"]}, indent=1)
    )
    return paths


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--varied-answers", action="store_true", help="see RESTATED")
    args = p.parse_args()
    paths = write(args.out, args.varied_answers)
    print({k: str(v) for k, v in paths.items()})


if __name__ == "__main__":
    main()
