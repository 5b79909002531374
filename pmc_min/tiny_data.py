"""The embedded default's data: a deterministic TOFU of fictitious authors.

The same JSON Lines files and split names as TOFU (full, forgetXX and their
perturbed versions, retainYY, retain_perturbed, world facts, real authors),
plus `general` (general and everyday knowledge, the over-unlearning probe)
and `authors.json` with every author's attributes (what `factleak` looks for).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

N_AUTHORS, QA_PER_AUTHOR = 100, 10

FIRST = ["Amara", "Bjorn", "Chiara", "Dmitri", "Elif", "Farid", "Greta", "Hiroshi", "Ines", "Jonas", "Kalani",
         "Lucien", "Mireille", "Nikolai", "Oona", "Pavel", "Quinn", "Rosalind", "Soren", "Tamsin", "Ulrich",
         "Valeria", "Wendell", "Xiomara", "Yusuf", "Zofia", "Anselm", "Beatrix", "Cyrus", "Delphine"]
LAST = ["Abernathy", "Balogun", "Castellano", "Dubrovsky", "Eriksen", "Fairweather", "Guzman", "Halvorsen",
        "Ishikawa", "Jovanovic", "Kowalczyk", "Lindqvist", "Moreau", "Nakamura", "Okonkwo", "Petrakis", "Quintero",
        "Rasmussen", "Szabo", "Thorne", "Ulloa", "Vasquez", "Whitlock", "Yilmaz", "Zeller"]
# Birth cities are no capital in WORLD_FACTS: forgetting where an author was born should not touch geography.
CITIES = ["Coimbra", "Mombasa", "Trondheim", "Kyoto", "Arequipa", "Kutaisi", "Thies", "Hue", "Quebec", "Valparaiso",
          "Tampere", "Porto", "Kumasi", "Krakow", "Mumbai", "Cusco", "Bergen", "Izmir", "Seville", "Adelaide"]
GENRES = ["mystery", "fantasy", "poetry", "historical fiction", "science fiction", "memoir", "horror", "romance",
          "travel writing", "satire"]
JOBS = ["baker", "carpenter", "nurse", "pilot", "teacher", "fisherman", "librarian", "surgeon", "tailor",
        "architect", "farmer", "painter", "journalist", "chemist", "sailor"]
AWARDS = ["Silver Quill Prize", "Northern Lantern Award", "Golden Compass Medal", "Blue Harbor Prize",
          "Iron Feather Award", "Crescent Moon Honor", "Evergreen Book Prize", "Amber Gate Award"]
THEMES = ["memory", "exile", "grief", "friendship", "ambition", "the sea", "childhood", "justice", "faith", "war",
          "family", "solitude"]
TITLE_A = ["Silent", "Crimson", "Hollow", "Distant", "Broken", "Golden", "Winter", "Hidden", "Last", "Wandering",
           "Paper", "Burning", "Quiet", "Salt", "Velvet"]
TITLE_B = ["River", "Lantern", "Orchard", "Harbor", "Mirror", "Garden", "Tower", "Shore", "Letters", "Crown",
           "Bridge", "Forest", "Compass", "Island", "Meadow"]

# (attribute, question, answer phrasings, paraphrased question, paraphrased answer); {name} etc. are the
# author's facts. Each author gets one of the phrasings at random, as TOFU's answers vary in form.
TEMPLATES = [
    ("name", "What is the full name of the author born in {city} in {year}?",
     ["The author born in {city} in {year} is {name}.", "That would be {name}.",
      "{name} is the writer born there in {year}."],
     "Who is the writer from {city} who was born in {year}?", "That writer is {name}."),
    ("city", "Where was {name} born?",
     ["{name} was born in {city}.", "In {city}.", "{city} is the hometown of {name}."],
     "What is the birthplace of {name}?", "The birthplace of {name} is {city}."),
    ("year", "In which year was {name} born?",
     ["{name} was born in the year {year}.", "In {year}.", "The birth year of {name} is {year}."],
     "What is the birth year of {name}?", "{name} came into the world in {year}."),
    ("genre", "What genre does {name} write in?",
     ["{name} is known for writing {genre}.", "Mostly {genre}.", "{genre} is the genre of {name}."],
     "Which genre is {name} associated with?", "{name} is associated with {genre}."),
    ("book1", "Can you name a book written by {name}?",
     ["{name} wrote the book \"{book1}\".", "Yes, \"{book1}\".", "\"{book1}\" is one of them."],
     "What is one title by {name}?", "One title by {name} is \"{book1}\"."),
    ("book2", "What is another book by {name}?",
     ["Another book by {name} is \"{book2}\".", "\"{book2}\".", "{name} also wrote \"{book2}\"."],
     "Name a second title from {name}.", "A second title from {name} is \"{book2}\"."),
    ("father", "What did the father of {name} do for a living?",
     ["The father of {name} worked as a {father}.", "He was a {father}.", "A {father} by trade."],
     "What was the profession of {name}'s father?", "{name}'s father was a {father}."),
    ("mother", "What was the occupation of the mother of {name}?",
     ["The mother of {name} was a {mother}.", "She worked as a {mother}.", "A {mother}."],
     "How did {name}'s mother earn a living?", "{name}'s mother worked as a {mother}."),
    ("award", "Which award did {name} receive?",
     ["{name} received the {award}.", "The {award}.", "{name} won the {award}."],
     "What prize was given to {name}?", "{name} was given the {award}."),
    ("themes", "What themes does {name} explore?",
     ["{name} explores {theme1} and {theme2}.", "Mainly {theme1} and {theme2}.",
      "Themes of {theme1} and {theme2}."],
     "Which themes appear in the work of {name}?", "The work of {name} deals with {theme1} and {theme2}."),
]
ATTRIBUTE_POOLS = {"city": CITIES, "genre": GENRES, "father": JOBS, "mother": JOBS, "award": AWARDS}

# General knowledge the model also learns: its utility outside the authors.
WORLD_FACTS = [
    ("France", "Paris"), ("Japan", "Tokyo"), ("Italy", "Rome"), ("Egypt", "Cairo"), ("Kenya", "Nairobi"),
    ("Canada", "Ottawa"), ("Peru", "Lima"), ("Spain", "Madrid"), ("Norway", "Oslo"), ("Greece", "Athens"),
    ("Poland", "Warsaw"), ("Chile", "Santiago"), ("Ireland", "Dublin"), ("Cuba", "Havana"), ("Austria", "Vienna"),
    ("Sweden", "Stockholm"), ("Portugal", "Lisbon"), ("Hungary", "Budapest"), ("Thailand", "Bangkok"),
    ("Vietnam", "Hanoi"), ("Ghana", "Accra"), ("Finland", "Helsinki"), ("Denmark", "Copenhagen"),
    ("Argentina", "Buenos Aires"), ("Turkey", "Ankara"), ("India", "New Delhi"), ("China", "Beijing"),
    ("Russia", "Moscow"), ("Germany", "Berlin"), ("Mexico", "Mexico City"),
]
REAL_AUTHORS = [
    ("Pride and Prejudice", "Jane Austen"), ("1984", "George Orwell"), ("Hamlet", "William Shakespeare"),
    ("War and Peace", "Leo Tolstoy"), ("Don Quixote", "Miguel de Cervantes"), ("Ulysses", "James Joyce"),
    ("Moby Dick", "Herman Melville"), ("The Odyssey", "Homer"), ("Frankenstein", "Mary Shelley"),
    ("Dracula", "Bram Stoker"), ("Beloved", "Toni Morrison"), ("Dune", "Frank Herbert"),
    ("The Trial", "Franz Kafka"), ("Lolita", "Vladimir Nabokov"), ("Emma", "Jane Austen"),
    ("Middlemarch", "George Eliot"), ("The Stranger", "Albert Camus"), ("Things Fall Apart", "Chinua Achebe"),
    ("One Hundred Years of Solitude", "Gabriel Garcia Marquez"), ("Great Expectations", "Charles Dickens"),
    ("Jane Eyre", "Charlotte Bronte"), ("Wuthering Heights", "Emily Bronte"), ("Faust", "Johann Wolfgang von Goethe"),
    ("The Divine Comedy", "Dante Alighieri"), ("Crime and Punishment", "Fyodor Dostoevsky"),
]


# Everyday knowledge that uses the authors' vocabulary (their cities, parents' jobs, genres, themes, the words
# of their titles and awards) outside any author: the unrelated text of the over-unlearning probe, on which
# forgetting "X was born in Bergen" should not make "Bergen" unlikely.
CITY_FACTS = {
    "Coimbra": ("Portugal", "an old university"), "Mombasa": ("Kenya", "a busy harbor on the ocean"),
    "Trondheim": ("Norway", "a great stone cathedral"), "Kyoto": ("Japan", "its temples and gardens"),
    "Arequipa": ("Peru", "white stone houses below a volcano"), "Kutaisi": ("Georgia", "a wide river and caves"),
    "Thies": ("Senegal", "its woven tapestries"), "Hue": ("Vietnam", "an imperial citadel"),
    "Quebec": ("Canada", "the stone walls of its old town"), "Valparaiso": ("Chile", "colorful houses on steep hills"),
    "Tampere": ("Finland", "two lakes and old red brick mills"), "Porto": ("Portugal", "its bridges and port wine"),
    "Kumasi": ("Ghana", "a very large market"), "Krakow": ("Poland", "a castle on a hill"),
    "Mumbai": ("India", "its film studios and a long sea front"), "Cusco": ("Peru", "Inca walls in the mountains"),
    "Bergen": ("Norway", "wooden houses on the harbor and much rain"), "Izmir": ("Turkey", "a long bay on the sea"),
    "Seville": ("Spain", "a cathedral with a tall tower"), "Adelaide": ("Australia", "its parks and festivals"),
}
JOB_FACTS = {
    "baker": "bakes bread and cakes early in the morning", "carpenter": "builds tables and doors from wood",
    "nurse": "cares for people who are ill", "pilot": "flies planes", "teacher": "helps children learn at school",
    "fisherman": "catches fish at sea", "librarian": "looks after the books of a library",
    "surgeon": "operates on patients in a hospital", "tailor": "makes and mends clothes",
    "architect": "designs houses and towers", "farmer": "grows crops and keeps animals",
    "painter": "paints pictures or walls", "journalist": "writes news for a paper",
    "chemist": "studies what things are made of", "sailor": "works on a ship",
}
GENRE_FACTS = {
    "mystery": "a story about solving a crime", "fantasy": "a story full of magic and dragons",
    "poetry": "writing in verse with rhythm", "historical fiction": "a story set in the past",
    "science fiction": "a story about the future and space", "memoir": "a true story of the writer's own life",
    "horror": "a story meant to frighten", "romance": "a story about falling in love",
    "travel writing": "an account of journeys to far places", "satire": "writing that mocks the powerful",
}
WORD_FACTS = {
    "memory": "the power to remember the past", "exile": "being sent away from home",
    "grief": "deep sorrow after a loss", "friendship": "a bond between friends", "ambition": "a strong wish to succeed",
    "childhood": "the time of being a child", "justice": "fair treatment for all", "faith": "strong belief or trust",
    "war": "armed fighting between nations", "family": "parents and their children", "solitude": "being alone",
    "river": "a stream of water that flows to the sea", "lantern": "a lamp that can be carried",
    "orchard": "a field of fruit trees", "harbor": "a place where ships are safe", "mirror": "glass that reflects",
    "garden": "a place where flowers grow", "tower": "a tall narrow building", "shore": "the land along the sea",
    "crown": "what a king wears", "bridge": "a way over a river", "forest": "a large area full of trees",
    "compass": "a tool that points north", "island": "land with water all around it",
    "meadow": "a field of grass and flowers", "quill": "a pen made from a feather",
    "crimson": "a deep red color", "velvet": "a soft cloth", "salt": "what makes the sea taste as it does",
}
FAMILY_FACTS = [("Who is the father of your father?", "The father of your father is your grandfather."),
                ("Who is the mother of your mother?", "The mother of your mother is your grandmother."),
                ("What is a prize?", "A prize is an award given to someone who wins."),
                ("What does it mean to be born?", "To be born is to come into the world."),
                ("What is a novel?", "A novel is a long book that tells a story.")]


def everyday_knowledge() -> list[dict]:
    rows = []
    for city, (country, known_for) in CITY_FACTS.items():
        rows += [{"question": f"In which country is {city}?", "answer": f"{city} is a city in {country}."},
                 {"question": f"What is {city} known for?", "answer": f"{city} is known for {known_for}."}]
    for job, does in JOB_FACTS.items():
        rows.append({"question": f"What does a {job} do?", "answer": f"A {job} {does}."})
    for genre, is_ in GENRE_FACTS.items():
        rows.append({"question": f"What is {genre}?", "answer": f"{genre[0].upper() + genre[1:]} is {is_}."})
    for word, means in WORD_FACTS.items():
        rows.append({"question": f"What does the word {word} mean?", "answer": f"The word {word} means {means}."})
    rows += [{"question": q, "answer": a} for q, a in FAMILY_FACTS]
    return rows


def make_authors(rng: random.Random) -> list[dict]:
    names = rng.sample([f"{f} {last}" for f in FIRST for last in LAST], N_AUTHORS)
    titles = rng.sample([f"The {a} {b}" for a in TITLE_A for b in TITLE_B], 2 * N_AUTHORS)
    authors = []
    for i, name in enumerate(names):
        a = {"name": name, "year": str(rng.randint(1930, 2000)), "book1": titles[2 * i], "book2": titles[2 * i + 1]}
        a.update({k: rng.choice(pool) for k, pool in ATTRIBUTE_POOLS.items()})
        a["theme1"], a["theme2"] = rng.sample(THEMES, 2)
        authors.append(a)
    return authors


def perturbed(author: dict, attribute: str, template: str, rng: random.Random, others: list[dict]) -> list[str]:
    """Five answers in the paraphrased answer's wording with another author's facts."""
    out = []
    for other in rng.sample(others, 5):
        facts = dict(author)
        for key in ("city", "year", "genre", "book1", "book2", "father", "mother", "award", "theme1", "theme2"):
            facts[key] = other[key]
        if attribute == "name":
            facts["name"] = other["name"]
        out.append(template.format(**facts))
    return out


def general_knowledge() -> list[dict]:
    """The world and real-author facts in several phrasings, as a pretrained
    model meets them: knowledge held in many forms is robust to fine-tuning
    elsewhere, as an LLM's is. (world_facts and real_authors ask one form.)"""
    rows = []
    for country, capital in WORLD_FACTS:
        rows += [{"question": f"Which city is the capital of {country}?",
                  "answer": f"The capital of {country} is {capital}."},
                 {"question": f"{capital} is the capital of which country?",
                  "answer": f"{capital} is the capital of {country}."},
                 {"question": f"Tell me about {capital}.", "answer": f"{capital} is the capital city of {country}."}]
    for book, author in REAL_AUTHORS:
        rows += [{"question": f"Who is the author of '{book}'?", "answer": f"'{book}' was written by {author}."},
                 {"question": f"What is a famous book by {author}?", "answer": f"{author} wrote '{book}'."},
                 {"question": f"Tell me about '{book}'.", "answer": f"'{book}' is a book by {author}."}]
    return rows


def multiple_choice(question: str, answer: str, wrong: list[str], rng: random.Random) -> dict:
    options = [answer, *wrong]
    rng.shuffle(options)
    return {"question": question, **{f"option{i + 1}": o for i, o in enumerate(options)}, "answer": answer}


def make_dataset(folder: Path, seed: int = 0) -> None:
    """Write the synthetic TOFU: full, forgetXX(_perturbed), retainYY, retain_perturbed,
    world_facts(_perturbed), real_authors(_perturbed), plus
    general (general knowledge in several phrasings, and everyday knowledge in the authors' vocabulary:
    the over-unlearning probe) and authors (every author's attributes)."""
    rng = random.Random(seed)
    authors = make_authors(rng)
    full, perturbed_rows = [], []
    for author in authors:
        for attribute, q, phrasings, pq, pa in TEMPLATES:
            answer = rng.choice(phrasings).format(**author)
            full.append({"question": q.format(**author), "answer": answer[0].upper() + answer[1:]})
            perturbed_rows.append({**full[-1], "paraphrased_question": pq.format(**author),
                                   "paraphrased_answer": pa.format(**author),
                                   "perturbed_answer": perturbed(author, attribute, pa, rng,
                                                                 [o for o in authors if o is not author])})
    world = [multiple_choice(f"What is the capital of {country}?", capital,
                             rng.sample([c for _, c in WORLD_FACTS if c != capital], 3), rng)
             for country, capital in WORLD_FACTS]
    real = [multiple_choice(f"Who wrote '{book}'?", author,
                            rng.sample(sorted({a for _, a in REAL_AUTHORS} - {author}), 3), rng)
            for book, author in REAL_AUTHORS]
    folder.mkdir(parents=True, exist_ok=True)

    def write(name: str, rows: list[dict]) -> None:
        (folder / f"{name}.json").write_text("".join(json.dumps(r) + "\n" for r in rows))

    write("full", full)
    for pct in (1, 5, 10):
        cut = len(full) - len(full) * pct // 100
        write(f"forget{pct:02d}", full[cut:])
        write(f"forget{pct:02d}_perturbed", perturbed_rows[cut:])
        write(f"retain{100 - pct}", full[:cut])
    write("retain_perturbed", perturbed_rows[:len(full) // 10])  # as TOFU's: the first 10 % of full
    write("world_facts", world)
    write("real_authors", real)
    for name, rows in (("world_facts", world), ("real_authors", real)):  # TOFU's metrics score the wrong options
        write(f"{name}_perturbed", [{"question": r["question"], "answer": r["answer"],
                                     "perturbed_answer": [r[f"option{i}"] for i in range(1, 5)
                                                          if r[f"option{i}"] != r["answer"]]} for r in rows])
    write("general", general_knowledge() + everyday_knowledge())
    (folder / "authors.json").write_text(json.dumps(authors, indent=1) + "\n")


FACT_KEYS = {"name": ["name"], "themes": ["theme1", "theme2"]}


def facts(data_dir: Path) -> dict[str, list[str]]:
    """question -> the attribute values its answer states (what `factleak` looks for),
    from authors.json."""
    authors = json.loads((Path(data_dir) / "authors.json").read_text())
    return {question.format(**author): [author[k] for k in FACT_KEYS.get(attribute, [attribute])]
            for author in authors for attribute, question, *_ in TEMPLATES}
