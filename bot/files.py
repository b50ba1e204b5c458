"""Dataset files shared in Slack: fetched with the bot token from trusted hosts only, capped in
size, the format decided by name and content (never Slack's mimetype), then validated and stored
exactly like `tunebot dataset add`."""

from __future__ import annotations

import re
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from tunebot.datasets.uploads import Pending
from tunebot.errors import UserError
from tunebot.settings import Settings

DATASET_ADD = re.compile(
    r"^\s*(?:<@[A-Z0-9]+(?:\|[^>]*)?>\s*)?/?(?:tunebot\s+)?dataset\s+add\s+(\S+)"
    r"(?:\s+expected=(\S+))?\s*$", re.I)
SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


def requested(text: str) -> Pending | None:
    """NAME (and COLUMN) when the message says `dataset add NAME [expected=COLUMN]`
    (optionally after a mention)."""
    m = DATASET_ADD.match(text or "")
    return Pending(m.group(1), m.group(2)) if m else None


def trusted(url: str, hosts: list[str]) -> bool:
    """Whether the URL is https (or a configured local host) on one of TUNEBOT_SLACK_FILE_HOSTS."""
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    netloc = parts.netloc.lower().rsplit("@", 1)[-1]
    allowed = {h.lower() for h in hosts}
    if host not in allowed and netloc not in allowed:
        return False
    return parts.scheme == "https" or (parts.scheme == "http" and host in allowed
                                       and host in ("127.0.0.1", "localhost", "::1"))


def download(file: dict[str, Any], token: str, settings: Settings, dest_dir: Path) -> Path:
    """Fetch a shared file into dest_dir under its own (sanitised) name; UserError if refused."""
    name = SAFE_NAME.sub("_", Path(str(file.get("name") or "upload")).name)[:100] or "upload"
    url = file.get("url_private_download") or file.get("url_private") or ""
    limit = settings.max_upload_mb * 1024 * 1024
    if not url:
        raise UserError(f"{name}: Slack gave no download link for this file")
    if not trusted(url, settings.slack_file_hosts):
        raise UserError(f"{name}: refused to download from {urlsplit(url).hostname or url[:60]} "
                        "— files are fetched only from TUNEBOT_SLACK_FILE_HOSTS "
                        f"({', '.join(settings.slack_file_hosts)})")
    if int(file.get("size") or 0) > limit:
        raise UserError(f"{name} is {int(file['size']) / 1e6:.1f} MB; the limit is "
                        f"{settings.max_upload_mb} MB (TUNEBOT_MAX_UPLOAD_MB)")
    path = dest_dir / name
    try:
        _fetch(url, token, path, name, limit, settings.max_upload_mb)
    except httpx.HTTPError as exc:  # refused, reset, timed out: say so, never crash the listener
        raise UserError(f"{name}: download from Slack failed ({exc.__class__.__name__}); "
                        "try sharing it again") from exc
    return path


def _fetch(url: str, token: str, path: Path, name: str, limit: int, limit_mb: int) -> None:
    got = 0
    # No redirects: a redirect is Slack's sign-in page, and the token stays with this host.
    with httpx.stream("GET", url, headers={"Authorization": f"Bearer {token}"}, timeout=60,
                      follow_redirects=False) as resp:
        if resp.status_code in (301, 302, 303, 307, 308) or "text/html" in resp.headers.get(
                "content-type", ""):
            raise UserError(f"{name}: Slack did not let the bot read this file (is the app in "
                            "this channel, with the files:read scope?)")
        if resp.status_code != 200:
            raise UserError(f"{name}: download failed (HTTP {resp.status_code}); try again")
        with open(path, "wb") as out:
            for chunk in resp.iter_bytes(1 << 16):
                got += len(chunk)
                if got > limit:
                    raise UserError(f"{name} is over the {limit_mb} MB limit "
                                    "(TUNEBOT_MAX_UPLOAD_MB)")
                out.write(chunk)


def staging_dir(settings: Settings) -> Path:
    """A fresh folder for one upload, under var/ (removed by the caller); OSError when var/
    cannot be written (the caller answers it)."""
    root = settings.var_dir / "uploads"
    root.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(dir=root))
