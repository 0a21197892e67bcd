"""The demo base's pretraining corpus: deterministic, generated general-purpose English.

Everyday paragraphs, short stories, definitions, "User: ... Assistant: ..." dialogue, numbers
and arithmetic in words and digits, tiny Python snippets and lists, from word lists kept here
in one place. It is deliberately *not* the domains' fine-tuning data: the base must speak
some English before the stacks learn a domain (``demo_base.py``).
"""

from __future__ import annotations

import random

__all__ = ["general_corpus"]


_NAMES = (
    "Anna",
    "Ben",
    "Chloé",
    "David",
    "Elena",
    "Farid",
    "Grace",
    "Hiro",
    "Iris",
    "Jonas",
    "Kemal",
    "Lena",
    "Marco",
    "Nadia",
    "Omar",
    "Priya",
    "Quinn",
    "Rosa",
    "Sam",
    "Tomás",
    "Uma",
    "Victor",
    "Wen",
    "Yara",
    "Zoe",
)
_PLACES = (
    "the park",
    "the market",
    "the library",
    "the beach",
    "the old town",
    "the station",
    "the garden",
    "the school",
    "the museum",
    "the harbour",
    "the bakery",
    "the forest",
    "the village",
    "the café",
)
_ANIMALS = ("cat", "dog", "fox", "owl", "rabbit", "horse", "duck", "bee", "turtle", "goat", "sparrow", "dolphin")
_OBJECTS = (
    "an old map",
    "a red umbrella",
    "a small key",
    "a letter",
    "a lost wallet",
    "a blue bicycle",
    "a wooden box",
    "a strange stone",
    "a book of poems",
    "a broken clock",
    "a paper kite",
)
_FEELINGS = ("happy", "surprised", "calm", "curious", "tired", "proud", "nervous", "grateful", "excited")
_ADJECTIVES = (
    "quiet",
    "busy",
    "bright",
    "cold",
    "warm",
    "small",
    "large",
    "green",
    "noisy",
    "peaceful",
    "crowded",
    "clean",
    "famous",
    "simple",
    "friendly",
)
_TIMES = (
    "In the morning",
    "Every Sunday",
    "Last summer",
    "One rainy day",
    "After lunch",
    "On Monday",
    "Late at night",
    "In the spring",
    "Once upon a time",
    "Yesterday",
    "Early in the evening",
)
_TOPICS = {
    "weather": (
        "The sky is {adj} today and the wind comes from the west.",
        "It will rain in the afternoon, so take a coat.",
        "In winter the days are short and the nights are long.",
        "The temperature is about {n} °C.",
    ),
    "cooking": (
        "To make soup, cut the vegetables and boil them in water.",
        "Fresh bread smells wonderful.",
        "Add a pinch of salt and stir for {n} minutes.",
        "A good meal does not need to be expensive.",
    ),
    "gardening": (
        "Tomatoes need a lot of sun and regular water.",
        "In autumn the leaves turn yellow and fall.",
        "Plant the seeds {n} centimetres deep.",
        "A {adj} garden is a good place to rest.",
    ),
    "travel": (
        "The train leaves at {n} o'clock.",
        "Pack light and bring a good pair of shoes.",
        "Many people visit {place} in the summer.",
        "A map helps when the streets are {adj}.",
    ),
    "school": (
        "The students read a chapter every week.",
        "The teacher wrote {n} questions on the board.",
        "Homework is easier when you start early.",
        "Reading every day builds a large vocabulary.",
    ),
    "work": (
        "The meeting starts at {n} and ends before lunch.",
        "A short list of tasks keeps the day in order.",
        "Good teams share information openly.",
        "She sent the report before the deadline.",
    ),
    "sports": (
        "The team practised for {n} hours.",
        "Running in the park is good exercise.",
        "The match ended in a draw.",
        "Stretching before a game prevents injuries.",
    ),
    "music": (
        "He plays the piano every evening.",
        "The concert in {place} was {adj} and full.",
        "A song often repeats its chorus.",
        "Music can make a long trip feel short.",
    ),
    "home": (
        "The kitchen is the warmest room in the house.",
        "Open the window to let fresh air in.",
        "They painted the walls a {adj} colour.",
        "There are {n} chairs around the table.",
    ),
    "nature": (
        "The river flows to the sea.",
        "A {animal} lives near the edge of the forest.",
        "Mountains are cold at the top.",
        "Bees carry pollen from flower to flower.",
    ),
}
_DEFINITIONS = {
    "calendar": "a table that shows the days, weeks and months of a year",
    "bridge": "a structure that carries a road or path across a river or valley",
    "library": "a place where books are kept for people to read or borrow",
    "recipe": "a list of ingredients and steps for making a dish",
    "umbrella": "a folding cover that protects you from rain",
    "planet": "a large body that moves around a star",
    "habit": "something you do regularly, often without thinking",
    "map": "a drawing of an area that shows where places are",
    "clock": "a device that shows the time",
    "friend": "a person you know well and like",
    "island": "a piece of land with water all around it",
    "question": "a sentence that asks for information",
    "list": "a number of items written one after another",
    "number": "a word or symbol that tells how many",
    "sentence": "a group of words that expresses a complete thought",
    "function": "a named piece of code that takes inputs and returns a result",
    "variable": "a name that refers to a value in a program",
    "garden": "a piece of ground where flowers or vegetables are grown",
    "market": "a place where people buy and sell goods",
    "forest": "a large area covered with trees",
    "season": "one of the four parts of the year",
    "battery": "a device that stores energy and gives electricity",
    "kettle": "a pot used for boiling water",
    "journey": "a trip from one place to another",
}
_REQUESTS = (
    (
        "make a cup of tea",
        (
            "Boil some water.",
            "Put a tea bag in a cup.",
            "Pour the water and wait three minutes.",
            "Remove the bag and add milk if you like.",
        ),
    ),
    (
        "plan a short trip",
        (
            "Choose a place and a date.",
            "Check the train times.",
            "Pack a small bag.",
            "Tell a friend where you are going.",
        ),
    ),
    (
        "learn new words",
        (
            "Read a little every day.",
            "Write down words you do not know.",
            "Use each new word in a sentence.",
            "Review the list at the end of the week.",
        ),
    ),
    (
        "keep a plant alive",
        ("Put it near a window.", "Water it when the soil is dry.", "Turn it now and then so it grows straight."),
    ),
    (
        "write a letter",
        ("Start with a greeting.", "Say why you are writing.", "Keep it short and clear.", "End with your name."),
    ),
    ("save some money", ("Write down what you spend.", "Set a small goal each month.", "Cook at home more often.")),
)
_GREETINGS = (
    ("Hello!", "Hello! How can I help you today?"),
    ("Good morning.", "Good morning! What would you like to do?"),
    ("Thank you.", "You are welcome."),
    ("Can you help me?", "Of course. What do you need?"),
    ("Goodbye.", "Goodbye, and have a nice day!"),
)
_ONES = (
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
)
_TENS = ("", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety")
_SHOPPING = ("milk", "bread", "eggs", "apples", "rice", "cheese", "tea", "butter", "onions", "soap", "pasta", "oranges")
_NOUNS = (
    "teacher",
    "farmer",
    "child",
    "doctor",
    "neighbour",
    "driver",
    "painter",
    "student",
    "baker",
    "sailor",
    "river",
    "window",
    "road",
    "letter",
    "song",
    "train",
    "city",
    "lamp",
    "bridge",
    "door",
    "cloud",
    "field",
)
_VERBS = (
    "opened",
    "watched",
    "carried",
    "painted",
    "found",
    "followed",
    "cleaned",
    "fixed",
    "visited",
    "counted",
    "described",
    "remembered",
    "passed",
    "closed",
    "built",
    "explained",
)
_ADVERBS = ("slowly", "carefully", "quickly", "quietly", "again", "together", "at last", "without a word", "twice")
_PREPS = ("near", "behind", "across", "under", "beside", "inside", "along", "past", "towards")
_FUNC_NAMES = ("add", "total", "combine", "merge", "plus")
_VARS = ("x", "y", "n", "count", "value", "item", "total", "score", "size")


def _number_words(n: int) -> str:
    """0..999 in English words: ``_number_words(42) == "forty-two"``."""
    if n < 20:
        return _ONES[n]
    if n < 100:
        return _TENS[n // 10] + ("" if n % 10 == 0 else "-" + _ONES[n % 10])
    rest = n % 100
    return _ONES[n // 100] + " hundred" + ("" if rest == 0 else " and " + _number_words(rest))


def _fill(rng: random.Random, template: str) -> str:
    return template.format(
        adj=rng.choice(_ADJECTIVES), n=rng.randint(2, 30), place=rng.choice(_PLACES), animal=rng.choice(_ANIMALS)
    )


def _topic_paragraph(rng: random.Random) -> str:
    topic = rng.choice(sorted(_TOPICS))
    lines = rng.sample(_TOPICS[topic], k=rng.randint(2, 4))
    intro = rng.choice((f"A few words about {topic}.", f"{topic.capitalize()}:", f"Notes on {topic}.", ""))
    return " ".join(x for x in [intro, *(_fill(rng, t) for t in lines)] if x)


def _story(rng: random.Random) -> str:
    a, b = rng.sample(_NAMES, 2)
    place, obj, animal = rng.choice(_PLACES), rng.choice(_OBJECTS), rng.choice(_ANIMALS)
    feeling = rng.choice(_FEELINGS)
    parts = [
        f"{rng.choice(_TIMES)}, {a} walked to {place}.",
        rng.choice((f"The streets were {rng.choice(_ADJECTIVES)}.", f"A {animal} followed {a} for a while.", "")),
        f"There, {a} found {obj}.",
        rng.choice(
            (
                f"{a} showed it to {b}, who laughed.",
                f"{b} asked where it came from.",
                f"{a} did not know what to do with it.",
            )
        ),
        rng.choice(
            (
                "Together they looked for its owner until the sun went down.",
                f"In the end, {a} gave it to {b} as a present.",
                f"{a} took it home and kept it safe.",
            )
        ),
        f"{a} felt {feeling}.",
    ]
    return " ".join(p for p in parts if p)


def _plain_sentences(rng: random.Random) -> str:
    """Freely combined subject-verb-object sentences: the corpus's main source of variety."""

    def np() -> str:
        return (
            f"{rng.choice(('the', 'a', 'every', 'one', 'that'))} "
            f"{rng.choice(_ADJECTIVES + ('',) * 8)} {rng.choice(_NOUNS)}"
        )

    sentences = []
    for _ in range(rng.randint(2, 5)):
        form = rng.randrange(3)
        if form == 0:
            s = f"{np()} {rng.choice(_VERBS)} {np()} {rng.choice(_ADVERBS)}"
        elif form == 1:
            s = f"{np()} {rng.choice(_VERBS)} {np()} {rng.choice(_PREPS)} {np()}"
        else:
            s = f"{rng.choice(_NAMES)} {rng.choice(_VERBS)} {np()}, and then {np()} {rng.choice(_VERBS)} {np()}"
        s = " ".join(s.split())
        sentences.append(s[0].upper() + s[1:] + rng.choice((".", ".", ".", "!")))
    return " ".join(sentences)


def _definition(rng: random.Random) -> str:
    word = rng.choice(sorted(_DEFINITIONS))
    meaning = _DEFINITIONS[word]
    article = "An" if word[0] in "aeiou" else "A"
    form = rng.randrange(3)
    if form == 0:
        return f"{article} {word} is {meaning}."
    if form == 1:
        return f"{word.capitalize()}: {meaning}."
    return f'The word "{word}" means {meaning}. For example: "{rng.choice(_NAMES)} talked about the {word}."'


def _dialogue(rng: random.Random) -> str:
    form = rng.randrange(4)
    if form == 0:
        word = rng.choice(sorted(_DEFINITIONS))
        return f"User: What is a {word}?\nAssistant: A {word} is {_DEFINITIONS[word]}."
    if form == 1:
        task, steps = rng.choice(_REQUESTS)
        body = " ".join(f"{i}. {s}" for i, s in enumerate(steps, 1)) if rng.random() < 0.5 else " Then ".join(steps)
        return f"User: How do I {task}?\nAssistant: Here is a simple way. {body}"
    if form == 2:
        a, b = rng.randint(1, 50), rng.randint(1, 50)
        return f"User: What is {a} plus {b}?\nAssistant: {a} plus {b} is {a + b}."
    hi, reply = rng.choice(_GREETINGS)
    return f"User: {hi}\nAssistant: {reply}"


def _arithmetic(rng: random.Random) -> str:
    a, b = rng.randint(0, 99), rng.randint(0, 99)
    form = rng.randrange(5)
    if form == 0:
        return (
            f"{_number_words(a).capitalize()} plus {_number_words(b)} "
            f"is {_number_words(a + b)}. In digits: {a} + {b} = {a + b}."
        )
    if form == 1:
        hi, lo = max(a, b), min(a, b)
        return f"{hi} - {lo} = {hi - lo}. Take {lo} away from {hi} and {hi - lo} are left."
    if form == 2:
        x, y = a % 13, b % 13
        return f"{x} times {y} is {x * y}, so {x} × {y} = {x * y}."
    if form == 3:
        name, fruit = rng.choice(_NAMES), rng.choice(("apples", "pears", "eggs", "books", "coins"))
        hi, lo = max(a, b), min(a, b)
        return f"{name} has {hi} {fruit} and gives away {lo}. Now {name} has {hi - lo} {fruit}."
    start = rng.randint(1, 20)
    return "Counting: " + ", ".join(_number_words(i) for i in range(start, start + rng.randint(3, 8))) + "."


def _python_snippet(rng: random.Random) -> str:
    v = rng.sample(_VARS, 2)
    form = rng.randrange(4)
    if form == 0:
        return f"def {rng.choice(_FUNC_NAMES)}({v[0]}, {v[1]}):\n    return {v[0]} + {v[1]}\n"
    if form == 1:
        k = rng.randint(2, 9)
        return f"for {v[0]} in range({k}):\n    print({v[0]} * {v[0]})\n"
    if form == 2:
        items = rng.sample(_SHOPPING, 3)
        return f"{v[0]} = {items!r}\nprint(len({v[0]}))  # prints 3\n"
    return f"if {v[0]} > {rng.randint(0, 9)}:\n    {v[1]} = {v[0]} - 1\nelse:\n    {v[1]} = 0\n"


def _list_doc(rng: random.Random) -> str:
    if rng.random() < 0.5:
        return "Shopping list:\n" + "\n".join(f"- {x}" for x in rng.sample(_SHOPPING, rng.randint(3, 6)))
    task, steps = rng.choice(_REQUESTS)
    return f"How to {task}:\n" + "\n".join(f"{i}. {s}" for i, s in enumerate(steps, 1))


_KINDS = (
    (_plain_sentences, 3),
    (_topic_paragraph, 3),
    (_story, 3),
    (_definition, 2),
    (_dialogue, 3),
    (_arithmetic, 2),
    (_python_snippet, 1),
    (_list_doc, 1),
)


def general_corpus(seed: int = 0, n_docs: int = 4000) -> list[str]:
    """``n_docs`` generated general-text documents (~500 characters each), deterministic in ``seed``.

    Each document strings together 2-5 pieces of mixed kinds (paragraphs, stories, definitions,
    dialogue, arithmetic, code, lists). The default size is ~1.5 MB of text.
    """
    rng = random.Random(seed)
    makers = [m for m, w in _KINDS for _ in range(w)]
    docs = []
    for _ in range(n_docs):
        pieces = [rng.choice(makers)(rng) for _ in range(rng.randint(2, 5))]
        docs.append("\n\n".join(pieces))
    return docs
