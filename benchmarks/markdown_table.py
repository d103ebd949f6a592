"""The table a benchmark prints: one markdown row per result, floats to three decimals, "-" where a
row lacks a column (paste it into docs/benchmarks.md as it is)."""

from __future__ import annotations


def print_table(rows: list[dict], columns: list[str]) -> None:
    print("\n" + " | ".join(columns))
    print(" | ".join("---" for _ in columns))
    for row in rows:
        print(" | ".join(f"{row.get(c):.3f}" if isinstance(row.get(c), float) else str(row.get(c, "-")) for c in columns))
