"""The store on object storage: ``store = "s3://bucket/prefix"`` (AWS S3, MinIO, Ceph RGW).

Same layout as a local store (see flowdiff.store), as keys under the prefix, through pyarrow's S3
filesystem (no extra dependency). Credentials come from the standard AWS chain (``AWS_ACCESS_KEY_ID`` /
``AWS_SECRET_ACCESS_KEY`` / ``AWS_SESSION_TOKEN``, ``~/.aws/credentials``, ``AWS_PROFILE``, instance
roles): never from the command line, never logged. The endpoint of a non-AWS service comes from
``[s3] endpoint_url`` in the config, else ``$AWS_ENDPOINT_URL``.

Crash safety without rename (S3 has none, and no append):

* an interval file is written once under its final key: a PUT of the whole object is atomic, readers
  see the old object or the new one, never a part. Its sources list (Parquet metadata) makes the merge
  exact if the capture is collected again after a crash, as on a local store.
* the ledger is one small object per entry under ``_ledger/`` (``<time ns>-<random>.json``), written
  after the data; read back in key order. A crash before it means the capture is read again, and the
  sources lists keep every count single.
* locks: S3 has no lock. The writer lock is a local file lock per store and sensor (in the temp folder of
  the machine): one sensor is one writer (one collect at a time on its own host), and sensors write
  disjoint ``sensor=`` partitions. Two hosts must never collect under the same sensor name into one
  bucket prefix.

Errors (unreachable endpoint, wrong credentials, missing bucket) become one line naming the store and
what is wrong (:class:`StoreError`); the first access checks the bucket, so nothing is half-written.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path, PurePosixPath
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from flowdiff.config import StoreUrl
from flowdiff.durable import crash_point, file_lock
from flowdiff.errors import StoreError
from flowdiff.schema import PARTITION
from flowdiff.store import TABLE_META, LedgerEntry, Store, WriteBatch, _interval_of_file
from flowdiff.vocab import now_iso

SCHEME = "s3://"
LEDGER_PREFIX = "_ledger"
ENDPOINT_ENV = "AWS_ENDPOINT_URL"
_LEDGER_FIELDS = frozenset(LedgerEntry.__dataclass_fields__)


def is_remote(location: Any) -> bool:
    return isinstance(location, str) and location.startswith(SCHEME)


def parse_url(url: str) -> tuple[str, str]:
    """(bucket, prefix) of ``s3://bucket/prefix``; a URL without a bucket is an error."""
    rest = url[len(SCHEME) :].strip("/")
    bucket, _, prefix = rest.partition("/")
    if not bucket:
        raise StoreError(f"store {url}: no bucket name (expected s3://bucket/prefix)")
    return bucket, prefix.strip("/")


def s3_filesystem(endpoint_url: str | None) -> Any:
    """pyarrow's S3 filesystem: credentials from the standard AWS chain, short timeouts and two
    attempts, so that an unreachable endpoint fails in seconds, not minutes."""
    from pyarrow import fs

    endpoint = endpoint_url or os.environ.get(ENDPOINT_ENV) or None
    kw: dict[str, Any] = {
        "connect_timeout": 5,
        "request_timeout": 30,
        "retry_strategy": fs.AwsStandardS3RetryStrategy(max_attempts=2),
        # an object smaller than a part goes up in one PutObject (not a one-part multipart upload)
        "allow_delayed_open": True,
    }
    if endpoint:
        scheme, _, host = endpoint.partition("://")
        kw["endpoint_override"] = host.rstrip("/") if host else endpoint
        kw["scheme"] = scheme if host else "https"
        kw["region"] = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    return fs.S3FileSystem(**kw)


def explain(url: str, error: BaseException, endpoint: str | None = None) -> str:
    """One line naming the store and what is wrong, from pyarrow's AWS error text (no secrets: the
    AWS SDK never puts the keys in its messages)."""
    text = " ".join(str(error).split())
    low = text.lower()
    where = f" at {endpoint}" if endpoint else ""
    if "nosuchbucket" in low or "bucket does not exist" in low or "no such bucket" in low:
        return f"store {url}: the bucket {parse_url(url)[0]!r} does not exist{where}"
    if any(
        s in low
        for s in (
            "access denied",
            "access_denied",
            "accessdenied",
            "invalidaccesskeyid",
            "signaturedoesnotmatch",
            "forbidden",
        )
    ):
        return f"store {url}: access denied{where} (check the AWS credentials: AWS_ACCESS_KEY_ID, ~/.aws)"
    if any(s in low for s in ("curl", "connect", "network", "resolve", "timed out", "timeout")):
        return f"store {url}: cannot reach the endpoint {endpoint or 'of AWS S3'} ({text[:200]})"
    return f"store {url}: {text[:300]}"


class S3Store(Store):
    """A :class:`Store` whose files are objects. Same reads and results; see the module doc for the
    write rules."""

    def __init__(self, root: str | os.PathLike, sensor: str | None = None):
        url = str(root)
        self.url = url
        self.endpoint = getattr(root, "endpoint_url", None) or os.environ.get(ENDPOINT_ENV) or None
        self.bucket, self.prefix = parse_url(url)
        self.root = PurePosixPath(self.bucket, self.prefix) if self.prefix else PurePosixPath(self.bucket)
        self.sensor = sensor
        self._filesystem = s3_filesystem(self.endpoint)
        self._checked = False

    def __repr__(self) -> str:
        return f"Store({self.url!r}, sensor={self.sensor!r})"

    def __getstate__(self) -> dict[str, Any]:
        return {"url": StoreUrl(self.url, self.endpoint), "sensor": self.sensor}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["url"], state["sensor"])  # type: ignore[misc]

    # -- the one place that talks to S3: every error becomes one line naming the store
    def _fs(self) -> Any:
        if not self._checked:
            self._check_bucket()
        return self._filesystem

    def _check_bucket(self) -> None:
        from pyarrow import fs

        try:
            info = self._filesystem.get_file_info(self.bucket)
            # a HEAD on the bucket does not check the credentials on every server: list it as well
            if info.type != fs.FileType.NotFound:
                self._filesystem.get_file_info(fs.FileSelector(self.bucket, allow_not_found=True))
        except OSError as e:
            raise StoreError(explain(self.url, e, self.endpoint)) from None
        if info.type == fs.FileType.NotFound:
            raise StoreError(
                f"store {self.url}: the bucket {self.bucket!r} does not exist"
                + (f" at {self.endpoint}" if self.endpoint else "")
            )
        self._checked = True

    def _call(self, fn: Any, *args: Any, **kw: Any) -> Any:
        try:
            return fn(self._fs(), *args, **kw)
        except FileNotFoundError:
            raise
        except OSError as e:
            raise StoreError(explain(self.url, e, self.endpoint)) from None

    def _key(self, *parts: str) -> str:
        return str(PurePosixPath(self.root, *parts))

    def _list(self, sub: str) -> list[Any]:
        from pyarrow import fs

        sel = fs.FileSelector(self._key(sub), recursive=True, allow_not_found=True)
        return self._call(lambda f: f.get_file_info(sel))

    def _read_bytes(self, key: str) -> bytes:
        def read(f: Any) -> bytes:
            with f.open_input_stream(key) as s:
                return s.read()

        try:
            return self._call(read)
        except FileNotFoundError:
            raise

    def put(self, key: str, data: bytes | pa.Buffer) -> None:
        """One PUT: the object appears whole under its final key, or not at all."""

        def write(f: Any) -> None:
            with f.open_output_stream(key) as s:
                s.write(data)

        self._call(write)

    # -- table definitions
    def exists(self) -> bool:
        return bool(self.tables()) or bool(self._list(LEDGER_PREFIX))

    def tables(self) -> list[str]:
        out = []
        for info in self._list(""):
            rel = PurePosixPath(info.path).relative_to(self.root)
            if len(rel.parts) == 2 and rel.name == TABLE_META:
                out.append(rel.parts[0])
        return sorted(out)

    def table_meta(self, table: str) -> dict[str, Any] | None:
        key = self._key(table, TABLE_META)
        try:
            return json.loads(self._read_bytes(key).decode("utf-8"))
        except FileNotFoundError:
            return None
        except ValueError as e:
            raise StoreError(f"{SCHEME}{key}: unreadable table definition: {e}") from None

    def ensure_table(self, table: str, keys: Sequence[str], interval: int) -> None:
        if self.table_meta(table) is None:
            want = {"keys": list(keys), "interval": int(interval)}
            self.put(self._key(table, TABLE_META), (json.dumps(want, indent=1) + "\n").encode())
            return
        super().ensure_table(table, keys, interval)

    # -- files
    def _table_dir(self, table: str) -> PurePosixPath:  # type: ignore[override]
        return PurePosixPath(self.root, table)

    def _interval_infos(self, table: str) -> list[Any]:
        out = []
        for info in self._list(table):
            p = PurePosixPath(info.path)
            if not p.name.endswith(".parquet") or not p.parent.name.startswith(f"{PARTITION}="):
                continue
            if self.sensor is not None and p.parent.name != f"{PARTITION}={self.sensor}":
                continue
            if _interval_of_file(p.name) is None:
                continue
            out.append(info)
        return sorted(out, key=lambda i: (PurePosixPath(i.path).parent.name, PurePosixPath(i.path).name))

    def files(self, table: str, since: Any = None, until: Any = None) -> list[PurePosixPath]:  # type: ignore[override]
        from flowdiff.vocab import utc_timestamp

        lo, hi = utc_timestamp(since), utc_timestamp(until)
        out = []
        for info in self._interval_infos(table):
            p = PurePosixPath(info.path)
            start = _interval_of_file(p.name)
            if (lo is not None and start < lo) or (hi is not None and start >= hi):
                continue
            out.append(p)
        return out

    def interval_tokens(self, table: str) -> dict[Any, str]:
        out: dict[Any, list[str]] = {}
        for info in self._interval_infos(table):
            p = PurePosixPath(info.path)
            out.setdefault(_interval_of_file(p.name), []).append(
                f"{p.parent.name}:{info.size}:{info.mtime_ns}"
            )
        return {k: "|".join(sorted(v)) for k, v in sorted(out.items())}

    def row_count(self, table: str) -> int:
        return sum(
            self._call(lambda f, p=p: pq.ParquetFile(f.open_input_file(str(p))).metadata.num_rows)
            for p in self.files(table)
        )

    def interval_path(self, table: str, start: Any) -> PurePosixPath:  # type: ignore[override]
        from flowdiff.store import interval_file_name

        return PurePosixPath(self.root, table, f"{PARTITION}={self.sensor}", interval_file_name(start))

    def batch(self) -> WriteBatch:
        if self.sensor is None:
            raise StoreError("a sensor name is needed to write to the store")
        self._fs()  # bucket and credentials checked before anything is read or written
        return S3WriteBatch(self)

    def remove_stale_temp_files(self) -> int:
        return 0  # no temp objects: every object is written once under its final key

    def lock(self, wait: float = 60.0) -> contextlib.AbstractContextManager[None]:
        """A local lock per store and sensor (see the module doc: one sensor is one writer)."""
        digest = hashlib.sha256(f"{self.endpoint}|{self.url}|{self.sensor}".encode()).hexdigest()[:16]
        path = Path(tempfile.gettempdir()) / "flowdiff-locks" / f"{digest}.lock"
        return file_lock(path, wait=wait, what=f"store {self.url}")

    # -- ledger: one object per entry
    @property
    def ledger_path(self) -> PurePosixPath:  # type: ignore[override]
        return PurePosixPath(self.root, LEDGER_PREFIX)

    def ledger(self) -> list[LedgerEntry]:
        out = []
        infos = sorted(self._list(LEDGER_PREFIX), key=lambda i: PurePosixPath(i.path).name)
        for info in infos:
            if not info.path.endswith(".json"):
                continue
            try:
                fields = json.loads(self._read_bytes(info.path).decode("utf-8"))
                out.append(LedgerEntry(**{k: v for k, v in fields.items() if k in _LEDGER_FIELDS}))
            except FileNotFoundError:
                continue
            except (ValueError, TypeError, AttributeError):
                continue
        return out

    def ledger_append(self, entry: LedgerEntry) -> None:
        if not entry.collected_at:
            entry.collected_at = now_iso()
        if entry.tables is not None:
            entry.tables = sorted(set(entry.tables))
        crash_point()
        name = f"{time.time_ns():020d}-{secrets.token_hex(4)}.json"
        self.put(self._key(LEDGER_PREFIX, name), json.dumps(asdict(entry), sort_keys=True).encode())

    def _table_created(self) -> dict[str, float]:
        out = {}
        for info in self._list(""):
            rel = PurePosixPath(info.path).relative_to(self.root)
            if len(rel.parts) == 2 and rel.name == TABLE_META and info.mtime_ns is not None:
                out[rel.parts[0]] = info.mtime_ns / 1e9
        return out


class S3WriteBatch(WriteBatch):
    """Interval files PUT under their final keys as they are merged (no temp objects, no rename): a
    crash between two PUTs leaves each object old or new, and the sources lists keep re-collection exact."""

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        return None

    def _merge(  # type: ignore[override]
        self,
        path: PurePosixPath,
        keys: Sequence[str],
        schema: pa.Schema,
        part: pa.Table,
        source: str,
        presorted: bool,
    ) -> int:
        from flowdiff.store import _SOURCES_KEY, _reaggregate, _sort, _write_parquet

        store: S3Store = self.store  # type: ignore[assignment]
        sources: list[str] = []
        try:
            raw = store._read_bytes(str(path))
        except FileNotFoundError:
            raw = None
        if raw is not None:
            try:
                with pq.ParquetFile(pa.BufferReader(raw)) as f:
                    meta = f.schema_arrow.metadata or {}
                    old = f.read().select(schema.names)
                if old.schema != schema:
                    old = old.cast(schema)
            except (OSError, KeyError, pa.ArrowInvalid) as e:
                raise StoreError(f"{SCHEME}{path}: unreadable interval file: {e}") from None
            sources = json.loads(meta.get(_SOURCES_KEY, b"[]"))
            if source in sources:
                return 0
            part = _reaggregate(pa.concat_tables([old, part]), keys, schema)
        elif not presorted:
            part = _sort(part, keys)
        sources = sorted({*sources, source})
        part = part.replace_schema_metadata({_SOURCES_KEY: json.dumps(sources).encode()})
        sink = pa.BufferOutputStream()
        _write_parquet(part, sink)
        store.put(str(path), sink.getvalue())
        crash_point()
        return part.num_rows

    def commit(self) -> None:
        return None
