"""Preference data: sources and formats -> records -> token ids with boundaries -> padded batches.

- :mod:`.sources`: read rows from files, directories, ``datasets`` folders and hub ids.
- :mod:`.records`: formats (standard, implicit, conversational): a row -> a record.
- :mod:`.rules`: :class:`TokenRules` (the tokenizer: BOS/EOS, end and special ids, chat template).
- :mod:`.encode`: token rules (BOS/EOS, chat templates, response boundaries).
- :mod:`.truncate`: :func:`truncate_pair`; :mod:`.summary`: :class:`DataSummary` (what loading did).
- :mod:`.load`: :func:`load_preference_data` (the entry point) and :func:`split_holdout`.
- :mod:`.batches`: :class:`EncodedPair`, :class:`Batch`, :func:`make_batch`, :func:`pad_id`,
  :class:`BatchIterator`, :func:`eval_batches`.
"""

from .batches import Batch, BatchIterator, EncodedPair, eval_batches, make_batch, pad_id, response_target_mask
from .load import load_preference_data, load_train_eval, split_holdout
from .rules import TokenRules
from .sources import DataError
from .summary import DataSummary

__all__ = [
    "Batch",
    "BatchIterator",
    "DataError",
    "DataSummary",
    "EncodedPair",
    "eval_batches",
    "TokenRules",
    "load_preference_data",
    "load_train_eval",
    "make_batch",
    "pad_id",
    "response_target_mask",
    "split_holdout",
]
