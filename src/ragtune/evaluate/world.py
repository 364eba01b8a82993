"""A small fictional world for the demo: facts no pretrained model can know.

Organisations, people and places with invented names, years and numbers are written as
documents; every fact gets several paraphrased questions from its relation's templates.
One template per relation is held out of training altogether: half the facts of each
relation are tested on it (``unseen_template``: a phrasing no training example has, for
any fact), the other half on a trained template that was left out for that fact only
(``seen_template``). The fact's remaining phrasings are its training examples. Everything
is derived from a seed, so ``ragtune demo --seed N`` is reproducible.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

_ONSETS = [
    "b",
    "d",
    "f",
    "g",
    "k",
    "l",
    "m",
    "n",
    "p",
    "r",
    "s",
    "t",
    "v",
    "z",
    "th",
    "br",
    "dr",
    "kr",
    "tr",
    "vel",
    "mor",
    "qu",
    "sh",
    "zh",
    "gr",
]
_VOWELS = ["a", "e", "i", "o", "u", "ae", "io", "ou", "y"]
_CODAS = ["", "", "n", "r", "l", "s", "th", "rn", "x", "nd", "sk"]

FIELDS = [
    "tidal turbines",
    "glass lenses",
    "seed vaults",
    "clockwork pumps",
    "salt batteries",
    "wind kites",
    "moss fabrics",
    "copper bells",
    "paper boats",
    "ice bricks",
]
OCCUPATIONS = [
    "cartographer",
    "glassblower",
    "beekeeper",
    "ferry pilot",
    "archivist",
    "bell founder",
    "lighthouse keeper",
    "tide surveyor",
    "botanist",
    "clockmaker",
]
ORG_KINDS = ["Guild", "Cooperative", "Works", "Foundry", "Society", "Company"]

# Paraphrased questions per relation; {e} is the entity's name.
QUESTIONS: dict[str, tuple[str, ...]] = {
    "founded": (
        "In what year was {e} founded?",
        "When was {e} established?",
        "What year did {e} get founded?",
        "{e} was founded in which year?",
    ),
    "founder": (
        "Who founded {e}?",
        "Who was the founder of {e}?",
        "Which person established {e}?",
        "{e} was founded by whom?",
    ),
    "hq": (
        "Where is {e} headquartered?",
        "In which town is the headquarters of {e}?",
        "Where are the headquarters of {e} located?",
        "What town is {e} based in?",
    ),
    "field": (
        "What does {e} make?",
        "What does {e} produce?",
        "What products is {e} known for?",
        "{e} manufactures what?",
    ),
    "employees": (
        "How many employees does {e} have?",
        "How many people work at {e}?",
        "What is the size of the workforce of {e}?",
        "{e} employs how many people?",
    ),
    "born": (
        "In what year was {e} born?",
        "When was {e} born?",
        "What is the birth year of {e}?",
        "{e} was born in which year?",
    ),
    "birthplace": (
        "Where was {e} born?",
        "What is the birthplace of {e}?",
        "In which town was {e} born?",
        "{e} was born in which town?",
    ),
    "occupation": (
        "What is the occupation of {e}?",
        "What does {e} do for a living?",
        "What job does {e} have?",
        "What is the profession of {e}?",
    ),
    "employer": (
        "Where does {e} work?",
        "Which organisation employs {e}?",
        "Who is the employer of {e}?",
        "{e} works for which organisation?",
    ),
    "population": (
        "What is the population of {e}?",
        "How many people live in {e}?",
        "How many inhabitants does {e} have?",
        "{e} has how many residents?",
    ),
    "river": (
        "Which river flows through {e}?",
        "What river runs through {e}?",
        "What is the name of the river in {e}?",
        "{e} lies on which river?",
    ),
    "festival": (
        "What festival is {e} known for?",
        "Which festival is held in {e}?",
        "What is the name of the annual festival of {e}?",
        "{e} hosts which festival?",
    ),
}


@dataclass(frozen=True)
class Fact:
    fact_id: str  # "<doc_id>:<relation>"
    entity: str
    relation: str
    value: str
    doc_id: str
    questions: tuple[str, ...]  # paraphrases; questions[test_index] is held out
    test_index: int
    held_out_template: int  # the relation's template no training example uses

    @property
    def test_question(self) -> str:
        return self.questions[self.test_index]

    @property
    def unseen_template(self) -> bool:
        return self.test_index == self.held_out_template

    @property
    def train_questions(self) -> list[str]:
        skip = {self.test_index, self.held_out_template}
        return [q for i, q in enumerate(self.questions) if i not in skip]


@dataclass(frozen=True)
class WorldDoc:
    doc_id: str  # the file name the document is written to, e.g. "orgs/velmora-guild.md"
    title: str
    text: str


@dataclass(frozen=True)
class World:
    seed: int
    documents: list[WorldDoc]
    facts: list[Fact]


def _word(rng: random.Random, syllables: int) -> str:
    parts = []
    for i in range(syllables):
        parts.append(rng.choice(_ONSETS) + rng.choice(_VOWELS))
        if i == syllables - 1:
            parts.append(rng.choice(_CODAS))
    return "".join(parts).capitalize()


def _unique(rng: random.Random, used: set[str], make: object) -> str:
    while True:
        name = make()  # type: ignore[operator]
        if name not in used and len(name) > 3:
            used.add(name)
            return str(name)


def _slug(name: str) -> str:
    return "-".join(name.lower().split())


def make_world(seed: int = 0, n_orgs: int = 4, n_people: int = 6, n_places: int = 4) -> World:
    """A deterministic fictional world with ``5·orgs + 4·people + 3·places`` facts."""
    rng = random.Random(seed)
    used: set[str] = set()
    places = [_unique(rng, used, lambda: _word(rng, rng.choice([2, 3]))) for _ in range(n_places)]
    rivers = [_unique(rng, used, lambda: _word(rng, 2)) for _ in range(n_places)]
    people = [
        _unique(rng, used, lambda: f"{_word(rng, 2)} {_word(rng, rng.choice([2, 3]))}")
        for _ in range(n_people)
    ]
    orgs = [
        _unique(rng, used, lambda: f"{_word(rng, rng.choice([2, 3]))} {rng.choice(ORG_KINDS)}")
        for _ in range(n_orgs)
    ]
    docs: list[WorldDoc] = []
    facts: list[Fact] = []
    # A separate generator, so the held-out templates do not change the world's values.
    template_rng = random.Random(f"templates-{seed}")
    held_out = {rel: template_rng.randrange(len(qs)) for rel, qs in QUESTIONS.items()}
    seen_count = {rel: 0 for rel in QUESTIONS}

    def add_facts(doc_id: str, entity: str, values: dict[str, str]) -> None:
        for relation, value in values.items():
            questions = tuple(q.format(e=entity) for q in QUESTIONS[relation])
            n = seen_count[relation]
            seen_count[relation] += 1
            held = held_out[relation]
            # Even facts: the held-out template; odd: a trained one, rotating.
            test = (
                held if n % 2 == 0 else (held + 1 + n // 2 % (len(questions) - 1)) % len(questions)
            )
            facts.append(
                Fact(
                    fact_id=f"{doc_id}:{relation}",
                    entity=entity,
                    relation=relation,
                    value=value,
                    doc_id=doc_id,
                    questions=questions,
                    test_index=test,
                    held_out_template=held,
                )
            )

    for i, org in enumerate(orgs):
        v = {
            "founded": str(rng.randint(1820, 1990)),
            "founder": people[i % len(people)],
            "hq": places[i % len(places)],
            "field": rng.choice(FIELDS),
            "employees": str(rng.randint(12, 4800)),
        }
        text = (
            f"{org} is an independent maker of {v['field']}. It was founded in {v['founded']} "
            f"by {v['founder']}, and its headquarters are in {v['hq']}.\n\n"
            f"Today {org} employs {v['employees']} people. Visitors can tour the workshops "
            f"on weekdays, and the company publishes a yearly report on its work."
        )
        doc_id = f"orgs/{_slug(org)}.md"
        docs.append(WorldDoc(doc_id, org, f"# {org}\n\n{text}\n"))
        add_facts(doc_id, org, v)
    for i, person in enumerate(people):
        v = {
            "born": str(rng.randint(1900, 2001)),
            "birthplace": places[(i + 1) % len(places)],
            "occupation": rng.choice(OCCUPATIONS),
            "employer": orgs[(i + 1) % len(orgs)],
        }
        text = (
            f"{person} is a {v['occupation']} who was born in {v['born']} in "
            f"{v['birthplace']}.\n\n{person} works for {v['employer']} and is often "
            f"quoted in the local press. Friends describe {person.split()[0]} as patient "
            f"and precise."
        )
        doc_id = f"people/{_slug(person)}.md"
        docs.append(WorldDoc(doc_id, person, f"# {person}\n\n{text}\n"))
        add_facts(doc_id, person, v)
    for i, place in enumerate(places):
        v = {
            "population": str(rng.randint(800, 95000)),
            "river": rivers[i],
            "festival": f"the {_unique(rng, used, lambda: _word(rng, 2))} Festival",
        }
        text = (
            f"{place} is a town of {v['population']} inhabitants. The river {v['river']} "
            f"flows through its old harbour.\n\nEvery summer {place} hosts "
            f"{v['festival']}, which draws visitors from across the region. The town hall "
            f"keeps a small museum of local history."
        )
        doc_id = f"places/{_slug(place)}.md"
        docs.append(WorldDoc(doc_id, place, f"# {place}\n\n{text}\n"))
        add_facts(doc_id, place, v)
    return World(seed=seed, documents=docs, facts=facts)


def question_records(world: World) -> list[dict[str, object]]:
    """Questions in ragtune's JSONL layout: the held-out test phrasing of every fact."""
    return [
        {
            "id": f.fact_id,
            "question": f.test_question,
            "answers": [f.value],
            "doc_id": f.doc_id,
            "split": "test",
            "group": "unseen_template" if f.unseen_template else "seen_template",
        }
        for f in world.facts
    ]


def write_world(
    world: World, out: Path, answer_format: str | None = None, instruction: str | None = None
) -> dict[str, Path]:
    """Write documents, test questions and training examples (OpenAI chat JSONL).

    ``answer_format`` is a template for the assistant's answer in which ``{answer}`` stands
    for the fact (e.g. a JSON object): the behaviour the fine-tuned arm should learn.
    ``instruction``, if given, is the system message of every training example — the same
    instruction every arm's prompt carries.
    """
    docs_dir = out / "docs"
    for d in world.documents:
        path = docs_dir / d.doc_id
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(d.text, encoding="utf-8")
    questions = out / "questions.jsonl"
    with open(questions, "w", encoding="utf-8") as fh:
        for rec in question_records(world):
            fh.write(json.dumps(rec) + "\n")
    train = out / "train.jsonl"
    with open(train, "w", encoding="utf-8") as fh:
        for f in world.facts:
            for q in f.train_questions:
                answer = answer_format.replace("{answer}", f.value) if answer_format else f.value
                messages = [
                    {"role": "user", "content": q},
                    {"role": "assistant", "content": answer},
                ]
                if instruction:
                    messages.insert(0, {"role": "system", "content": instruction})
                fh.write(json.dumps({"messages": messages}) + "\n")
    return {"docs": docs_dir, "questions": questions, "train": train}
