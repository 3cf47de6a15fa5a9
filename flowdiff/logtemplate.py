r"""Message -> template: the variable parts of a syslog message masked with fixed placeholders.

Why masking and not a template miner (Drain and its kin): a miner's templates depend on the order and
the mix of the lines it has seen, so the same message can get another template next week, after more
lines of its kind arrived; the baseline would then report it again. Masking is a pure function of the
message: learning the same logs twice gives the same keys, and a template learned on Monday matches the
same kind of message on Friday. It also groups better on Loghub's labelled Linux sample than drain3 with
its defaults (``benchmarks/bench_logs.py``; figures in the README).

The rules, in order (each one an RE2 replacement over the whole batch; :data:`RULES` is the list):

* dates and times (``Sat Jun 25 04:41:15 2005``, ISO 8601, ``12:03:44``) -> ``<DATE>`` / ``<TIME>``;
* quoted values (``"..."``, ``'...'``) -> ``"<*>"``;
* e-mail addresses -> ``<EMAIL>``, URLs -> ``<URL>``;
* MAC addresses -> ``<MAC>``, IPv6 and IPv4 addresses (with a ``:port`` or ``.port``) -> ``<IP>``, and the
  reverse name that follows an address in parentheses or that precedes it in brackets -> ``<HOST>``;
* paths of two or more components -> ``<PATH>``;
* ``key=value``: the value -> ``<*>`` (an empty value stays empty: ``ruser=`` is not ``ruser=x``);
* the word after ``user``, ``invalid user``, ``for ... from`` (user names) -> ``<USER>``; a dotted host
  name after ``from`` / ``to`` / ``by`` -> ``<HOST>``;
* every remaining word that holds a digit (numbers, hex ids, postfix queue ids, durations like ``30s``,
  pids, sizes, versions) -> ``<NUM>``; long hex words without a digit (``deadbeefcafe``) -> ``<NUM>`` too;
* trailing blanks are dropped.

Every rule sees the message with each run of digits already collapsed to one ``0`` (a compiled pass,
:func:`flowdiff.syslog.collapse_digits`), so ``\d+`` in a rule matches exactly one character; the messages
of one kind then mostly coincide and are masked once.

Placeholders hold no digit, so masking a template again changes nothing.
"""

from __future__ import annotations

import pyarrow as pa

from flowdiff._lazy import lazy
from flowdiff.syslog import collapse_digits

pc = lazy("pyarrow.compute")

_TOKEN_END = r"[^\s,;:()\[\]{}<>\"'=]"

# (pattern, replacement): applied in this order.
RULES: list[tuple[str, str]] = [
    (
        r"\b(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun) (?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) +\d+ "
        r"\d+:\d+:\d+(?: \d+)?",
        "<DATE>",
    ),
    (r"\b\d+-\d+-\d+[T ]\d+:\d+:\d+(?:[.,]\d+)?(?:Z|[+-]\d+(?::\d+)?)?", "<DATE>"),
    (r"\b[0-9A-Fa-f]{1,2}(?:[:-][0-9A-Fa-f]{1,2}){5}\b", "<MAC>"),
    (
        r"(?:\b(?:[0-9A-Fa-f]{1,4}:){7}[0-9A-Fa-f]{1,4}|(?:\b(?:[0-9A-Fa-f]{1,4}:){1,7}|::?)"
        r"(?::[0-9A-Fa-f]{1,4}){1,7}\b|\b(?:[0-9A-Fa-f]{1,4}:){1,7}:)(?:%\w+)?",
        "<IP>",
    ),
    (r"\b\d+:\d+:\d+(?:[.,]\d+)?\b", "<TIME>"),
    (r"\"[^\"]*\"", '"<*>"'),
    (r"(^|[\s(=:,\[])'[^']*'", r"\1'<*>'"),
    (r"<?\b[\w.+-]+@[\w-]+(?:\.[\w-]+)+>?", "<EMAIL>"),
    (r"\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s\"'<>]+", "<URL>"),
    (r"\b([\w.-]+)=(?:[A-Za-z_-]*[^\sA-Za-z_,;()\[\]{}<>\"'=-])" + _TOKEN_END + "*", r"\1=<*>"),
    (r"\b\d+\.\d+\.\d+\.\d+(?:[:.#]\d+)?\b", "<IP>"),
    (r"<IP> \([^()\s]*\)", "<IP> (<HOST>)"),
    (r"[\w.-]+\[<IP>\]", "<HOST>[<IP>]"),
    (r"(^|[\s=(\"':,])(?:/[\w.@%+~-]*){2,}/?", r"\1<PATH>"),
    (r"\b((?:invalid|illegal) user|[Uu]ser|USER) [^\s,;:()\[\]<>\"']+", r"\1 <USER>"),
    (r"\bfor [^\s,;:()\[\]<>]+ from\b", "for <USER> from"),
    (r"\b(from|to|by) [\w-]+(?:\.[\w-]+)+\b", r"\1 <HOST>"),
    (_TOKEN_END + r"*\d" + _TOKEN_END + "*", "<NUM>"),
    (r"\b(?:0x)?[0-9a-fA-F]{12,}\b", "<NUM>"),
]


def mask(messages: pa.Array) -> pa.Array:
    """Templates of a batch of messages (nulls become empty templates). Each distinct message is masked
    once, after a compiled pass that turns every run of digits into one ``0`` (and drops trailing blanks):
    the messages of one kind then mostly coincide, so the regular expressions see far fewer strings."""
    if len(messages) == 0:
        return pa.array([], pa.string())
    enc = pc.dictionary_encode(collapse_digits(messages))
    if isinstance(enc, pa.ChunkedArray):
        enc = enc.combine_chunks()
    out = enc.dictionary
    for pattern, repl in RULES:
        out = pc.replace_substring_regex(out, pattern, repl)
    return out.take(enc.indices)


def mask_one(message: str) -> str:
    """The template of one message (for notebooks and tests; :func:`mask` for batches)."""
    return mask(pa.array([message])).to_pylist()[0]
