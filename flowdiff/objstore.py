"""The store on object storage: the S3 side (URL, filesystem, errors); the store itself is
``flowdiff.store.S3Store``. : ``store = "s3://bucket/prefix"`` (AWS S3, MinIO, Ceph RGW).

Same layout as a local store (see flowdiff.store), as keys under the prefix, through pyarrow's S3
filesystem (no extra dependency). Credentials come from the standard AWS chain (``AWS_ACCESS_KEY_ID`` /
``AWS_SECRET_ACCESS_KEY`` / ``AWS_SESSION_TOKEN``, ``~/.aws/credentials``, ``AWS_PROFILE``, instance
roles): never from the command line, never logged. The endpoint of a non-AWS service comes from
``[s3] endpoint_url`` in the config, else ``$AWS_ENDPOINT_URL``.

Crash safety without rename (S3 has none, and no append):

* an interval file is written once under its final key: a PUT of the whole object is atomic, readers
  see the old object or the new one, never a part. Its sources list (Parquet metadata) makes the merge
  exact if the capture is collected again after a crash, as on a local store.
* the ledger is one small object per entry under ``_ledger/<sensor>/`` (``<time ns>-<random>.json``),
  written after the data; read back in key order. A crash before it means the capture is read again, and
  the sources lists keep every count single. Collect folds them into one ``<stem>.fold.jsonl`` object
  once ``LEDGER_FOLD`` have piled up (``S3Store.fold_ledger``): a ledger read stays a few GETs.
* locks: S3 has no lock. The writer lock is a local file lock per store and sensor (in the temp folder of
  the machine): one sensor is one writer (one collect at a time on its own host), and sensors write
  disjoint ``sensor=`` partitions. Two hosts must never collect under the same sensor name into one
  bucket prefix.

Errors (unreachable endpoint, wrong credentials, missing bucket) become one line naming the store and
what is wrong (:class:`StoreError`); the first access checks the bucket, so nothing is half-written.
"""

from __future__ import annotations

import os
from typing import Any

from flowdiff.errors import StoreError

SCHEME = "s3://"
LEDGER_PREFIX = "_ledger"
ENDPOINT_ENV = "AWS_ENDPOINT_URL"


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
