"""Canonicalisation of count-table rows, applied identically before ``learn`` and ``diff``.

Churn that is normal must not look new: a DHCP pool hands out another address, an IPv6 host rotates
its RFC 4941 temporary address every day, a phone randomises its MAC per network. Per table the config
can therefore rewrite key values before any comparison:

1. ``collapse = ["dhcp", "internet"]``: an address (``src``, ``dst``, ``client``, ``server``) whose longest
   match in ``[networks]`` carries one of these labels becomes the label itself;
2. ``ipv6_prefix = 64``: remaining IPv6 addresses become their prefix, ``2001:db8:1::/64``;
3. ``collapse_random_macs``: locally administered unicast MACs (``x2``, ``x6``, ``xa``, ``xe`` first octet)
   become ``random``. Group addresses (broadcast, multicast) also have the local bit set in some cases
   and are kept: they are not randomised.

Rows that became equal are added up again (packets, bytes; first/last seen as min/max). Every rewrite
works on the distinct values of a column, never row by row. The baseline stores canonical keys, so
the same function must run on both sides: :func:`definition` goes into the baseline metadata and a
baseline whose definition differs from the config is refused.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from flowdiff import _jit
from flowdiff._jit import njit
from flowdiff.config import TableConfig
from flowdiff.netmap import NetworkMap, reduce_ipv6_text
from flowdiff.schema import ADDRESS_KEYS, INTERVAL

RANDOM_MAC = "random"
MAC_KEYS = ("src_mac", "dst_mac")
_METRIC_AGG = {"packets": "sum", "bytes": "sum", "first_seen": "min", "last_seen": "max"}

__all__ = [
    "RANDOM_MAC",
    "FINGERPRINT",
    "definition",
    "canonicalise",
    "canonical_keys",
    "canon_values",
    "random_mac_mask",
    "key_hashes",
    "column_hashes",
    "combine_hashes",
]


def definition(tc: TableConfig) -> dict[str, Any]:
    """What makes two baselines comparable: the key columns and every canonicalisation setting.
    (Evidence thresholds are not part of it: they only decide which keys were learned.)"""
    return {
        "keys": list(tc.keys),
        "collapse": list(tc.collapse),
        "ipv6_prefix": tc.ipv6_prefix,
        "collapse_random_macs": bool(tc.collapse_random_macs) and any(k in MAC_KEYS for k in tc.keys),
    }


def is_identity(tc: TableConfig) -> bool:
    """True when canonicalisation cannot change any value of this table."""
    d = definition(tc)
    has_addr = any(k in ADDRESS_KEYS for k in tc.keys)
    return not d["collapse_random_macs"] and not (has_addr and (d["collapse"] or d["ipv6_prefix"]))


def random_mac_mask(macs: np.ndarray) -> np.ndarray:
    """Locally administered *unicast* MACs (bit 1 set, bit 0 clear in the first octet)."""
    s = pd.Series(np.asarray(macs, dtype=object)).astype(str)
    first = s.str.slice(0, 2).map(_hex_byte).to_numpy(dtype=np.int64)
    ok = (s.str.len() == 17).to_numpy()
    return ok & ((first & 3) == 2)


def _random_macs(macs: pa.Array) -> pa.Array:
    """:func:`random_mac_mask` of an Arrow string column, in Arrow (learn reads millions of rows): a
    first octet with bit 1 set and bit 0 clear has 2, 6, a or e as its second hex digit."""
    return pc.and_(
        pc.equal(pc.utf8_length(macs), 17),
        pc.match_substring_regex(macs, "^[0-9A-Fa-f][26AEae]"),
    ).fill_null(False)


def _hex_byte(t: str) -> int:
    try:
        return int(t, 16)
    except ValueError:
        return 0


def canon_values(column: str, values: np.ndarray, tc: TableConfig, nmap: NetworkMap | None) -> np.ndarray:
    """Canonical form of distinct values of one key column (object array in, object array out)."""
    out = np.asarray(values, dtype=object).copy()
    if column in ADDRESS_KEYS:
        if tc.collapse and nmap is not None and len(out):
            labels = nmap.labels_for_text(out)
            hit = np.isin(labels, np.asarray(list(tc.collapse), dtype=object))
            out[hit] = labels[hit]
        if tc.ipv6_prefix and len(out):
            out = reduce_ipv6_text(out, tc.ipv6_prefix)
    elif column in MAC_KEYS and tc.collapse_random_macs and len(out):
        out[random_mac_mask(out)] = RANDOM_MAC
    return out


def canonicalise(
    df: pd.DataFrame,
    tc: TableConfig,
    networks: Mapping[str, str] | NetworkMap | None,
    *,
    group: Sequence[str] = (INTERVAL,),
    force_aggregate: bool = False,
) -> pd.DataFrame:
    """Rows of ``df`` (key columns of ``tc`` plus metrics) with canonical keys, re-aggregated over
    ``group`` + keys when two rows became equal. Columns other than group, keys and the metrics present
    are dropped (e.g. the store's ``sensor`` partition). Never modifies ``df``."""
    keys = list(tc.keys)
    metrics = [m for m in _METRIC_AGG if m in df.columns]
    cols = [*group, *keys, *metrics]
    out = df[cols].copy() if list(df.columns) != cols else df.copy()
    merged = force_aggregate
    if not is_identity(tc) and len(out):
        nmap = networks if isinstance(networks, NetworkMap) or networks is None else NetworkMap(networks)
        for col in keys:
            if col not in ADDRESS_KEYS and col not in MAC_KEYS:
                continue
            codes, uniques = pd.factorize(out[col], use_na_sentinel=False)
            uniq = np.asarray(uniques, dtype=object)
            new = canon_values(col, uniq, tc, nmap)
            if np.array_equal(new, uniq):
                continue
            # several values mapping to one is what makes rows equal
            merged = merged or len(pd.unique(new)) < len(uniq)
            out[col] = pd.array(new[codes], dtype=out[col].dtype)
    if merged and len(out):
        out = aggregate(out, [*group, *keys])
    return out.reset_index(drop=True)


def canonical_keys(
    table: pa.Table, tc: TableConfig, networks: Mapping[str, str] | NetworkMap | None
) -> pa.Table:
    """``table`` (Arrow) with the key columns of ``tc`` in canonical form, rows not re-aggregated: the
    caller groups anyway (learn). The distinct values of a column are rewritten once, by
    :func:`canon_values` as in :func:`canonicalise`, then gathered back by their dictionary codes."""
    if is_identity(tc) or not table.num_rows:
        return table
    nmap = networks if isinstance(networks, NetworkMap) or networks is None else NetworkMap(networks)
    for col in tc.keys:
        if col not in ADDRESS_KEYS and col not in MAC_KEYS:
            continue
        i = table.schema.get_field_index(col)
        arr = table[col].combine_chunks()
        typ = arr.type
        if col in MAC_KEYS:  # only collapse_random_macs changes a MAC
            text = pa.types.is_string(typ) or (
                pa.types.is_dictionary(typ) and pa.types.is_string(typ.value_type)
            )
            if tc.collapse_random_macs and text:  # on the distinct values, gathered back by their codes
                enc = arr if pa.types.is_dictionary(typ) else arr.dictionary_encode()
                random = _random_macs(enc.dictionary)
                if pc.any(random).as_py():
                    canon = pc.if_else(random, RANDOM_MAC, enc.dictionary).take(enc.indices)
                    table = table.set_column(i, table.schema.field(i).with_type(canon.type), canon)
            continue
        enc = arr if pa.types.is_dictionary(typ) else arr.dictionary_encode()
        uniq = np.asarray(enc.dictionary.to_pylist(), dtype=object)
        new = canon_values(col, uniq, tc, nmap)
        if np.array_equal(new, uniq):
            continue
        value_type = typ.value_type if pa.types.is_dictionary(typ) else typ
        out = pa.array(new.tolist(), type=value_type).take(enc.indices)
        table = table.set_column(i, table.schema.field(i), out.cast(typ) if out.type != typ else out)
    return table


def aggregate(df: pd.DataFrame, by: Sequence[str]) -> pd.DataFrame:
    """Add up rows with equal ``by`` columns (sum of counts, min/max of times); dtypes are kept."""
    metrics = {m: f for m, f in _METRIC_AGG.items() if m in df.columns}
    extra = {c: "sum" for c in df.columns if c not in by and c not in metrics}
    if not len(df):
        return df[[*by, *metrics, *extra]].reset_index(drop=True)
    agg = df.groupby(list(by), sort=False, observed=True, dropna=False).agg({**metrics, **extra})
    out = agg.reset_index()
    for c in out.columns:
        if c in df.columns and out[c].dtype != df[c].dtype:
            out[c] = out[c].astype(df[c].dtype)
    return out[[*by, *metrics, *extra]]


# ------------------------------------------------------------------ key fingerprints
#
# A key (the tuple of a row's key columns) is compared by a 128-bit fingerprint: two unrelated 64-bit
# hashes. They are computed per column straight from the Arrow buffers (text once per distinct value),
# in compiled loops or, for small inputs, as the same arithmetic in numpy (VECTOR_HASH_WORK), then
# combined, so that a strategy joining on a subset of the columns reuses the column hashes. The baseline
# stores the fingerprint of every key (columns ``_h1``, ``_h2``): diff reads 16 bytes per baseline key
# instead of decoding its strings.

_K1 = np.uint64(0x9E3779B97F4A7C15)
_FNV_OFFSET = np.uint64(0xCBF29CE484222325)
_FNV_PRIME = np.uint64(0x100000001B3)
_SEED1 = np.uint64(0x51ED270B27A1F0E5)
_SEED2 = np.uint64(0x2545F4914F6CDD1D)
FINGERPRINT = ("_h1", "_h2")


@njit(cache=True, inline="always")
def _mix(x: np.uint64) -> np.uint64:
    """splitmix64 finaliser: every input bit affects every output bit."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


@njit(cache=True)
def _hash_strings(offsets: np.ndarray, data: np.ndarray, a_out: np.ndarray, b_out: np.ndarray) -> None:
    # FNV-1a and a multiply-rotate hash: unrelated, so a collision of one says nothing about the other
    for i in range(len(a_out)):
        a = _FNV_OFFSET
        b = np.uint64(0x243F6A8885A308D3)
        for j in range(offsets[i], offsets[i + 1]):
            c = np.uint64(data[j])
            a = (a ^ c) * _FNV_PRIME
            b = b ^ c
            b = ((b << np.uint64(31)) | (b >> np.uint64(33))) * _K1
        n = np.uint64(offsets[i + 1] - offsets[i])
        a_out[i] = _mix(a ^ n)
        b_out[i] = _mix(b + n)


@njit(cache=True)
def _hash_ints(values: np.ndarray, a_out: np.ndarray, b_out: np.ndarray) -> None:
    for i in range(len(values)):
        v = values[i]
        a_out[i] = _mix(v + np.uint64(0x632BE59BD9B4E019))
        b_out[i] = _mix(v ^ np.uint64(0x8CB92BA72F3D8DD7))


@njit(cache=True)
def _combine(h1: np.ndarray, h2: np.ndarray, a: np.ndarray, b: np.ndarray) -> None:
    for i in range(len(h1)):
        h1[i] = _mix(h1[i] ^ a[i])
        h2[i] = _mix(h2[i] + b[i])


def string_buffers(arr: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """(int64 offsets, uint8 data) of a string column, zero-copy where Arrow allows."""
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    arr = arr.cast(pa.large_string())
    bufs = arr.buffers()
    n = len(arr)
    offsets = np.frombuffer(bufs[1], dtype=np.int64)[arr.offset : arr.offset + n + 1]
    data = np.frombuffer(bufs[2], dtype=np.uint8) if bufs[2] is not None else np.zeros(0, np.uint8)
    return offsets, data


# Up to this many values (strings: bytes) a hash runs as numpy array operations instead of the compiled
# kernels, unless numba is loaded already: loading numba and the kernels costs 0.2-0.4 s, numpy about
# 25 ns per string byte and 10 ns per integer (2-core box), so 1M costs it at most 25 ms. learn hashes
# baselines of a few thousand distinct strings and tens of thousands of keys: it needs no numba at all.
VECTOR_HASH_WORK = 1 << 20


def _vectorised(work: int) -> bool:
    return work <= VECTOR_HASH_WORK and not _jit.engaged()


def _mix_array(x: np.ndarray) -> np.ndarray:
    """:func:`_mix` of every element (``x`` is overwritten)."""
    x ^= x >> np.uint64(30)
    x *= np.uint64(0xBF58476D1CE4E5B9)
    x ^= x >> np.uint64(27)
    x *= np.uint64(0x94D049BB133111EB)
    x ^= x >> np.uint64(31)
    return x


def _hash_strings_array(offsets: np.ndarray, data: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_hash_strings` as array operations, one step per byte position: the strings sorted by
    length (longest first) make the strings still running at position ``j`` a prefix, updated in place."""
    n = len(offsets) - 1
    lengths = np.diff(offsets)
    order = np.argsort(-lengths, kind="stable")
    start = offsets[:-1][order]
    length = lengths[order]
    running = np.searchsorted(-length, -np.arange(int(length[0]) if n else 0), side="left")  # length > j
    a = np.full(n, _FNV_OFFSET, dtype=np.uint64)
    b = np.full(n, 0x243F6A8885A308D3, dtype=np.uint64)
    tmp = np.empty(n, dtype=np.uint64)
    for j, k in enumerate(running.tolist()):
        c = data[start[:k] + j].astype(np.uint64)
        a[:k] ^= c
        a[:k] *= _FNV_PRIME
        bk, tk = b[:k], tmp[:k]
        bk ^= c
        np.left_shift(bk, np.uint64(31), out=tk)
        bk >>= np.uint64(33)
        bk |= tk
        bk *= _K1
    n64 = length.astype(np.uint64)
    a = _mix_array(a ^ n64)
    b = _mix_array(b + n64)
    out_a = np.empty(n, dtype=np.uint64)
    out_b = np.empty(n, dtype=np.uint64)
    out_a[order] = a
    out_b[order] = b
    return out_a, out_b


def _string_hashes(arr: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    offsets, data = string_buffers(arr)
    if _vectorised(len(data)):
        return _hash_strings_array(offsets, data)
    a = np.empty(len(arr), dtype=np.uint64)
    b = np.empty(len(arr), dtype=np.uint64)
    _hash_strings(offsets, data, a, b)
    return a, b


def _int_hashes(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if _vectorised(len(values)):
        return (
            _mix_array(values + np.uint64(0x632BE59BD9B4E019)),
            _mix_array(values ^ np.uint64(0x8CB92BA72F3D8DD7)),
        )
    a = np.empty(len(values), dtype=np.uint64)
    b = np.empty(len(values), dtype=np.uint64)
    _hash_ints(values, a, b)
    return a, b


def column_hashes(table: pa.Table, columns: Sequence[str]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Two 64-bit hashes of every value of each column. Text is hashed once per distinct value (a key
    column repeats its addresses), then gathered by the dictionary codes."""
    out = {}
    for c in columns:
        col = table[c]
        if isinstance(col, pa.ChunkedArray):
            col = col.combine_chunks()  # unifies the dictionaries of dictionary chunks
        if pa.types.is_integer(col.type):
            out[c] = _int_hashes(col.to_numpy(zero_copy_only=False).astype(np.uint64))
            continue
        if col.null_count:  # hashed as the empty string, as its Arrow buffers hold it
            col = col.cast(pa.string()).fill_null("")
        enc = col if pa.types.is_dictionary(col.type) else col.dictionary_encode()
        da, db = _string_hashes(enc.dictionary)
        idx = enc.indices.to_numpy(zero_copy_only=False)
        out[c] = (da[idx], db[idx])
    return out


def combine_hashes(
    hashes: Mapping[str, tuple[np.ndarray, np.ndarray]], columns: Sequence[str], n: int
) -> tuple[np.ndarray, np.ndarray]:
    """Fingerprint of the tuple ``columns`` (order matters) from per-column hashes."""
    h1 = np.full(n, _SEED1, dtype=np.uint64)
    h2 = np.full(n, _SEED2, dtype=np.uint64)
    vectorised = _vectorised(n)
    for c in columns:
        a, b = hashes[c]
        if vectorised:
            h1 = _mix_array(h1 ^ a)
            h2 = _mix_array(h2 + b)
        else:
            _combine(h1, h2, a, b)
    return h1, h2


def key_hashes(table: pa.Table, keys: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """128-bit fingerprint (two uint64 arrays) of each row's key."""
    return combine_hashes(column_hashes(table, keys), keys, table.num_rows)
