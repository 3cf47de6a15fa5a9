"""Addresses as integers <-> canonical text, and longest-prefix match against the ``networks`` map.

Addresses travel through flowdiff as ``(ip_version, hi, lo)`` triples of numpy arrays (see
``flowdiff.schema.PACKET_FIELDS``): IPv4 in the low 32 bits of ``lo``, IPv6 as two 64-bit halves.
Text is only made at the very end, and only for distinct values, because formatting is the one
part of the pipeline that cannot be fully vectorised (IPv6 goes through ``socket.inet_ntop``).

Canonical text, used in every stored table so that equal addresses are equal strings:

* IPv4: dotted quad without leading zeros (``10.1.2.3``);
* IPv6: ``socket.inet_ntop``, i.e. RFC 5952 (``2001:db8::1``, ``::ffff:1.2.3.4``);
* networks: ``10.1.2.0/24``, ``2001:db8:1::/64`` (host bits cleared, IPv4 prefixes clamped to 32);
* MACs: ``aa:bb:cc:dd:ee:ff``;
* ``''`` for ip_version 0 (no IP header).
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from flowdiff._jit import njit
from flowdiff._lazy import lazy

pc = lazy("pyarrow.compute")

if TYPE_CHECKING:
    import pandas as pd

OTHER = "other"
_U64 = np.uint64
_ALL64 = (1 << 64) - 1

__all__ = [
    "OTHER",
    "NetworkMap",
    "address_text",
    "address_array",
    "network_array",
    "mac_array",
    "network_text",
    "mac_text",
    "parse_addresses",
    "reduce_ipv6_text",
    "is_local_mac",
    "mask_address",
]


# ---------------------------------------------------------------------------------------------
# masks


def _hi_mask(prefix: int) -> int:
    """Mask of the upper 64 bits of an IPv6 address for ``prefix`` (0..128)."""
    p = min(max(prefix, 0), 64)
    return (_ALL64 << (64 - p)) & _ALL64


def _lo_mask(prefix: int) -> int:
    p = min(max(prefix - 64, 0), 64)
    return (_ALL64 << (64 - p)) & _ALL64


def _v4_mask(prefix: int) -> int:
    p = min(max(prefix, 0), 32)
    return ((1 << 32) - 1) << (32 - p) & ((1 << 32) - 1)


def mask_address(
    ip_version: np.ndarray, hi: np.ndarray, lo: np.ndarray, prefix: int
) -> tuple[np.ndarray, np.ndarray, int, int]:
    """Clear host bits: returns ``(hi, lo, v4_prefix, v6_prefix)``; IPv4 prefixes clamp to 32."""
    ver = np.asarray(ip_version)
    hi = np.asarray(hi, dtype=np.uint64)
    lo = np.asarray(lo, dtype=np.uint64)
    p4, p6 = min(prefix, 32), min(prefix, 128)
    is4 = ver == 4
    mhi = np.where(is4, _U64(0), hi & _U64(_hi_mask(p6)))
    mlo = np.where(is4, lo & _U64(_v4_mask(p4)), lo & _U64(_lo_mask(p6)))
    return mhi.astype(np.uint64), mlo.astype(np.uint64), p4, p6


# ---------------------------------------------------------------------------------------------
# integers -> text


@njit(cache=True)
def _v4_chars(v: np.ndarray, offsets: np.ndarray, out: np.ndarray) -> int:
    """Writes dotted quads into one byte buffer (Arrow string layout); returns the bytes used."""
    pos = 0
    for i in range(v.shape[0]):
        offsets[i] = pos
        x = v[i]
        for k in range(4):
            o = (x >> (24 - 8 * k)) & 0xFF
            if o >= 100:
                out[pos] = 48 + o // 100
                pos += 1
            if o >= 10:
                out[pos] = 48 + (o // 10) % 10
                pos += 1
            out[pos] = 48 + o % 10
            pos += 1
            if k < 3:
                out[pos] = 46
                pos += 1
    offsets[v.shape[0]] = pos
    return pos


def _v4_text_arrow(lo: np.ndarray) -> pa.Array:
    """Dotted quads for IPv4 addresses, built by a compiled loop straight into an Arrow buffer."""
    v = np.asarray(lo, dtype=np.uint64).astype(np.int64) & 0xFFFFFFFF
    n = len(v)
    offsets = np.empty(n + 1, dtype=np.int32)
    out = np.empty(15 * n, dtype=np.uint8)
    used = _v4_chars(v, offsets, out)
    return pa.StringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(out[:used]))


def _v6_text(hi: np.ndarray, lo: np.ndarray) -> list[str]:
    """RFC 5952 text; a loop, but it only ever sees distinct addresses."""
    raw = np.empty((len(hi), 2), dtype=">u8")
    raw[:, 0] = hi
    raw[:, 1] = lo
    buf = raw.tobytes()
    ntop = socket.inet_ntop
    af = socket.AF_INET6
    return [ntop(af, buf[i : i + 16]) for i in range(0, len(buf), 16)]


def _objects(arr: pa.Array) -> np.ndarray:
    """Strings of an Arrow array as a numpy object array (Arrow's own to_numpy imports pandas for that)."""
    out = np.empty(len(arr), dtype=object)
    out[:] = arr.to_pylist()
    return out


def address_array(ip_version: np.ndarray, hi: np.ndarray, lo: np.ndarray) -> pa.Array:
    """``address_text`` as an Arrow string array (no Python objects)."""
    ver = np.asarray(ip_version)
    hi = np.asarray(hi, dtype=np.uint64)
    lo = np.asarray(lo, dtype=np.uint64)
    n = len(ver)
    is4 = ver == 4
    is6 = ver == 6
    if is4.all():
        return _v4_text_arrow(lo)
    out = np.full(n, "", dtype=object)
    if is4.any():
        out[is4] = _objects(_v4_text_arrow(lo[is4]))
    if is6.any():
        out[is6] = _v6_text(hi[is6], lo[is6])
    return pa.array(out, type=pa.string())


def address_text(ip_version: np.ndarray, hi: np.ndarray, lo: np.ndarray) -> np.ndarray:
    """Canonical text of each address (object array); ``''`` where ``ip_version`` is 0."""
    return _objects(address_array(ip_version, hi, lo))


def network_array(ip_version: np.ndarray, hi: np.ndarray, lo: np.ndarray, prefix: int) -> pa.Array:
    """``network_text`` as an Arrow string array."""
    ver = np.asarray(ip_version)
    mhi, mlo, p4, p6 = mask_address(ver, hi, lo, prefix)
    addr = address_array(ver, mhi, mlo)
    suffix = np.where(ver == 4, f"/{p4}", np.where(ver == 6, f"/{p6}", "")).astype(object)
    return pc.binary_join_element_wise(addr, pa.array(suffix, type=pa.string()), "")


def network_text(ip_version: np.ndarray, hi: np.ndarray, lo: np.ndarray, prefix: int) -> np.ndarray:
    """``10.1.2.0/24`` / ``2001:db8:1::/64`` for each address; IPv4 prefixes clamp to 32."""
    arr = network_array(ip_version, hi, lo, prefix)
    return _objects(arr)


_HEX = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)


def mac_array(mac: np.ndarray) -> pa.Array:
    """Builds the 17 ASCII bytes of every MAC at once: no per-element formatting."""
    m = np.asarray(mac, dtype=np.uint64)
    n = len(m)
    chars = np.full((n, 17), ord(":"), dtype=np.uint8)
    for i in range(6):
        byte = (m >> _U64(8 * (5 - i))) & _U64(0xFF)
        chars[:, 3 * i] = _HEX[(byte >> _U64(4)).astype(np.intp)]
        chars[:, 3 * i + 1] = _HEX[(byte & _U64(0xF)).astype(np.intp)]
    offsets = pa.py_buffer(np.arange(0, 17 * (n + 1), 17, dtype=np.int32))  # pa.array imports pandas
    return pa.StringArray.from_buffers(n, offsets, pa.py_buffer(chars.tobytes()))


def mac_text(mac: np.ndarray) -> np.ndarray:
    """``aa:bb:cc:dd:ee:ff`` for each 48-bit MAC held in the low bits of a uint64."""
    return _objects(mac_array(mac))


def is_local_mac(macs: Sequence[str] | pd.Series | np.ndarray) -> np.ndarray:
    """True for locally administered (e.g. randomised) MACs in ``aa:bb:..`` text: bit 1 of octet 0."""
    arr = pa.array(np.asarray(macs, dtype=object), type=pa.string(), from_pandas=True)
    # the second hex digit of the first octet carries the U/L bit (0x02)
    digit = pc.utf8_slice_codeunits(arr, 1, 2)
    local = pc.is_in(digit, value_set=pa.array(list("2367abefABEF")))
    ok = pc.equal(pc.utf8_length(arr), 17)
    return np.asarray(pc.fill_null(pc.and_(local, ok), False).to_numpy(zero_copy_only=False), dtype=bool)


# ---------------------------------------------------------------------------------------------
# text -> integers

_OCTET = r"(?P<{}>25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_V4_RE = "^" + r"\.".join(_OCTET.format(n) for n in "abcd") + "$"


def parse_addresses(
    addresses: Sequence[str] | pd.Series | np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(ip_version, hi, lo)`` for text addresses; ip_version 0 for anything that is not a single
    address (labels, ``1.2.3.0/24`` prefixes, ``''``, None). Parses distinct values only."""
    import pandas as pd  # only here: collect never parses text addresses, and pandas costs 0.4 s to import

    values = pd.Series(np.asarray(addresses, dtype=object))
    codes, uniques = pd.factorize(values, use_na_sentinel=True)
    uniq = np.asarray(uniques, dtype=object)
    m = len(uniq)
    uver = np.zeros(m + 1, dtype=np.uint8)  # last slot: NA
    uhi = np.zeros(m + 1, dtype=np.uint64)
    ulo = np.zeros(m + 1, dtype=np.uint64)
    if m:
        arr = pa.array([u if isinstance(u, str) else None for u in uniq], type=pa.string())
        parts = pc.extract_regex(arr, _V4_RE)
        valid = np.asarray(parts.is_valid().to_numpy(zero_copy_only=False), dtype=bool)
        if valid.any():
            val = np.zeros(m, dtype=np.uint64)
            for i, name in enumerate(parts.type):
                f = pc.fill_null(pc.struct_field(parts, name.name), "0")
                val |= pc.cast(f, pa.uint64()).to_numpy().astype(np.uint64) << _U64(8 * (3 - i))
            uver[:m][valid] = 4
            ulo[:m][valid] = val[valid]
        colon = np.flatnonzero(~valid & np.asarray(pc.fill_null(pc.match_substring(arr, ":"), False)))
        for i in colon:
            try:
                b = socket.inet_pton(socket.AF_INET6, uniq[i])
            except (OSError, ValueError):
                continue
            uver[i] = 6
            uhi[i] = int.from_bytes(b[:8], "big")
            ulo[i] = int.from_bytes(b[8:], "big")
    idx = np.where(codes < 0, m, codes)
    return uver[idx], uhi[idx], ulo[idx]


def reduce_ipv6_text(addresses: Sequence[str] | pd.Series | np.ndarray, prefix: int) -> np.ndarray:
    """IPv6 addresses become their ``/prefix`` network text; everything else is returned unchanged.
    Used so that RFC 4941 temporary addresses do not make a new key every day."""
    values = np.asarray(addresses, dtype=object)
    ver, hi, lo = parse_addresses(values)
    out = values.copy()
    is6 = ver == 6
    if is6.any():
        out[is6] = network_text(ver[is6], hi[is6], lo[is6], prefix)
    return out


# ---------------------------------------------------------------------------------------------
# longest-prefix match


class _PrefixTable:
    """Networks of one prefix length of one IP version: sorted keys and their label codes."""

    def __init__(self, version: int, prefix: int, nets: list[tuple[int, int]]):
        self.version = version
        self.prefix = prefix
        nets = sorted(nets)
        self.keys = np.array([k for k, _ in nets], dtype=object)  # ints up to 128 bits
        self.codes = np.array([c for _, c in nets], dtype=np.int64)
        if version == 4:
            self.mask_lo = _v4_mask(prefix)
        else:
            self.mask_hi = _hi_mask(prefix)
            self.mask_lo = _lo_mask(prefix)
        if version == 4 or prefix <= 64:
            # one 64-bit word identifies the network: searchsorted on it
            word = (lambda k: k) if version == 4 else (lambda k: k >> 64)
            self.words = np.array([word(k) for k in self.keys], dtype=np.uint64)
            self.pairs: dict[tuple[int, int], int] | None = None
        else:
            self.words = np.unique(np.array([k >> 64 for k in self.keys], dtype=np.uint64))
            self.pairs = {(k >> 64, k & _ALL64): int(c) for k, c in zip(self.keys, self.codes, strict=True)}

    def match(self, hi: np.ndarray, lo: np.ndarray) -> np.ndarray:
        """Label code per address, -1 where no network of this table contains it."""
        out = np.full(len(lo), -1, dtype=np.int64)
        if self.version == 4:
            q = lo & _U64(self.mask_lo)
        elif self.pairs is None:
            q = hi & _U64(self.mask_hi)
        else:
            return self._match_pairs(hi, lo, out)
        pos = np.searchsorted(self.words, q)
        pos = np.minimum(pos, len(self.words) - 1)
        hit = self.words[pos] == q
        out[hit] = self.codes[pos[hit]]
        return out

    def _match_pairs(self, hi: np.ndarray, lo: np.ndarray, out: np.ndarray) -> np.ndarray:
        # prefixes longer than /64 are rare (point-to-point links, single hosts): only the
        # addresses whose upper half matches some network are looked up one by one
        cand = np.flatnonzero(np.isin(hi, self.words))
        mlo = lo[cand] & _U64(self.mask_lo)
        assert self.pairs is not None
        for i, h, m in zip(cand, hi[cand].tolist(), mlo.tolist(), strict=True):
            out[i] = self.pairs.get((h, m), -1)
        return out


class NetworkMap:
    """Longest-prefix match of addresses to the labels of the config's ``networks`` map.

    Labels are also available as small integer codes (``codes_for_ints``) so that callers can group
    by label without building strings; ``labels[code]`` is the text, ``other_code`` the code of
    ``"other"`` (no network contains the address, or not an IP address at all).
    """

    def __init__(self, networks: Mapping[str, str]):
        parsed = []
        for cidr, label in networks.items():
            net = ipaddress.ip_network(str(cidr), strict=False)
            parsed.append((net, str(label)))
        self.labels: tuple[str, ...] = tuple(sorted({lab for _, lab in parsed} | {OTHER}))
        self.other_code = self.labels.index(OTHER)
        code_of = {lab: i for i, lab in enumerate(self.labels)}
        groups: dict[tuple[int, int], list[tuple[int, int]]] = {}
        for net, lab in parsed:
            groups.setdefault((net.version, net.prefixlen), []).append(
                (int(net.network_address), code_of[lab])
            )
        # longest prefixes first: the first table that matches wins
        self._tables = {
            v: [
                _PrefixTable(v, p, groups[(vv, p)])
                for vv, p in sorted(groups, key=lambda k: -k[1])
                if vv == v
            ]
            for v in (4, 6)
        }
        self.networks = {str(net): lab for net, lab in parsed}

    def __repr__(self) -> str:
        return f"NetworkMap({len(self.networks)} networks, labels={list(self.labels)})"

    def codes_for_ints(self, ip_version: np.ndarray, hi: np.ndarray, lo: np.ndarray) -> np.ndarray:
        """Label code (index into ``labels``) per address, as int64."""
        ver = np.asarray(ip_version)
        hi = np.asarray(hi, dtype=np.uint64)
        lo = np.asarray(lo, dtype=np.uint64)
        out = np.full(len(ver), self.other_code, dtype=np.int64)
        for v, tables in self._tables.items():
            if not tables:
                continue
            todo = np.flatnonzero(ver == v)
            for t in tables:
                if not len(todo):
                    break
                got = t.match(hi[todo], lo[todo])
                hit = got >= 0
                out[todo[hit]] = got[hit]
                todo = todo[~hit]
        return out

    def labels_for_ints(self, ip_version: np.ndarray, hi: np.ndarray, lo: np.ndarray) -> np.ndarray:
        """Label text per address (object array)."""
        return np.asarray(self.labels, dtype=object)[self.codes_for_ints(ip_version, hi, lo)]

    def labels_for_text(self, addresses: Sequence[str] | pd.Series | np.ndarray) -> np.ndarray:
        """Label per text address; anything that is not one address (an already collapsed label,
        a ``1.2.3.0/24`` prefix, ``''``) is ``"other"``."""
        ver, hi, lo = parse_addresses(addresses)
        return self.labels_for_ints(ver, hi, lo)

    def contains(self, label: str, addresses: Sequence[str] | pd.Series | np.ndarray) -> np.ndarray:
        """True where the longest match of the text address is ``label``."""
        return self.labels_for_text(addresses) == label

    def contains_any(
        self, labels: Iterable[str], addresses: Sequence[str] | pd.Series | np.ndarray
    ) -> np.ndarray:
        """True where the longest match of the text address is one of ``labels`` (for ``collapse``)."""
        return np.isin(self.labels_for_text(addresses), np.asarray(list(labels), dtype=object))
