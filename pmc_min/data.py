"""TOFU data: the splits and their files.

TOFU (Maini et al., 2024) is 200 fictitious authors x 20 QA pairs (`full`);
`forgetXX` is the last 1/5/10 % of `full` and `retainYY` the rest.
`forgetXX_perturbed` adds a paraphrased question and answer and five
perturbed answers; `world_facts` and `real_authors` measure general utility.
Files are JSON Lines named as in the hub dataset `locuslab/TOFU`, so a local
folder and a hub snapshot read the same way.
"""

from __future__ import annotations

import json
from pathlib import Path

from .errors import UserError
from .files import atomic_write_text, record_input

HUB_DATASET = "locuslab/TOFU"
FORGET_SPLITS = ("forget01", "forget05", "forget10")
RETAIN_OF = {"forget01": "retain99", "forget05": "retain95", "forget10": "retain90"}


def resolve_data_dir(data_dir: str | Path | None) -> Path:
    """A local folder of TOFU files, or the hub snapshot of locuslab/TOFU."""
    if data_dir is not None:
        path = Path(data_dir).expanduser()
        if not path.is_dir():
            what = "is a file, not a folder" if path.exists() else "does not exist"
            raise UserError(f"Data folder {path} {what}; pass --data-dir with the TOFU JSON Lines files.")
        return path
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(HUB_DATASET, repo_type="dataset", allow_patterns=["*.json"]))
    except Exception as e:
        raise UserError(f"The TOFU data could not be fetched from the hub ({type(e).__name__}); pass --data-dir "
                        f"with a local copy of {HUB_DATASET}'s JSON Lines files.") from None


WIKITEXT_ROWS = "https://datasets-server.huggingface.co/rows"
WIKITEXT = {"dataset": "Salesforce/wikitext", "config": "wikitext-2-raw-v1", "split": "train"}


def wikitext_probe(n: int = 100, fetch=None) -> list[str]:
    """The first n paragraphs of wikitext-2-raw-v1's train split (empty lines and "= Heading ="
    lines skipped): the paper's unrelated text for the over-unlearning probe. Read through the
    hub's dataset viewer, 100 rows a request, and cached as one paragraph a line."""
    from .files import cache_root

    path = cache_root() / "probe" / f"wikitext-2-raw-v1-train-{n}.txt"
    if path.is_file():
        record_input(path)
        return path.read_text(encoding="utf-8").splitlines()
    if fetch is None:
        from huggingface_hub import constants
        from huggingface_hub.utils import get_session

        if constants.HF_HUB_OFFLINE:
            raise UserError("wikitext-2 cannot be fetched with HF_HUB_OFFLINE set; pass --probe-text FILE.")

        def fetch(offset: int) -> dict:
            response = get_session().get(WIKITEXT_ROWS, params={**WIKITEXT, "offset": offset, "length": 100})
            response.raise_for_status()
            return response.json()
    paragraphs, offset = [], 0
    try:
        while len(paragraphs) < n:
            rows = fetch(offset)["rows"]
            if not rows:
                break
            for r in rows:
                text = " ".join(r["row"]["text"].split())
                if text and not (text.startswith("=") and text.endswith("=")):
                    paragraphs.append(text)
            offset += len(rows)
    except Exception as e:
        raise UserError(f"wikitext-2 could not be fetched from the hub's dataset viewer ({type(e).__name__}); "
                        f"pass --probe-text FILE with unrelated text, one passage a line.") from None
    paragraphs = paragraphs[:n]
    if len(paragraphs) < n:
        raise UserError(f"wikitext-2's train split gave only {len(paragraphs)} paragraphs, not {n}.")
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, "".join(p + "\n" for p in paragraphs))
    record_input(path)
    return paragraphs


def load_split(data_dir: str | Path, name: str, required=("question", "answer")) -> list[dict]:
    """The rows of `<data_dir>/<name>.json`, one JSON object per line."""
    path = Path(data_dir) / f"{name}.json"
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
        record_input(path)
    except FileNotFoundError:
        raise UserError(f"{path} not found; the data folder must hold TOFU's {name}.json.") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{path} could not be read ({e}).") from None
    rows = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{path}, line {number}: not valid JSON ({e.msg}).") from None
        missing = [k for k in required if not isinstance(row, dict) or not isinstance(row.get(k), str)]
        if missing:
            raise UserError(f"{path}, line {number}: missing text field(s) {', '.join(missing)}.")
        rows.append(row)
    if not rows:
        raise UserError(f"{path} holds no rows.")
    return rows


MOVED_TO_QA = ("prompt", "target", "strip_tag", "encode_qa", "encode_rows")  # question answering moved to qa.py


def __getattr__(name: str):
    """The question-answering functions that lived here before qa.py, with a DeprecationWarning."""
    if name in MOVED_TO_QA:
        import warnings

        from . import qa
        warnings.warn(f"pmc_min.data.{name} is deprecated and will be removed; use pmc_min.qa.{name}.",
                      DeprecationWarning, stacklevel=2)
        return getattr(qa, name)
    raise AttributeError(f"module 'pmc_min.data' has no attribute {name!r}")
