"""Compiled walkers for the flow export fast path of :class:`flowdiff.netflow.FlowDecoder`.

``FlowDecoder.add`` reads one datagram in Python (a few microseconds per set): fine for templates,
odd datagrams and the tests' reference, too slow for a spool of a million records. These kernels read
the plain datagrams of a whole capture chunk in one call: NetFlow v5, and v9/IPFIX messages made only of
data sets whose template is known, fixed-length and not an options template. They stop at the first
datagram that is anything else (a template set, an unknown template, a bad length, another version),
which ``FlowDecoder`` then reads with ``add`` exactly as before, so the two paths give the same records,
counts and template state in every case. Imported lazily (collect only): numba stays out of start-up.
"""

from __future__ import annotations

import numpy as np

from flowdiff._jit import njit

__all__ = ["FULL", "SLOW", "udp_payloads", "walk", "gather_records"]

SLOW = 1  # stopped at a datagram that needs FlowDecoder.add
FULL = 2  # stopped because the set arrays are full (call again)
MAX_CODE = 1 << 15  # exporter codes the template keys can hold


@njit(inline="always")
def _u16(b, p):
    return (np.int64(b[p]) << 8) | np.int64(b[p + 1])


@njit(inline="always")
def _u32(b, p):
    return (_u16(b, p) << 16) | _u16(b, p + 2)


@njit(cache=True, nogil=True)
def udp_payloads(buf, off, cap, sport, dport, out_off, out_len):
    """``netflow._udp_payload`` for every frame: the payload behind the first UDP header with these
    ports whose length ends the frame (up to 64 bytes of trailer after it), within the first 512 bytes;
    offset -1 when there is none."""
    for i in range(off.shape[0]):
        o = off[i]
        n = cap[i]
        out_off[i] = -1
        out_len[i] = -1
        lim = min(n, 512)
        a0, a1 = (sport[i] >> 8) & 0xFF, sport[i] & 0xFF
        a2, a3 = (dport[i] >> 8) & 0xFF, dport[i] & 0xFF
        p = 0
        while p + 4 <= lim:
            if buf[o + p] == a0 and buf[o + p + 1] == a1 and buf[o + p + 2] == a2 and buf[o + p + 3] == a3:
                if p + 8 > n:
                    break
                ulen = _u16(buf, o + p + 4)
                if ulen >= 8 and p + ulen <= n and n - (p + ulen) <= 64:
                    out_off[i] = o + p + 8
                    out_len[i] = ulen - 8
                    break
            p += 1


@njit(cache=True, nogil=True)
def walk(
    buf, poff, plen, codes, start, tkeys, tinfo, v5_slot,
    s_slot, s_off, s_count, s_dgram, s_init,
    d_export, d_uptime, d_ver, d_domain, d_seq, d_adv,
):  # fmt: skip
    """Datagrams ``start..`` (payload ``buf[poff[i]:poff[i] + plen[i]]``, exporter code ``codes[i]``) into
    data sets: template slot, absolute offset of the first record, record count, datagram, the domain's
    systemInitTimeMilliseconds (``s_*``), and per datagram its export time, sysUpTime (-1: none),
    version, domain, sequence number and how far it advances the sequence (``d_*``).

    Templates: ``tkeys`` sorted keys ``code << 48 | domain << 16 | template id`` with ``tinfo`` rows
    (slot, record length, init ms). Returns (where it stopped, 0 / SLOW / FULL, sets written); a
    datagram is either read whole here or not at all."""
    m = poff.shape[0]
    cap = s_slot.shape[0]
    nk = tkeys.shape[0]
    ns = 0
    i = start
    while i < m:
        p = poff[i]
        n = plen[i]
        code = codes[i]
        if n < 4 or code >= MAX_CODE:
            return i, SLOW, ns
        ver = _u16(buf, p)
        first = ns
        if ver == 5:
            if n < 24:
                return i, SLOW, ns
            count = _u16(buf, p + 2)
            if count == 0 or 24 + 48 * count > n or count > 30:
                return i, SLOW, ns
            if ns >= cap:
                return i, FULL, ns
            s_slot[ns] = v5_slot
            s_off[ns] = p + 24
            s_count[ns] = count
            s_dgram[ns] = i
            s_init[ns] = -1
            ns += 1
            d_uptime[i] = _u32(buf, p + 4)
            d_export[i] = _u32(buf, p + 8) * 1_000_000_000 + min(_u32(buf, p + 12), 999_999_999)
            d_ver[i] = 5
            d_domain[i] = np.int64(buf[p + 21])
            d_seq[i] = _u32(buf, p + 16)
            d_adv[i] = count
        elif ver == 9 or ver == 10:
            if ver == 9:
                if n < 20:
                    return i, SLOW, ns
                uptime = _u32(buf, p + 4)
                secs = _u32(buf, p + 8)
                seq = _u32(buf, p + 12)
                domain = _u32(buf, p + 16)
                pos, end = 20, n
            else:
                if n < 16:
                    return i, SLOW, ns
                length = _u16(buf, p + 2)
                secs = _u32(buf, p + 4)
                seq = _u32(buf, p + 8)
                domain = _u32(buf, p + 12)
                if length < 16 or length > n:
                    return i, SLOW, ns
                uptime = -1
                pos, end = 16, length
            records = 0
            while pos + 4 <= end:
                sid = _u16(buf, p + pos)
                slen = _u16(buf, p + pos + 2)
                if slen < 4 or pos + slen > end or sid < 256:
                    return i, SLOW, first
                key = (code << 48) | (domain << 16) | sid
                k = np.searchsorted(tkeys, key)
                if k >= nk or tkeys[k] != key:
                    return i, SLOW, first
                reclen = tinfo[k, 1]
                count = (slen - 4) // reclen
                records += count
                if count:
                    if ns >= cap:
                        return i, FULL, first
                    s_slot[ns] = tinfo[k, 0]
                    s_off[ns] = p + pos + 4
                    s_count[ns] = count
                    s_dgram[ns] = i
                    s_init[ns] = tinfo[k, 2]
                    ns += 1
                pos += slen
            d_uptime[i] = uptime
            d_export[i] = secs * 1_000_000_000
            d_ver[i] = ver
            d_domain[i] = domain
            d_seq[i] = seq
            d_adv[i] = 1 if ver == 9 else records
        else:
            return i, SLOW, ns
        i += 1
    return m, 0, ns


@njit(cache=True, nogil=True)
def gather_records(buf, s_off, s_count, reclen, total):
    """The records of the sets (offset, count), of ``reclen`` bytes each, one after the other."""
    out = np.empty(total * reclen, dtype=np.uint8)
    o = 0
    for k in range(s_off.shape[0]):
        a = s_off[k]
        nbytes = s_count[k] * reclen
        out[o : o + nbytes] = buf[a : a + nbytes]
        o += nbytes
    return out
