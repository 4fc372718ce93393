"""SQL fragments of the compliance answers, per dialect: what "missing" and "installed" mean
on a status column, a severity's name and rank, a case-insensitive equality, an age in days and
a percentage. Built from :mod:`pmp_scrapy.reporting.codes`, so the views (:mod:`.views`) and the
report's own queries compare and name the same way. Pure: strings in, strings out.
"""

from __future__ import annotations

from pmp_scrapy.reporting.codes import SEVERITY_ALIASES, SEVERITY_RANKS, STATUS_ALIASES, raw_values

# Case-insensitive comparisons without lower() on SQLite: COLLATE NOCASE costs a third as much
# per row, which matters on 1.6 million mappings.

def _quoted(values: tuple[str, ...]) -> str:
    return ", ".join("'" + value.replace("'", "''") + "'" for value in values)


def _folded(dialect: str, column: str) -> str:
    return f"lower({column})" if dialect == "postgresql" else f"{column} COLLATE NOCASE"


def status_is_sql(dialect: str, column: str, name: str) -> str:
    """A condition: the status in ``column`` means ``name`` (Missing, Installed ...).

    PostgreSQL: ``ILIKE`` for the words and ``IN`` for the codes, not ``lower(...) IN``: the
    planner estimates those from the column's statistics (a fifth of the rows are missing),
    where it guesses 1% for an expression and then probes the history once per row instead of
    hashing it."""
    raw = raw_values(STATUS_ALIASES, name)
    if dialect != "postgresql":
        return f"{_folded(dialect, column)} IN ({_quoted(raw)})"
    words = [f"{column} ILIKE '{word}'" for word in raw if not word.isdigit()]
    codes = [code for code in raw if code.isdigit()]
    return "(" + " OR ".join([*words, *([f"{column} IN ({_quoted(tuple(codes))})"] if codes else [])]) + ")"


def equals_folded_sql(dialect: str, column: str, parameter: str) -> str:
    """A condition: ``column`` equals the bound ``parameter`` (``:name``), ignoring case."""
    return f"{_folded(dialect, column)} = {_folded(dialect, parameter)}"


def _case(dialect: str, column: str, aliases: dict[str, str], then: dict[str, str], otherwise: str) -> str:
    whens = " ".join(f"WHEN '{raw}' THEN {then[name]}" for raw, name in aliases.items())
    return f"CASE {_folded(dialect, column)} {whens} ELSE {otherwise} END"


def severity_name_sql(dialect: str, column: str) -> str:
    """The severity name of ``column`` (NULL and '' are Unrated; an unknown word as sent)."""
    names = {name: f"'{name}'" for name in SEVERITY_RANKS}
    return _case(dialect, column, SEVERITY_ALIASES, names, f"COALESCE({column}, 'Unrated')")


def severity_rank_sql(dialect: str, column: str) -> str:
    """The severity rank of ``column``: 4 Critical to 0 Unrated (and an unknown word)."""
    ranks = {name: str(rank) for name, rank in SEVERITY_RANKS.items()}
    return _case(dialect, column, SEVERITY_ALIASES, ranks, "0")


def status_name_sql(dialect: str, column: str) -> str:
    """The status name of ``column`` (an unknown value as sent)."""
    names = {name: f"'{name}'" for name in set(STATUS_ALIASES.values())}
    return _case(dialect, column, STATUS_ALIASES, names, column)


def age_days_sql(dialect: str, expression: str) -> str:
    """Days (a fraction) from the naive-UTC timestamp ``expression`` to now."""
    if dialect == "postgresql":
        return f"(EXTRACT(EPOCH FROM ((now() AT TIME ZONE 'UTC') - ({expression}))) / 86400.0)"
    return f"(julianday('now') - julianday({expression}))"


def pct_sql(part: str, whole: str) -> str:
    """``part`` of ``whole`` in percent to one decimal; NULL when ``whole`` is 0."""
    return f"CASE WHEN {whole} > 0 THEN ROUND(100.0 * ({part}) / ({whole}), 1) END"
