"""pmc_min: a minimal, from-scratch reference implementation of Partial Model
Collapse (PMC) unlearning for LLMs (Scholten et al., arXiv 2507.04219)."""

from .checkpoint import load, save
from .errors import UserError
from .rouge import rouge_l, rouge_l_batch, rouge_l_recall
from .sample import generate, generate_ids
from .model import Config, Transformer, causal_lm_loss
from .own_data import unlearn_questions
from .train import UnlearnConfig
from .tokenizer import Tokenizer

__all__ = ["load", "save", "Config", "Transformer", "Tokenizer", "UserError", "causal_lm_loss", "generate", "generate_ids", "rouge_l", "rouge_l_batch",
           "rouge_l_recall", "UnlearnConfig", "unlearn_questions"]
