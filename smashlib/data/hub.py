"""Fetching built-in datasets from the Hugging Face Hub without hanging, and failing with a useful error.

``datasets`` retries an unreachable Hub five times with back-off (about 25 s here) before it gives up.
So before the first request we open one TCP connection to the Hub endpoint with a short timeout
(``HF_HUB_ETAG_TIMEOUT`` seconds, default 10): an unreachable Hub is reported at once. In offline mode
(``HF_HUB_OFFLINE=1`` or ``HF_DATASETS_OFFLINE=1``) nothing is probed and ``datasets`` reads its cache,
failing fast when the data is not there. Behind a proxy the probe is skipped (a direct connection
would fail while the Hub is reachable through the proxy). Every failure becomes a
``DatasetUnavailableError`` that names the dataset and says how to pass local data instead.
"""
from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlparse

from smashlib.data.errors import DatasetUnavailableError
from smashlib.errors import SmashError

PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")
TRUE_VALUES = {"1", "true", "yes", "on"}


def offline() -> bool:
    """Whether the user asked the Hugging Face libraries not to use the network."""
    if any(os.environ.get(name, "").strip().lower() in TRUE_VALUES for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")):
        return True
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def probe_timeout() -> float:
    try:
        return float(os.environ.get("HF_HUB_ETAG_TIMEOUT", "10"))
    except ValueError:
        return 10.0


def unreachable_reason() -> str | None:
    """Why the Hub endpoint cannot be reached, or None when a TCP connection to it opens (or when the
    check does not apply: offline mode, a proxy)."""
    if offline() or any(os.environ.get(name) for name in PROXY_VARIABLES):
        return None
    from huggingface_hub import constants

    endpoint = urlparse(constants.ENDPOINT)
    host = endpoint.hostname or "huggingface.co"
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=probe_timeout()):
            return None
    except OSError as error:
        return f"cannot connect to {host}:{port} ({error})"


def local_data_hint(collate_fn: str) -> str:
    return (
        "To use local data instead, pass datasets.Dataset objects: "
        f"cfg.add_data((train, val, test), collate_fn='{collate_fn}') "
        "(e.g. built with datasets.load_dataset('parquet', data_files=...) or Dataset.from_dict), "
        "cfg.add_data(dataset) to split one dataset 80/10/10, cfg.add_data(list_of_texts), "
        "or the built-in 'PydocTopics', which needs no download."
    )


@contextmanager
def hub_access(name: str, source: str, collate_fn: str) -> Iterator[None]:
    """Run the Hub requests of the built-in dataset ``name`` inside this block: an unreachable Hub fails
    before the block starts, and any failure inside it is re-raised as ``DatasetUnavailableError``."""
    reason = unreachable_reason()
    if reason is None:
        try:
            yield
            return
        except SmashError:
            raise
        except Exception as error:  # noqa: BLE001 - every failure to fetch gets the same useful message
            reason = f"{type(error).__name__}: {error}"
            cause: BaseException | None = error
    else:
        cause = None
    if offline():
        reason += " (HF_HUB_OFFLINE is set, so only the local cache was read)"
    else:
        reason += " (if it is in your local cache, set HF_HUB_OFFLINE=1 to read it from there)"
    raise DatasetUnavailableError(
        f"the built-in dataset '{name}' could not be loaded from the Hugging Face Hub ({source}): {reason}. "
        + local_data_hint(collate_fn)
    ) from cause
