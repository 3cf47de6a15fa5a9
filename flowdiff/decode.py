"""Header decoding: RecordBatch -> per-frame field arrays (flowdiff.schema.PACKET_FIELDS).

INTERFACE (fixed; the owner fills in the implementation):

    decode(batch: RecordBatch) -> dict[str, np.ndarray]   # keys/dtypes exactly schema.PACKET_FIELDS
    LINKTYPE_NAMES: dict[int, str]                         # for messages about unknown link types
"""
