"""Write the bundled demo curriculum into ``brainstacks_pl/data/demo/`` (deterministic).

Five small templated domains, each in a different on-disk format, so the demo exercises every
format adapter and the chat-markup stripping:

    chat.jsonl       messages (some turns wrapped in ChatML / Gemma / Llama chat markup)
    code.jsonl       alpaca jsonl (instruction / input / output): small Python functions
    math.csv         question / answer word problems, answers end with "#### <number>"
    medical.json     alpaca json list; includes dosage arithmetic (mg/kg x weight)
    reasoning.jsonl  prompt / completion: syllogisms, orderings, step-by-step answers

Planted for decontamination: 5 dosage problems appear verbatim in math and medical, 3 number
sequences in math and reasoning (the later domain's copies are dropped).

    python scripts/make_demo_data.py [--out DIR] [--per-domain 400] [--seed 1234]
"""

from __future__ import annotations

import argparse
import csv
import json
import random
from collections.abc import Callable
from pathlib import Path

NAMES = [
    "Ana",
    "Ben",
    "Chen",
    "Dara",
    "Eli",
    "Fatima",
    "Gus",
    "Hana",
    "Ivan",
    "Jon",
    "Kira",
    "Leo",
    "Maya",
    "Nia",
    "Omar",
    "Pia",
    "Quinn",
    "Ravi",
    "Sara",
    "Tom",
    "Uma",
    "Vik",
    "Wen",
    "Yara",
    "Zoe",
]
CITIES = ["Paris", "Lima", "Oslo", "Cairo", "Tokyo", "Rome", "Quito", "Seoul", "Dublin", "Nairobi", "Hanoi", "Vienna"]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
ITEMS = ["apples", "pencils", "stickers", "marbles", "cookies", "books", "shells", "cards", "eggs", "stamps"]


# --------------------------------------------------------------------------- chat


def _chat_pair(r: random.Random) -> list[tuple[str, str]]:
    name, city, day = r.choice(NAMES), r.choice(CITIES), r.choice(DAYS)
    feelings = {
        "tired": "Try to sleep a bit earlier tonight and take short breaks during the day.",
        "stressed": "Take a few slow breaths, write down what worries you, and do one small task.",
        "bored": "Try something new: a short walk, a puzzle, or a recipe you have never cooked.",
        "nervous": "That is normal. Prepare a little, breathe slowly, and remind yourself you can do it.",
        "lonely": "Reach out to a friend or family member today; even a short message helps.",
    }
    genres = {
        "mystery": "The Hound of the Baskervilles",
        "science fiction": "The Time Machine",
        "fantasy": "The Hobbit",
        "adventure": "Treasure Island",
        "romance": "Pride and Prejudice",
        "horror": "Dracula",
    }
    hello = {
        "Spanish": "hola",
        "French": "bonjour",
        "German": "hallo",
        "Italian": "ciao",
        "Japanese": "konnichiwa",
        "Swahili": "jambo",
        "Portuguese": "ola",
        "Dutch": "hallo",
    }
    words = {
        "curious": "eager to learn or know something",
        "brave": "ready to face danger or pain",
        "generous": "happy to give more than expected",
        "calm": "peaceful and not worried",
        "honest": "telling the truth",
        "patient": "able to wait without getting upset",
        "polite": "showing good manners toward others",
        "clever": "quick to understand and learn",
    }
    pets = {
        "cat": ["Milo", "Luna", "Pepper", "Tiger"],
        "dog": ["Buddy", "Rex", "Daisy", "Scout"],
        "rabbit": ["Clover", "Hopper", "Snow"],
        "parrot": ["Kiwi", "Sunny", "Mango"],
    }
    kind = r.randrange(10)
    if kind == 0:
        return [
            ("user", f"Hi, I'm {name}."),
            ("assistant", f"Hello {name}! Nice to meet you. How can I help you today?"),
        ]
    if kind == 1:
        part = r.choice(["morning", "afternoon", "evening"])
        return [
            ("user", f"Good {part}! How are you?"),
            ("assistant", f"Good {part}! I'm doing well, thank you for asking. How are you?"),
        ]
    if kind == 2:
        genre = r.choice(list(genres))
        ask = r.choice(["Can you recommend a {g} book?", "What {g} book should I read?", "Suggest a good {g} novel."])
        return [("user", ask.format(g=genre)), ("assistant", f"Sure! If you like {genre}, try {genres[genre]}.")]
    if kind == 3:
        feel = r.choice(list(feelings))
        ask = r.choice(["I feel {f}. Any advice?", "I'm {f} today. What should I do?", "What helps when you feel {f}?"])
        return [("user", ask.format(f=feel)), ("assistant", feelings[feel])]
    if kind == 4:
        return [
            ("user", f"I'm going to {city} on {day}. What should I pack?"),
            ("assistant", f"For {city}, pack comfortable shoes, a light jacket and a charger. Have a great {day}!"),
        ]
    if kind == 5:
        lang = r.choice(list(hello))
        return [("user", f"How do I say hello in {lang}?"), ("assistant", f'In {lang}, you say "{hello[lang]}".')]
    if kind == 6:
        word = r.choice(list(words))
        ask = r.choice(['What does "{w}" mean?', 'Define the word "{w}".', 'Explain "{w}" simply.'])
        return [("user", ask.format(w=word)), ("assistant", f'"{word.capitalize()}" means {words[word]}.')]
    if kind == 7:
        pet = r.choice(list(pets))
        return [
            ("user", f"Suggest a name for my new {pet}."),
            ("assistant", f"How about {r.choice(pets[pet])}? It is a friendly name for a {pet}."),
        ]
    if kind == 8:
        return [
            ("user", f"It's my friend {name}'s birthday. What should I write?"),
            ("assistant", f'Try this: "Happy birthday, {name}! Wishing you a wonderful year."'),
        ]
    return [
        ("user", f"Hi, I'm {name}."),
        ("assistant", f"Hello {name}! How can I help?"),
        ("user", r.choice(["What can you do?", "What are you good at?", "How can you help me?"])),
        ("assistant", "I can answer questions, give advice, explain words and chat with you."),
    ]


_MARKUP = {
    "chatml": ("<|im_start|>{role}\n{text}<|im_end|>", {"user": "user", "assistant": "assistant", "system": "system"}),
    "gemma": ("<start_of_turn>{role}\n{text}<end_of_turn>", {"user": "user", "assistant": "model", "system": "user"}),
    "llama2": ("[INST] {text} [/INST]", None),
    "llama3": (
        "<|start_header_id|>{role}<|end_header_id|>\n\n{text}<|eot_id|>",
        {"user": "user", "assistant": "assistant", "system": "system"},
    ),
}


def _wrap(style: str, role: str, text: str) -> str:
    pattern, roles = _MARKUP[style]
    if roles is None:  # Llama-2: only user turns are bracketed, the answer ends with </s>
        return pattern.format(text=text) if role != "assistant" else f"{text} </s>"
    return pattern.format(role=roles[role], text=text)


def make_chat(r: random.Random) -> list[tuple[str, str]]:
    turns = _chat_pair(r)
    if r.random() < 0.15:
        system = r.choice(["You are a friendly assistant.", "You are a helpful, concise assistant."])
        turns = [("system", system)] + turns
    return turns


def mark_up_chat(r: random.Random, turns: list[tuple[str, str]]) -> dict:
    """A messages row; about a third of the conversations keep a chat template's markup."""
    if r.random() < 0.35:
        style = r.choice(list(_MARKUP))
        turns = [(role, _wrap(style, role, text)) for role, text in turns]
    return {"messages": [{"role": role, "content": text} for role, text in turns]}


# --------------------------------------------------------------------------- code


def make_code(r: random.Random) -> dict:
    k = r.randint(2, 12)
    a, b = r.choice([("a", "b"), ("x", "y"), ("m", "n")])
    verb = r.choice(["Write a Python function", "Implement a Python function", "Create a Python function"])
    xs = r.choice(["xs", "items", "values", "nums"])
    s = r.choice(["s", "text", "word"])
    c = r.choice("aeiost")
    fname = r.choice(["add", "plus", "total"])
    families: list[Callable[[], tuple[str, str, str]]] = [
        lambda: (
            f"{verb} named {fname}({a}, {b}) that returns the sum of two numbers.",
            "",
            f"def {fname}({a}, {b}):\n    return {a} + {b}",
        ),
        lambda: (
            f"{verb} that multiplies every element of a list by {k}.",
            "",
            f"def times_{k}({xs}):\n    return [v * {k} for v in {xs}]",
        ),
        lambda: (
            f"{verb} that keeps only the numbers greater than {k} in a list.",
            "",
            f"def above_{k}({xs}):\n    return [v for v in {xs} if v > {k}]",
        ),
        lambda: (
            f"{verb} that counts how many times '{c}' appears in a string.",
            "",
            f"def count_{c}({s}):\n    return {s}.count('{c}')",
        ),
        lambda: (
            f"{verb} that checks whether a number is divisible by {k}.",
            "",
            f"def divisible_by_{k}(n):\n    return n % {k} == 0",
        ),
        lambda: (
            f"{verb} that returns a string repeated {k} times.",
            "",
            f"def repeat_{k}({s}):\n    return {s} * {k}",
        ),
        lambda: (f"{verb} that adds {k} to a number.", "", f"def add_{k}({a}):\n    return {a} + {k}"),
        lambda: (
            f"{verb} that returns the first {k} elements of a list.",
            "",
            f"def first_{k}({xs}):\n    return {xs}[:{k}]",
        ),
        lambda: (
            f"{verb} that reverses a string.",
            f"Use the parameter name {s}.",
            f"def reverse({s}):\n    return {s}[::-1]",
        ),
        lambda: (
            f"{verb} that checks if a string is a palindrome.",
            f"Use the parameter name {s}.",
            f"def is_palindrome({s}):\n    return {s} == {s}[::-1]",
        ),
        lambda: (
            f"{verb} that returns the largest number in a list.",
            f"Name the list {xs}.",
            f"def largest({xs}):\n    return max({xs})",
        ),
        lambda: (
            f"{verb} that returns the average of a list of numbers.",
            f"Name the list {xs}.",
            f"def average({xs}):\n    return sum({xs}) / len({xs})",
        ),
        lambda: (
            f"{verb} that computes n factorial with a loop.",
            "",
            "def factorial(n):\n    result = 1\n    for i in range(2, n + 1):\n        result *= i\n    return result",
        ),
        lambda: (
            f"{verb} that returns the sum of squares of a list.",
            f"Name the list {xs}.",
            f"def sum_squares({xs}):\n    return sum(v * v for v in {xs})",
        ),
        lambda: (
            f"{verb} that clamps a number between 0 and {k * 10}.",
            "",
            f"def clamp({a}):\n    return max(0, min({a}, {k * 10}))",
        ),
        lambda: (
            "Fix the bug in this function.",
            f"def add_{k}({a}):\n    return {a} - {k}",
            f"def add_{k}({a}):\n    return {a} + {k}",
        ),
        lambda: (
            "What does this function return?",
            f"def f():\n    return {k} * {k + 1}",
            f"It returns {k} * {k + 1} = {k * (k + 1)}.",
        ),
        lambda: ("What does this code print?", f"print(len('{s * k}'))", f"It prints {len(s) * k}."),
    ]
    instruction, extra, output = r.choice(families)()
    return {"instruction": instruction, "input": extra, "output": output}


# --------------------------------------------------------------------------- math


def make_math(r: random.Random) -> tuple[str, str]:
    name, item = r.choice(NAMES), r.choice(ITEMS)
    a, b = r.randint(3, 60), r.randint(2, 40)
    kind = r.randrange(10)
    if kind == 0:
        return (
            f"{name} has {a} {item} and buys {b} more. How many {item} does {name} have now?",
            f"{name} has {a} + {b} = {a + b} {item}.\n#### {a + b}",
        )
    if kind == 1:
        a = a + b
        return (
            f"{name} had {a} {item} and gave away {b}. How many {item} are left?",
            f"{a} - {b} = {a - b} {item} are left.\n#### {a - b}",
        )
    if kind == 2:
        a, b = r.randint(2, 12), r.randint(2, 12)
        return (
            f"{name} buys {a} boxes with {b} {item} in each box. How many {item} is that?",
            f"{a} boxes x {b} {item} = {a * b} {item}.\n#### {a * b}",
        )
    if kind == 3:
        k, q = r.randint(2, 9), r.randint(2, 12)
        return (
            f"{k * q} {item} are shared equally among {k} friends. How many does each friend get?",
            f"{k * q} / {k} = {q} {item} each.\n#### {q}",
        )
    if kind == 4:
        n, p = r.randint(2, 9), r.randint(2, 9)
        bill = r.choice([50, 100]) if n * p > 20 else 20
        return (
            f"{name} buys {n} {item} at ${p} each and pays with ${bill}. How much change does {name} get?",
            f"Cost: {n} x {p} = {n * p}. Change: {bill} - {n * p} = {bill - n * p}.\n#### {bill - n * p}",
        )
    if kind == 5:
        p, n = r.choice([10, 20, 25, 50, 75]), r.randint(1, 20) * 20
        return (f"What is {p}% of {n}?", f"{p}% of {n} = {p} / 100 x {n} = {p * n // 100}.\n#### {p * n // 100}")
    if kind == 6:
        w, h = r.randint(2, 20), r.randint(2, 20)
        return (
            f"A rectangle is {w} m long and {h} m wide. What is its area?",
            f"Area = {w} x {h} = {w * h} square meters.\n#### {w * h}",
        )
    if kind == 7:
        v, t = r.randint(3, 12) * 10, r.randint(2, 6)
        return (
            f"A train travels at {v} km/h for {t} hours. How far does it go?",
            f"Distance = {v} x {t} = {v * t} km.\n#### {v * t}",
        )
    if kind == 8:
        x, y = r.randint(10, 40), r.randint(10, 40)
        z = 3 * r.randint(10, 40) - x - y
        if z <= 0:
            z += 30
        z += (-(x + y + z)) % 3
        return (
            f"What is the average of {x}, {y} and {z}?",
            f"Sum = {x} + {y} + {z} = {x + y + z}. Average = {x + y + z} / 3 = {(x + y + z) // 3}."
            f"\n#### {(x + y + z) // 3}",
        )
    d = r.randint(2, 7)
    return (
        f"{name} reads {a} pages a day for {d} days, then {b} more pages. How many pages in total?",
        f"{a} x {d} = {a * d}. {a * d} + {b} = {a * d + b} pages.\n#### {a * d + b}",
    )


def make_dosage(r: random.Random) -> tuple[str, str]:
    drug = r.choice(["amoxicillin", "paracetamol", "ibuprofen", "cefazolin", "gentamicin", "vancomycin"])
    w, d = r.randint(8, 90), r.choice([2, 4, 5, 7, 10, 12, 15, 20])
    return (
        f"A patient weighs {w} kg. The dose of {drug} is {d} mg/kg. What is the total dose in mg?",
        f"Dose = {d} mg/kg x {w} kg = {d * w} mg.\n#### {d * w}",
    )


# --------------------------------------------------------------------------- medical

CONDITIONS = {
    "influenza": "fever, cough, sore throat, muscle aches and tiredness",
    "the common cold": "runny nose, sneezing, sore throat and a mild cough",
    "asthma": "wheezing, shortness of breath, chest tightness and coughing",
    "type 2 diabetes": "increased thirst, frequent urination, tiredness and blurred vision",
    "migraine": "throbbing headache, nausea and sensitivity to light and sound",
    "anemia": "tiredness, pale skin, weakness and shortness of breath",
    "dehydration": "thirst, dark urine, dizziness and a dry mouth",
    "hypothyroidism": "tiredness, weight gain, feeling cold and dry skin",
    "strep throat": "sore throat, fever, swollen glands and pain when swallowing",
    "pneumonia": "cough with phlegm, fever, chills and shortness of breath",
    "gastroenteritis": "diarrhea, vomiting, stomach cramps and mild fever",
    "allergic rhinitis": "sneezing, itchy eyes, runny nose and nasal congestion",
}
TERMS = {
    "hypertension": "high blood pressure",
    "tachycardia": "a fast heart rate, over 100 beats per minute",
    "bradycardia": "a slow heart rate, under 60 beats per minute",
    "analgesic": "a medicine that relieves pain",
    "antipyretic": "a medicine that lowers fever",
    "edema": "swelling caused by fluid in the tissues",
    "dyspnea": "difficulty breathing or shortness of breath",
    "hypoglycemia": "low blood sugar",
    "benign": "not cancerous and not spreading",
    "acute": "starting suddenly and lasting a short time",
    "chronic": "lasting a long time or coming back often",
    "prognosis": "the likely course of a disease",
    "contraindication": "a reason not to use a treatment",
    "pruritus": "itching of the skin",
}
PREVENTION = {
    "influenza": "get a yearly flu vaccine and wash hands often",
    "type 2 diabetes": "stay active, keep a healthy weight and eat more fiber",
    "dehydration": "drink water regularly, especially in heat or during exercise",
    "anemia": "eat iron-rich foods such as beans, spinach and lean meat",
    "the common cold": "wash hands often and avoid touching the face",
    "hypertension": "reduce salt, exercise regularly and limit alcohol",
}


def make_medical(r: random.Random) -> dict:
    kind = r.randrange(9)
    drug = r.choice(["amoxicillin", "paracetamol", "ibuprofen", "cefazolin", "gentamicin", "vancomycin"])
    if kind == 0:
        q, a = make_dosage(r)
        return {"instruction": q, "input": "", "output": a.split("\n")[0]}
    if kind == 1:
        w, d = r.randint(8, 90), r.choice([2, 5, 10, 15])
        return {
            "instruction": "Calculate the total dose.",
            "input": f"Weight: {w} kg. Ordered dose: {d} mg/kg of {drug}.",
            "output": f"{d} mg/kg x {w} kg = {d * w} mg of {drug}.",
        }
    if kind == 2:
        n, w = r.choice([2, 3, 4]), r.randint(5, 40)
        daily = n * r.randint(2, 10)
        return {
            "instruction": f"A child weighs {w} kg. The daily dose is {daily} mg/kg/day "
            f"in {n} divided doses. "
            "How much is each dose?",
            "input": "",
            "output": f"Daily: {daily} x {w} = {daily * w} mg. Each dose: {daily * w} / {n} = {daily * w // n} mg.",
        }
    if kind == 3:
        h = r.choice([2, 4, 5, 8, 10])
        v = h * r.randint(5, 25) * 10
        return {
            "instruction": f"Infuse {v} mL over {h} hours. What is the rate in mL/h?",
            "input": "",
            "output": f"Rate = {v} mL / {h} h = {v // h} mL/h.",
        }
    if kind == 4:
        t = r.choice([125, 250, 500])
        n = r.randint(1, 4)
        return {
            "instruction": f"The order is {t * n} mg of {drug}. Tablets contain {t} mg. How many tablets?",
            "input": "",
            "output": f"{t * n} mg / {t} mg per tablet = {n} tablet{'s' if n > 1 else ''}.",
        }
    if kind == 5:
        cond = r.choice(list(CONDITIONS))
        ask = r.choice(
            ["What are common symptoms of {c}?", "List the typical symptoms of {c}.", "Which symptoms suggest {c}?"]
        )
        return {
            "instruction": ask.format(c=cond),
            "input": "",
            "output": f"Common symptoms of {cond} include {CONDITIONS[cond]}.",
        }
    if kind == 6:
        term = r.choice(list(TERMS))
        ask = r.choice(
            ['What does the medical term "{t}" mean?', "Define {t}.", "Explain the term {t} in plain words."]
        )
        return {"instruction": ask.format(t=term), "input": "", "output": f"{term.capitalize()} means {TERMS[term]}."}
    if kind == 7:
        hr = r.randint(40, 130)
        verdict = (
            "Yes, it is within the normal adult range of 60 to 100 bpm."
            if 60 <= hr <= 100
            else f"No, it is {'below' if hr < 60 else 'above'} the normal adult range of 60 to 100 bpm."
        )
        return {
            "instruction": f"Is a resting heart rate of {hr} bpm normal for an adult?",
            "input": "",
            "output": verdict,
        }
    cond = r.choice(list(PREVENTION))
    return {
        "instruction": f"How can someone lower the risk of {cond}?",
        "input": "",
        "output": f"To lower the risk of {cond}, {PREVENTION[cond]}.",
    }


# --------------------------------------------------------------------------- reasoning

CATEGORIES = ["bloops", "razzies", "lazzies", "zorks", "mimbles", "quarps", "tovs", "fendles", "gribs", "snarks"]
COMPARISONS = [
    ("taller", "tallest", "shortest"),
    ("older", "oldest", "youngest"),
    ("faster", "fastest", "slowest"),
    ("heavier", "heaviest", "lightest"),
]
RULES = [
    ("it rains", "the ground gets wet"),
    ("the alarm rings", "Sam wakes up"),
    ("the store is open", "the lights are on"),
    ("water boils", "it is hot"),
    ("the plant gets sun", "it grows"),
    ("Mia studies", "she passes the test"),
]


def make_sequence(r: random.Random) -> tuple[str, str]:
    start, step = r.randint(1, 20), r.randint(2, 9)
    seq = [start + i * step for i in range(4)]
    return (
        f"What number comes next: {', '.join(map(str, seq))}, ?",
        f"Each number is {step} more than the one before. {seq[-1]} + {step} = {seq[-1] + step}."
        f"\n#### {seq[-1] + step}",
    )


def make_reasoning(r: random.Random) -> dict:
    kind = r.randrange(7)
    if kind == 0:
        a, b, c = r.sample(CATEGORIES, 3)
        return {
            "prompt": f"All {a} are {b}. All {b} are {c}. Are all {a} {c}?",
            "completion": f"Step 1: each of the {a} is one of the {b}. "
            f"Step 2: each of the {b} is one of the {c}. "
            "Answer: yes.",
        }
    if kind == 1:
        a, b, c = r.sample(CATEGORIES, 3)
        return {
            "prompt": f"All {a} are {b}. Some {b} are {c}. Must some {a} be {c}?",
            "completion": f"Step 1: the {b} that are {c} may not be {a}. "
            f"Step 2: so the {a} may all be outside "
            f"the {c}. Answer: no.",
        }
    if kind == 2:
        x, y, z = r.sample(NAMES, 3)
        more, top, bottom = r.choice(COMPARISONS)
        ask_top = r.random() < 0.5
        which = top if ask_top else bottom
        return {
            "prompt": f"{x} is {more} than {y}. {y} is {more} than {z}. Who is the {which}?",
            "completion": f"Step 1: the order is {x}, then {y}, then {z}. Step 2: the {which} "
            f"is {'first' if ask_top else 'last'}. Answer: {x if ask_top else z}.",
        }
    if kind == 3:
        p, q = r.choice(RULES)
        return {
            "prompt": f"If {p}, then {q}. We know that {p}. What follows?",
            "completion": f"Step 1: {p} leads to {q}. Step 2: {p} is true. Answer: {q}.",
        }
    if kind == 4:
        p, q = r.choice(RULES)
        return {
            "prompt": f"If {p}, then {q}. It is false that {q}. Is it true that {p}?",
            "completion": f"Step 1: {p} would mean {q}. Step 2: that is false, so {p} is false. Answer: no.",
        }
    if kind == 5:
        day, n = r.randrange(7), r.randint(2, 30)
        return {
            "prompt": f"Today is {DAYS[day]}. What day will it be in {n} days?",
            "completion": f"Step 1: {n} days is {n // 7} weeks and {n % 7} days. "
            f"Step 2: {DAYS[day]} plus {n % 7} "
            f"days is {DAYS[(day + n) % 7]}. Answer: {DAYS[(day + n) % 7]}.",
        }
    a, b = r.randint(1, 30), r.randint(1, 30)
    parity = "even" if (a + b) % 2 == 0 else "odd"
    return {
        "prompt": f"A box has {a} red balls and {b} blue balls. Is the total even or odd?",
        "completion": f"Step 1: {a} + {b} = {a + b}. "
        f"Step 2: {a + b} {'is' if parity == 'even' else 'is not'} "
        f"divisible by 2. Answer: {parity}.",
    }


# --------------------------------------------------------------------------- writing


def _unique(make: Callable[[random.Random], object], r: random.Random, n: int, key: Callable[[object], str]) -> list:
    """``n`` rows of ``make(r)`` with distinct ``key(row)``."""
    rows, seen = [], set()
    for _ in range(n * 200):
        row = make(r)
        if key(row) not in seen:
            seen.add(key(row))
            rows.append(row)
            if len(rows) == n:
                return rows
    raise RuntimeError(f"{make.__name__}: only {len(rows)} unique rows, wanted {n}")


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    default_out = Path(__file__).resolve().parents[1] / "brainstacks_pl" / "data" / "demo"
    parser.add_argument("--out", type=Path, default=default_out)
    parser.add_argument("--per-domain", type=int, default=400)
    parser.add_argument("--seed", type=int, default=1234)
    args = parser.parse_args(argv)
    out, n, seed = args.out, args.per_domain, args.seed
    out.mkdir(parents=True, exist_ok=True)

    def rng(offset: int) -> random.Random:  # one stream per domain: domains change independently
        return random.Random(seed + offset)

    planted_r = rng(100)
    dosage = _unique(make_dosage, planted_r, 5, key=lambda qa: qa[0])
    sequences = _unique(make_sequence, planted_r, 3, key=lambda qa: qa[0])
    planted = {q for q, _ in dosage + sequences}

    chat_r = rng(0)
    conversations = _unique(make_chat, chat_r, n, key=lambda turns: json.dumps(turns[:-1]))
    chat = [mark_up_chat(chat_r, turns) for turns in conversations]
    code = _unique(make_code, rng(1), n, key=lambda row: row["instruction"] + row["input"])
    math = _unique(make_math, rng(2), n, key=lambda qa: qa[0])
    math = [qa for qa in math if qa[0] not in planted][: n - len(planted)] + dosage + sequences
    medical = _unique(make_medical, rng(3), n, key=lambda row: row["instruction"] + row["input"])
    medical = [row for row in medical if row["instruction"] not in planted][: n - len(dosage)]
    medical += [{"instruction": q, "input": "", "output": a} for q, a in dosage]
    reasoning = _unique(make_reasoning, rng(4), n - len(sequences), key=lambda row: row["prompt"])
    reasoning += [{"prompt": q, "completion": a} for q, a in sequences]

    _write_jsonl(out / "chat.jsonl", chat)
    _write_jsonl(out / "code.jsonl", code)
    with open(out / "math.csv", "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["question", "answer"])
        writer.writerows(math)
    medical_json = json.dumps(medical, ensure_ascii=False, indent=0) + "\n"
    (out / "medical.json").write_text(medical_json, encoding="utf-8")
    _write_jsonl(out / "reasoning.jsonl", reasoning)
    for path in sorted(out.iterdir()):
        print(f"{path.name}: {path.stat().st_size / 1024:.1f} KiB")


if __name__ == "__main__":
    main()
