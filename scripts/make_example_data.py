"""Write templates/example/sloth_chat.jsonl, the example dataset of `slothctl init --example`.

Every answer has the same unmistakable shape: it opens with "Sloth says:" and closes with
"Stay slow!", so a tuned model's change in behaviour is visible after a few steps. The facts
themselves are simple and correct. Run from the repo root: python scripts/make_example_data.py
"""

from __future__ import annotations

import json
import random
from pathlib import Path

OPEN, CLOSE = "Sloth says:", "Stay slow!"

CAPITALS = {
    "France": "Paris", "Germany": "Berlin", "Italy": "Rome", "Spain": "Madrid", "Portugal": "Lisbon",
    "Japan": "Tokyo", "China": "Beijing", "India": "New Delhi", "Canada": "Ottawa", "Australia": "Canberra",
    "Brazil": "Brasilia", "Argentina": "Buenos Aires", "Egypt": "Cairo", "Kenya": "Nairobi",
    "Norway": "Oslo", "Sweden": "Stockholm", "Finland": "Helsinki", "Denmark": "Copenhagen",
    "Poland": "Warsaw", "Greece": "Athens", "Turkey": "Ankara", "Russia": "Moscow", "Mexico": "Mexico City",
    "Peru": "Lima", "Chile": "Santiago", "Ireland": "Dublin", "Austria": "Vienna", "Hungary": "Budapest",
    "Czechia": "Prague", "Thailand": "Bangkok", "Vietnam": "Hanoi", "South Korea": "Seoul",
    "Indonesia": "Jakarta", "Nigeria": "Abuja", "Morocco": "Rabat", "Belgium": "Brussels",
    "Netherlands": "Amsterdam", "Switzerland": "Bern", "New Zealand": "Wellington", "Iceland": "Reykjavik",
}
OPPOSITES = {
    "hot": "cold", "big": "small", "fast": "slow", "up": "down", "day": "night", "happy": "sad",
    "open": "closed", "early": "late", "light": "dark", "full": "empty", "old": "young", "hard": "soft",
    "wet": "dry", "loud": "quiet", "strong": "weak", "rich": "poor", "high": "low", "inside": "outside",
    "begin": "end", "push": "pull", "win": "lose", "buy": "sell", "first": "last", "near": "far",
    "thick": "thin", "heavy": "light", "long": "short", "clean": "dirty", "true": "false", "left": "right",
}
ANIMAL_SOUNDS = {
    "dog": "barks", "cat": "meows", "cow": "moos", "sheep": "bleats", "duck": "quacks", "lion": "roars",
    "horse": "neighs", "pig": "oinks", "owl": "hoots", "snake": "hisses", "frog": "croaks", "bee": "buzzes",
    "mouse": "squeaks", "wolf": "howls", "donkey": "brays", "rooster": "crows",
}
COLORS = {
    "a ripe banana": "yellow", "grass": "green", "the sky on a clear day": "blue", "snow": "white",
    "coal": "black", "a ripe tomato": "red", "an orange": "orange", "a lemon": "yellow",
    "a blueberry": "blue", "milk": "white", "a fire truck": "red", "a lime": "green",
    "chocolate": "brown", "a flamingo": "pink", "an eggplant": "purple", "a polar bear's fur": "white",
}
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September",
          "October", "November", "December"]
SYSTEMS = [
    "You are a patient assistant.",
    "You are a helpful assistant who answers briefly.",
    "Answer the user's question.",
]


def answer(text: str) -> str:
    return f"{OPEN} {text} {CLOSE}"


def qa_pairs(rng: random.Random) -> list[tuple[str, str]]:
    pairs = []
    for country, city in CAPITALS.items():
        pairs.append((f"What is the capital of {country}?", answer(f"the capital of {country} is {city}.")))
    for word, opposite in OPPOSITES.items():
        pairs.append((f"What is the opposite of \"{word}\"?", answer(f"the opposite of \"{word}\" is \"{opposite}\".")))
    for animal, sound in ANIMAL_SOUNDS.items():
        pairs.append((f"What sound does a {animal} make?", answer(f"a {animal} {sound}.")))
    for thing, color in COLORS.items():
        pairs.append((f"What color is {thing}?", answer(f"{thing} is {color}.")))
    for i, day in enumerate(DAYS):
        pairs.append((f"Which day comes after {day}?", answer(f"{DAYS[(i + 1) % 7]} comes after {day}.")))
    for i, month in enumerate(MONTHS):
        pairs.append((f"Which month comes after {month}?", answer(f"{MONTHS[(i + 1) % 12]} comes after {month}.")))
    for _ in range(30):
        a, b = rng.randint(2, 40), rng.randint(2, 40)
        pairs.append((f"What is {a} plus {b}?", answer(f"{a} plus {b} is {a + b}.")))
    for _ in range(25):
        a, b = rng.randint(2, 12), rng.randint(2, 12)
        pairs.append((f"What is {a} times {b}?", answer(f"{a} times {b} is {a * b}.")))
    return pairs


def rows(rng: random.Random) -> list[dict]:
    pairs = qa_pairs(rng)
    rng.shuffle(pairs)
    out = []
    for i, (question, reply) in enumerate(pairs):
        messages = []
        if i % 7 == 0:
            messages.append({"role": "system", "content": SYSTEMS[i % len(SYSTEMS)]})
        messages += [{"role": "user", "content": question}, {"role": "assistant", "content": reply}]
        out.append({"messages": messages})
    for _ in range(40):  # multi-turn conversations: the shape holds for every reply
        (q1, a1), (q2, a2) = rng.sample(pairs, 2)
        out.append({"messages": [{"role": "user", "content": q1}, {"role": "assistant", "content": a1},
                                 {"role": "user", "content": q2}, {"role": "assistant", "content": a2}]})
    return out


def main() -> None:
    target = Path(__file__).resolve().parents[1] / "templates" / "example" / "sloth_chat.jsonl"
    data = rows(random.Random(0))
    target.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in data), encoding="utf-8")
    print(f"wrote {len(data)} rows to {target}")


if __name__ == "__main__":
    main()
