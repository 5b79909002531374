"""The Porter stemmer (Porter, 1980) with NLTK's extensions.

rouge-score stems with `nltk.stem.porter.PorterStemmer()`, whose default
mode (NLTK_EXTENSIONS) departs from the 1980 paper in a handful of places,
each marked "NLTK:" below. ROUGE-L scores must match rouge-score to the last
digit, so this follows that mode exactly.

Vocabulary of the paper: a word is [C](VC)^m[V], with C a run of consonants
and V a run of vowels; m is the *measure*. `y` is a consonant at the start of
a word or after a vowel, and a vowel after a consonant.
"""

from __future__ import annotations

import re
from functools import lru_cache

VOWELS = frozenset("aeiou")

# NLTK: irregular forms looked up before any rule.
IRREGULAR = {
    "skies": "sky", "sky": "sky", "dying": "die", "lying": "lie", "tying": "tie", "news": "news",
    "innings": "inning", "inning": "inning", "outings": "outing", "outing": "outing",
    "cannings": "canning", "canning": "canning", "howe": "howe",
    "proceed": "proceed", "exceed": "exceed", "succeed": "succeed",
}


NOT_VOWEL_OR_Y = re.compile("[^aeiouy]")
VOWEL_TO_V = str.maketrans("aeiou", "vvvvv")


def cv(word: str) -> str:
    """The word as a string of 'c' (consonant) and 'v' (vowel)."""
    pattern = NOT_VOWEL_OR_Y.sub("c", word).translate(VOWEL_TO_V)
    if "y" not in pattern:
        return pattern
    out: list[str] = []
    for ch in pattern:
        out.append(("c" if not out or out[-1] == "v" else "v") if ch == "y" else ch)
    return "".join(out)


def measure(stem: str) -> int:
    """m in [C](VC)^m[V]: the number of vowel-run -> consonant-run transitions."""
    return cv(stem).count("vc")


def contains_vowel(stem: str) -> bool:
    return "v" in cv(stem)


def ends_double_consonant(word: str) -> bool:
    return len(word) >= 2 and word[-1] == word[-2] and cv(word)[-1] == "c"


def ends_cvc(word: str) -> bool:
    """*o: ends consonant-vowel-consonant, the last not w, x or y."""
    pattern = cv(word)
    if pattern.endswith("cvc") and word[-1] not in "wxy":
        return True
    return pattern == "vc"  # NLTK: a two-letter vc word counts too


def m_gt0(stem: str) -> bool:
    return measure(stem) > 0


def m_gt1(stem: str) -> bool:
    return measure(stem) > 1


def rule_table(rules) -> dict[str, list]:
    """Rules grouped by the suffix's last letter, in their original order:
    most words reach no rule, and this rejects them with one dict lookup."""
    table: dict[str, list] = {}
    for rule in rules:
        table.setdefault(rule[0][-1], []).append(rule)
    return table


def apply_rules(word: str, table: dict[str, list]) -> str:
    """The first rule whose suffix matches decides: it rewrites the word if its
    condition holds on the stem, else the word is left as it is."""
    for suffix, replacement, condition in table.get(word[-1:], ()):
        if word.endswith(suffix):
            stem = word[: len(word) - len(suffix)]
            return stem + replacement if condition is None or condition(stem) else word
    return word


STEP1A = rule_table([("sses", "ss", None), ("ies", "i", None), ("ss", "ss", None), ("s", "", None)])


def step1a(word: str) -> str:
    if word.endswith("ies") and len(word) == 4:  # NLTK: ties -> tie, not ti
        return word[:-3] + "ie"
    return apply_rules(word, STEP1A)


def step1b(word: str) -> str:
    if word.endswith("ied"):  # NLTK: died -> die, cried -> cri
        return word[:-3] + ("ie" if len(word) == 4 else "i")
    if word.endswith("eed"):
        return word[:-1] if measure(word[:-3]) > 0 else word
    for suffix in ("ed", "ing"):
        if word.endswith(suffix) and contains_vowel(word[: -len(suffix)]):
            stem = word[: -len(suffix)]
            break
    else:
        return word
    if stem.endswith(("at", "bl", "iz")):
        return stem + "e"
    if ends_double_consonant(stem):
        return stem[:-1] if stem[-1] not in "lsz" else stem
    if measure(stem) == 1 and ends_cvc(stem):
        return stem + "e"
    return stem


def step1c(word: str) -> str:
    # NLTK: y -> i only after a consonant that is not the first letter (cry -> cri, but by, say stay).
    if word.endswith("y") and len(word) > 2 and cv(word[:-1])[-1] == "c":
        return word[:-1] + "i"
    return word


STEP2 = rule_table([(suffix, replacement, m_gt0) for suffix, replacement in [
    ("ational", "ate"), ("tional", "tion"), ("enci", "ence"), ("anci", "ance"), ("izer", "ize"),
    ("bli", "ble"),  # the paper's "abli" -> "able", as Porter later corrected it
    ("alli", "al"), ("entli", "ent"), ("eli", "e"), ("ousli", "ous"), ("ization", "ize"), ("ation", "ate"),
    ("ator", "ate"), ("alism", "al"), ("iveness", "ive"), ("fulness", "ful"), ("ousness", "ous"),
    ("aliti", "al"), ("iviti", "ive"), ("biliti", "ble"),
    ("fulli", "ful"),  # NLTK
]] + [("logi", "log", lambda stem: measure(stem + "l") > 0)])  # NLTK: the measure of the stem ending in "l"


def step2(word: str) -> str:
    if word.endswith("alli") and measure(word[:-4]) > 0:  # NLTK: alli -> al, then step 2 again
        return step2(word[:-4] + "al")
    return apply_rules(word, STEP2)


STEP3 = rule_table([(suffix, replacement, m_gt0) for suffix, replacement in [
    ("icate", "ic"), ("ative", ""), ("alize", "al"), ("iciti", "ic"), ("ical", "ic"), ("ful", ""), ("ness", "")]])


def step3(word: str) -> str:
    return apply_rules(word, STEP3)


STEP4 = rule_table([(suffix, "", m_gt1) for suffix in [
    "al", "ance", "ence", "er", "ic", "able", "ible", "ant", "ement", "ment", "ent"]]
    + [("ion", "", lambda stem: measure(stem) > 1 and stem[-1] in "st")]
    + [(suffix, "", m_gt1) for suffix in ["ou", "ism", "ate", "iti", "ous", "ive", "ize"]])


def step4(word: str) -> str:
    return apply_rules(word, STEP4)


def step5(word: str) -> str:
    if word.endswith("e"):
        m = measure(word[:-1])
        if m > 1 or (m == 1 and not ends_cvc(word[:-1])):
            word = word[:-1]
    if word.endswith("ll") and measure(word[:-1]) > 1:
        word = word[:-1]
    return word


@lru_cache(maxsize=1 << 18)
def stem(word: str) -> str:
    """Porter stem of one word, NLTK_EXTENSIONS mode (lower-cases first)."""
    w = word.lower()
    if w in IRREGULAR:
        return IRREGULAR[w]
    if len(word) <= 2:
        return w
    return step5(step4(step3(step2(step1c(step1b(step1a(w)))))))
