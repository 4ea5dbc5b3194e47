"""SQL text: SQLite identifier quoting, a canonical rendering of a query for exact match
(:func:`normalize_sql`, via sqlglot), and the query in a generated reply (:func:`clean_sql_output`).
"""

from __future__ import annotations

import re

import sqlglot
from sqlglot import exp
from sqlglot.errors import SqlglotError

# SQLite's keywords (https://www.sqlite.org/lang_keywords.html): identifiers spelled like one are quoted
SQLITE_KEYWORDS = frozenset("""
ABORT ACTION ADD AFTER ALL ALTER ALWAYS ANALYZE AND AS ASC ATTACH AUTOINCREMENT BEFORE BEGIN BETWEEN BY CASCADE
CASE CAST CHECK COLLATE COLUMN COMMIT CONFLICT CONSTRAINT CREATE CROSS CURRENT CURRENT_DATE CURRENT_TIME
CURRENT_TIMESTAMP DATABASE DEFAULT DEFERRABLE DEFERRED DELETE DESC DETACH DISTINCT DO DROP EACH ELSE END ESCAPE
EXCEPT EXCLUDE EXCLUSIVE EXISTS EXPLAIN FAIL FILTER FIRST FOLLOWING FOR FOREIGN FROM FULL GENERATED GLOB GROUP
GROUPS HAVING IF IGNORE IMMEDIATE IN INDEX INDEXED INITIALLY INNER INSERT INSTEAD INTERSECT INTO IS ISNULL JOIN
KEY LAST LEFT LIKE LIMIT MATCH MATERIALIZED NATURAL NO NOT NOTHING NOTNULL NULL NULLS OF OFFSET ON OR ORDER
OTHERS OUTER OVER PARTITION PLAN PRAGMA PRECEDING PRIMARY QUERY RAISE RANGE RECURSIVE REFERENCES REGEXP REINDEX
RELEASE RENAME REPLACE RESTRICT RETURNING RIGHT ROLLBACK ROW ROWS SAVEPOINT SELECT SET TABLE TEMP TEMPORARY THEN
TIES TO TRANSACTION TRIGGER UNBOUNDED UNION UNIQUE UPDATE USING VACUUM VALUES VIEW VIRTUAL WHEN WHERE WINDOW WITH
WITHOUT
""".split())
_PLAIN_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def needs_quotes(name: str) -> bool:
    """Whether an SQLite identifier must be double-quoted (not a plain word, or a keyword)."""
    return not _PLAIN_IDENTIFIER.fullmatch(name) or name.upper() in SQLITE_KEYWORDS


def quote_identifier(name: str, always: bool = False) -> str:
    """``name`` as an SQLite identifier, double-quoted where needed (or ``always``)."""
    if always or needs_quotes(name):
        return '"' + name.replace('"', '""') + '"'
    return name


def _split_quoted(sql: str) -> list[tuple[str, bool]]:
    """``sql`` cut into (text, is_single_quoted_literal) pieces; '' inside a literal is an escape."""
    pieces: list[tuple[str, bool]] = []
    i, start, n = 0, 0, len(sql)
    while i < n:
        if sql[i] == "'":
            if i > start:
                pieces.append((sql[start:i], False))
            j = i + 1
            while j < n:
                if sql[j] == "'":
                    if j + 1 < n and sql[j + 1] == "'":
                        j += 2
                        continue
                    break
                j += 1
            pieces.append((sql[i:j + 1], True))
            i = start = j + 1
        else:
            i += 1
    if start < n:
        pieces.append((sql[start:], False))
    return pieces


def _lower_outside_literals(sql: str) -> str:
    return "".join(text if literal else text.lower() for text, literal in _split_quoted(sql))


def _fallback_normalize(sql: str) -> str:
    """Whitespace and case normalisation for text sqlglot cannot parse."""
    out = []
    for text, literal in _split_quoted(sql.strip().rstrip(";").strip()):
        if literal:
            out.append(text)
        else:
            text = re.sub(r"\s*(<>|!=|<=|>=|[(),;=<>])\s*", r" \1 ", text.lower())
            out.append(re.sub(r"\s+", " ", text))
    return re.sub(r"\s+", " ", "".join(out)).strip()


_COMPARISONS = (exp.EQ, exp.NEQ, exp.GT, exp.GTE, exp.LT, exp.LTE, exp.Like, exp.ILike, exp.Glob)


def _comparison_types() -> tuple[type, ...]:
    return _COMPARISONS


def _parse_one_sqlite(sql: str):
    """The single statement of ``sql`` as a sqlglot tree, or None (parse error, several statements)."""
    try:
        trees = [t for t in sqlglot.parse(sql, read="sqlite") if t is not None]
    except (SqlglotError, ValueError, RecursionError):
        return None
    return trees[0] if len(trees) == 1 else None


def _string_like_columns(tree) -> list:
    """Double-quoted bare names used as values ("France" in ``WHERE country = "France"``): SQLite
    reads them as strings when no column has that name, and Spider writes its literals that way."""
    found = []
    for column in tree.find_all(exp.Column):
        ident = column.this
        if column.table or not isinstance(ident, exp.Identifier) or not ident.quoted:
            continue
        parent = column.parent
        if isinstance(parent, _comparison_types()) and column.arg_key == "expression":
            found.append(column)
        elif isinstance(parent, exp.In) and column.arg_key == "expressions":
            found.append(column)
        elif isinstance(parent, exp.Between) and column.arg_key in ("low", "high"):
            found.append(column)
    return found


def normalize_sql(sql: str) -> str:
    """A canonical rendering of one SQLite query, for exact match.

    Parsed with sqlglot (dialect sqlite) and printed back: keywords, function and identifier
    names lower-cased (SQLite identifiers are case-insensitive), identifiers quoted only where
    needed, double-quoted values in comparisons turned into '...' literals, one space between
    tokens, no trailing semicolon. String literals keep their case. Text that does not parse
    falls back to whitespace and case normalisation.
    """
    text = sql.strip().rstrip(";").strip()
    tree = _parse_one_sqlite(text)
    if tree is None:
        return _fallback_normalize(text)
    try:
        for column in _string_like_columns(tree):
            column.replace(exp.Literal.string(column.this.this))
        for ident in tree.find_all(exp.Identifier):
            name = ident.this.lower()
            ident.set("this", name)
            ident.set("quoted", needs_quotes(name))
        rendered = tree.sql(dialect="sqlite", normalize_functions="lower")
    except Exception:  # noqa: BLE001 - sqlglot raises many types on odd trees; fall back to text
        return _fallback_normalize(text)
    return re.sub(r"\s+", " ", _lower_outside_literals(rendered)).strip()


def sql_exact_match(prediction: str, gold: str) -> bool:
    """Whether two queries have the same canonical form (:func:`normalize_sql`)."""
    return normalize_sql(prediction) == normalize_sql(gold)


# --- the query in a generated reply ---------------------------------------------------

def clean_sql_output(text: str) -> str:
    """The query in a generated reply: inside a ``` fence if there is one, up to the first ';'."""
    fenced = re.search(r"```(?:sql)?\s*(.*?)(?:```|$)", text, flags=re.S | re.I)
    if fenced:
        text = fenced.group(1)
    return text.strip().split(";", 1)[0].strip()
