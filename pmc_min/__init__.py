"""pmc_min: a minimal, from-scratch reference implementation of Partial Model
Collapse (PMC) unlearning for LLMs (Scholten et al., arXiv 2507.04219).

The public API is what `__all__` lists (docs/api.md). A public name that changes keeps
working for a release with a DeprecationWarning, or fails with a sentence naming its
replacement."""

from .checkpoint import load, save
from .config import Sampling, UnlearnConfig
from .errors import UserError
from .losses import causal_lm_loss
from .model import Config, Transformer
from .own_data import unlearn_questions
from .rouge import rouge_l, rouge_l_batch, rouge_l_recall
from .sample import generate, generate_ids
from .tokenizer import Tokenizer
from .train import unlearn

__all__ = ["load", "save", "Config", "Transformer", "Tokenizer", "UserError", "causal_lm_loss", "generate",
           "generate_ids", "Sampling", "rouge_l", "rouge_l_batch", "rouge_l_recall", "UnlearnConfig", "unlearn",
           "unlearn_questions"]
