"""What loading preference data did: kept/dropped counts, repairs, token-length percentiles."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

DROP_REASONS = {
    "empty_response": "empty (or whitespace-only) response",
    "identical_responses": "chosen == rejected",
    "histories_differ": "chosen/rejected differ before the last reply",
    "identical_after_truncation": "chosen == rejected after truncation",
    "special_token_in_response": "BOS or an end token inside a response",
    "empty_prompt": "empty prompt with a tokenizer without BOS",
    "too_long": "a response would be truncated away",
    "decode_mismatch": "no tokenization decodes back to prompt + response exactly",
}


REPAIRS = {
    "prompt_in_responses": "records repeated the prompt at the start of both responses "
    "(removed from the responses; it is scored nowhere)"
}


def percentiles(values) -> dict:
    """min, p50, p90, p99, max and mean of token lengths (``{}`` for none)."""
    if not values:
        return {}
    a = np.asarray(values)
    return {
        "min": int(a.min()),
        "p50": float(np.percentile(a, 50)),
        "p90": float(np.percentile(a, 90)),
        "p99": float(np.percentile(a, 99)),
        "max": int(a.max()),
        "mean": float(a.mean()),
    }


@dataclass
class DataSummary:
    """What loading did.

    Attributes:
        source, split, data_format: what was read and how it was understood.
        records: records read.
        kept: pairs kept.
        dropped: reason -> count (reasons in :data:`DROP_REASONS`).
        dropped_examples: reason -> first 5 record locations (file:line (record i)).
        dropped_records: reason -> first 20 record indices.
        repaired: repair -> count of kept records fixed on load (``prompt_in_responses``: the
            prompt was repeated at the start of both responses and removed from them).
        prompt_cut / response_cut: kept pairs whose prompt / a response was truncated.
        decode_mismatches: pairs dropped because no tokenization decodes back to prompt +
            response (the ``decode_mismatch`` drop reason).
        prompt_lengths / response_lengths / sequence_lengths: percentiles (tokens) of the kept
            pairs before truncation (prompt, each response) and after it (longer sequence).
        seconds: wall time of the load.
        max_length / max_prompt_length / truncation_mode: the limits used.
    """

    source: str = ""
    split: str = ""
    data_format: str = ""
    records: int = 0
    kept: int = 0
    dropped: dict = field(default_factory=dict)
    dropped_examples: dict = field(default_factory=dict)
    dropped_records: dict = field(default_factory=dict)
    repaired: dict = field(default_factory=dict)
    prompt_cut: int = 0
    response_cut: int = 0
    prompt_lengths: dict = field(default_factory=dict)
    response_lengths: dict = field(default_factory=dict)
    sequence_lengths: dict = field(default_factory=dict)
    seconds: float = 0.0
    max_length: int = 0
    max_prompt_length: int = 0
    truncation_mode: str = ""

    @property
    def decode_mismatches(self) -> int:
        return self.dropped.get("decode_mismatch", 0)

    def drop(self, reason: str, where: str, index: int = -1) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + 1
        ex = self.dropped_examples.setdefault(reason, [])
        if len(ex) < 5:
            ex.append(where)
        ids = self.dropped_records.setdefault(reason, [])
        if len(ids) < 20:
            ids.append(index)

    def format(self) -> str:
        """Human-readable multi-line summary."""
        lines = [
            f"data: {self.source} [{self.split}] format={self.data_format}",
            f"  records read {self.records}, pairs kept {self.kept}, dropped {sum(self.dropped.values())}"
            f"  ({self.seconds:.2f} s)",
        ]
        for reason, n in sorted(self.dropped.items()):
            ex = ", ".join(str(i) for i in self.dropped_records.get(reason, []))
            more = ", ..." if n > len(self.dropped_records.get(reason, [])) else ""
            lines.append(f"    dropped {n:>6} {DROP_REASONS.get(reason, reason)} (records {ex}{more})")
        for name, n in sorted(self.repaired.items()):
            lines.append(f"    repaired {n:>5} {REPAIRS.get(name, name)}")
        lines.append(
            f"  truncation max_length={self.max_length} max_prompt_length={self.max_prompt_length} "
            f"mode={self.truncation_mode}: prompt cut in {self.prompt_cut}, "
            f"a response cut in {self.response_cut} pairs"
        )
        lines.append("  tokens            min     p50     p90     p99     max    mean")
        for name, d in (
            ("prompt", self.prompt_lengths),
            ("response", self.response_lengths),
            ("sequence (kept)", self.sequence_lengths),
        ):
            if d:
                lines.append(
                    f"  {name:<15} {d['min']:>5} {d['p50']:>7.1f} {d['p90']:>7.1f} {d['p99']:>7.1f} "
                    f"{d['max']:>7} {d['mean']:>7.1f}"
                )
        return "\n".join(lines)

    def as_dict(self) -> dict:
        """Plain JSON-able dict (for run metadata)."""
        return asdict(self)

    def __str__(self) -> str:
        return self.format()
