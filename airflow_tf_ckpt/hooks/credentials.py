"""Credentials for ``gs://``: an Airflow connection's extras -> google-auth credentials for gcsfs.

The extras are read the way the Google provider reads a "Google Cloud" connection (``key_path``,
``keyfile_dict``, ``project``, ``is_anonymous``, ``access``, ``endpoint_url``; bare or prefixed
``extra__google_cloud_platform__`` / ``extra__tf_ckpt_storage__``), WITHOUT needing
apache-airflow-providers-google: the key is turned into google-auth credentials here and handed to
gcsfs. Errors about a key say which field is wrong, never its content (the underlying exception text
is dropped, since parsers and token endpoints may echo what they were given), and every string of a
keyfile is collected in :attr:`GcsAuth.secrets` so that the hook can mask and redact them.

No Airflow here: the hook fetches the connection and passes its extras in.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from airflow_tf_ckpt.core.errors import StorageError
from airflow_tf_ckpt.core.storage.location import GCS_PROTOCOLS

EXTRA_PREFIXES = ("", "extra__tf_ckpt_storage__", "extra__google_cloud_platform__")
# Google-connection features that would silently change identity if ignored: refuse them.
UNSUPPORTED_EXTRAS = ("key_secret_name", "credential_config_file", "impersonation_chain", "idp_issuer_url")
ACCESS_SCOPES = {
    "read_only": "https://www.googleapis.com/auth/devstorage.read_only",
    "read_write": "https://www.googleapis.com/auth/devstorage.read_write",
    "full_control": "https://www.googleapis.com/auth/devstorage.full_control",
}
_MIN_SECRET_LEN = 5  # shorter strings ("1", "true") would redact ordinary words


class StorageCredentialsError(StorageError):
    """A connection's credentials are missing, malformed or unsupported (the text never holds them)."""


def url_protocol(url: str | os.PathLike[str]) -> str:
    """The URL's scheme, lower case; ``file`` for a plain path."""
    url = os.fspath(url)
    return url.split("://", 1)[0].lower() if "://" in url else "file"


def is_gcs_url(url: str | os.PathLike[str]) -> bool:
    """Whether ``url`` is served by gcsfs (``gs://`` or ``gcs://``)."""
    return url_protocol(url) in GCS_PROTOCOLS


def _extra(extras: Mapping[str, Any], name: str) -> Any:
    for prefix in EXTRA_PREFIXES:
        value = extras.get(prefix + name)
        if value not in (None, ""):
            return value
    return None


def _truthy(value: Any) -> bool:
    return value is True or (isinstance(value, str) and value.strip().lower() in ("1", "true", "yes", "on"))


def _strings(value: Any) -> Iterable[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, Mapping):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _strings(v)


@dataclass
class GcsAuth:
    """What a connection resolves to for gcsfs. ``token`` may hold credentials: never log it."""

    token: Any = None  # google-auth Credentials, "anon", "google_default" or None (decided later)
    project: str | None = None
    endpoint_url: str | None = None
    access: str = "full_control"
    secrets: set[str] = field(default_factory=set)

    def __repr__(self) -> str:  # the dataclass default would print the credentials
        return (
            f"GcsAuth(token={type(self.token).__name__}, project={self.project!r}, "
            f"endpoint_url={self.endpoint_url!r}, access={self.access!r})"
        )


def gcs_auth_from_extras(extras: Mapping[str, Any], conn_id: str | None = None) -> GcsAuth:
    """Turn a connection's extras into gcsfs credentials, as the Google provider would read them.

    Raises :class:`StorageCredentialsError` naming the field (never its value) when the key is
    malformed, when both ``key_path`` and ``keyfile_dict`` are set, or when an extra asks for a
    feature we do not implement (secret-manager keys, impersonation, workload identity federation
    files): silently falling back to default credentials would act as another identity.
    """
    who = f"connection {conn_id!r}" if conn_id else "the storage connection"
    _refuse_unsupported(extras, who)
    access = _extra(extras, "access") or "full_control"
    if access not in ACCESS_SCOPES:
        raise StorageCredentialsError(f"{who}: extra 'access' must be one of {sorted(ACCESS_SCOPES)}")
    project, endpoint = _extra(extras, "project"), _extra(extras, "endpoint_url")
    auth = GcsAuth(
        project=str(project) if project else None,
        endpoint_url=str(endpoint) if endpoint else None,
        access=access,
    )
    if _truthy(_extra(extras, "is_anonymous")):
        auth.token = "anon"
        return auth
    key = _key_info(extras, who, auth.secrets)
    if key is not None:
        info, what = key
        auth.secrets.update(s for s in _strings(info) if len(s) >= _MIN_SECRET_LEN)
        auth.token, key_project = _credentials_from_info(info, [ACCESS_SCOPES[access]], what)
        auth.project = auth.project or key_project
    return auth


def _refuse_unsupported(extras: Mapping[str, Any], who: str) -> None:
    for name in UNSUPPORTED_EXTRAS:
        if _extra(extras, name):
            raise StorageCredentialsError(
                f"{who}: extra {name!r} is not supported by airflow-tf-ckpt; use key_path, keyfile_dict "
                "or application default credentials"
            )


def _key_info(extras: Mapping[str, Any], who: str, secrets: set[str]) -> tuple[Mapping[str, Any], str] | None:
    """The key's JSON object and how to name it in errors; None for application default credentials.

    A ``keyfile_dict`` string is added to ``secrets`` before it is parsed (a parse error must not
    leave it unregistered).
    """
    key_path, keyfile = _extra(extras, "key_path"), _extra(extras, "keyfile_dict")
    if key_path and keyfile:
        raise StorageCredentialsError(f"{who}: set only one of key_path and keyfile_dict")
    if keyfile:
        what = f"{who}: keyfile_dict"
        if isinstance(keyfile, str):
            secrets.add(keyfile)
            try:
                keyfile = json.loads(keyfile)
            except ValueError:
                raise StorageCredentialsError(f"{what} is not valid JSON") from None
        if not isinstance(keyfile, Mapping):
            raise StorageCredentialsError(f"{what} must be a JSON object")
        return keyfile, what
    if key_path:
        return _read_key_file(os.path.expanduser(str(key_path)), who)
    return None


def _read_key_file(key_path: str, who: str) -> tuple[Mapping[str, Any], str]:
    # gcsfs would take a path that does not exist for a raw access token and send it to Google.
    if not os.path.isfile(key_path):
        raise StorageCredentialsError(f"{who}: key_path {key_path!r} is not a readable file")
    try:
        with open(key_path, encoding="utf-8") as fh:
            info = json.load(fh)
    except (OSError, ValueError):
        info = None
    if not isinstance(info, Mapping):
        raise StorageCredentialsError(f"{who}: key_path {key_path!r} is not a JSON key file")
    return info, f"{who}: key_path {key_path!r}"


_AUTH_CACHE: dict[str, GcsAuth] = {}
_AUTH_LOCK = threading.Lock()


def _auth_key(conn_id: str | None, extras: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps([conn_id, extras], sort_keys=True, default=str).encode()).hexdigest()


def peek_auth(conn_id: str | None, extras: Mapping[str, Any]) -> GcsAuth | None:
    """The cached :class:`GcsAuth` of this connection content, if already built (no I/O)."""
    with _AUTH_LOCK:
        return _AUTH_CACHE.get(_auth_key(conn_id, extras))


def cached_auth(conn_id: str | None, extras: Mapping[str, Any]) -> GcsAuth:
    """One :class:`GcsAuth` per connection content, shared by every hook of the process.

    A triggerer may run 1000 triggers on one connection: they then share one credentials object
    (one token refresh an hour, not 1000) and one aiohttp session. Keyed by a hash: no secret is
    kept in the key.
    """
    key = _auth_key(conn_id, extras)
    with _AUTH_LOCK:
        auth = _AUTH_CACHE.get(key)
    if auth is None:
        auth = gcs_auth_from_extras(extras, conn_id)
        with _AUTH_LOCK:
            auth = _AUTH_CACHE.setdefault(key, auth)
    return auth


def _credentials_from_info(info: Mapping[str, Any], scopes: list[str], what: str) -> tuple[Any, str | None]:
    """google-auth credentials of a service-account or authorized-user key (nothing else).

    Type-specific loaders only: google-auth's generic loaders also accept external-account
    configurations (which can run executables) and are deprecated for keys from elsewhere.
    """
    kind = info.get("type")
    try:
        if kind == "service_account":
            from google.oauth2 import service_account

            creds = service_account.Credentials.from_service_account_info(dict(info), scopes=scopes)
            return creds, info.get("project_id")
        if kind == "authorized_user":
            from google.oauth2.credentials import Credentials

            return Credentials.from_authorized_user_info(dict(info), scopes=scopes), info.get(
                "quota_project_id"
            )
    except Exception as exc:  # the message may quote the key: keep only the type
        raise StorageCredentialsError(
            f"{what} is not a usable Google credential ({type(exc).__name__})"
        ) from None
    raise StorageCredentialsError(
        f"{what} is not a usable Google credential (type {kind!r}; expected service_account or "
        "authorized_user)"
    )
