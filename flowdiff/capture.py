"""Reading pcap / pcapng (optionally .gz) captures into batches of record descriptors.

INTERFACE (fixed; the owner fills in the implementation):

    @dataclass
    class RecordBatch:
        buf: np.ndarray       # uint8: the bytes the records point into (a chunk of the capture)
        offset: np.ndarray    # int64: start of each record's packet data in buf
        caplen: np.ndarray    # uint32: captured bytes available at offset
        wirelen: np.ndarray   # uint32: original length on the wire
        ts_ns: np.ndarray     # int64: UTC nanoseconds since the epoch (0 when the format has none, e.g. SPB)
        linktype: np.ndarray  # uint16: LINKTYPE_* of each record (pcapng interfaces may differ)

    open_capture(path) -> CaptureReader
        .batches(chunk_bytes=...) -> Iterator[RecordBatch]   # streaming: memory bounded by chunk size
        .stats -> CaptureStats  (records, damage: list[Damage], content hash once fully read, format, ...)
"""
