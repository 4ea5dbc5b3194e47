"""Who judged: the judge's identity stored with every score, the slug its files are named by, and
the cache key of one judgment.

The identity is ``{"backend", "model", "host", "prompt"}``: the backend (``local`` or ``openai``),
the judge model as configured (an alias, directory or hub id; the name the endpoint serves), the
endpoint's ``host:port`` (None for a local judge) and the judge prompt's name. The API key is no
part of it, nor is the base URL itself (it may hold credentials): only its host and port.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import re
from typing import Any
from urllib.parse import urlsplit

from pefteval.config import JudgeConfig

# the endpoint the openai client talks to when no base_url is given
OPENAI_BASE_URL = "https://api.openai.com/v1"


def endpoint_host(base_url: str | None) -> str:
    """``host:port`` of an endpoint URL (the scheme's default port when it names none); user name and
    password in the URL, if any, are left out."""
    parts = urlsplit(base_url or OPENAI_BASE_URL)
    host = parts.hostname or ""
    try:
        port = parts.port
    except ValueError:
        port = None
    port = port or (443 if parts.scheme == "https" else 80)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def is_loopback(host: str) -> bool:
    """Whether ``host`` (as :func:`endpoint_host` gives it) is this machine: localhost, 127.0.0.0/8, ::1."""
    name = host.rsplit(":", 1)[0].strip("[]").lower()
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def judge_host(judge: JudgeConfig) -> str | None:
    """The endpoint's ``host:port`` for the openai backend, None for the local one."""
    return endpoint_host(judge.base_url) if judge.backend == "openai" else None


def judge_identity(judge: JudgeConfig, prompt: str | None = None) -> dict[str, Any]:
    """The identity stored with every score (``prompt``: the judge prompt's name; None for the judge
    as a whole, as the sanity check's file and the summary name it)."""
    return {"backend": judge.backend, "model": judge.model, "host": judge_host(judge), "prompt": prompt}


def judge_slug(judge: JudgeConfig) -> str:
    """A file-name-safe name for the judge (backend, model and endpoint host), e.g.
    ``local_smollm2-135m_3f2a9c1e`` or ``openai_gpt-4o_api.openai.com-443_7b0d...``: readable parts of
    safe characters only, and 8 hex digits of the identity's hash so that two judges whose readable
    parts coincide (two directories of one name, a cut long name) never share a file."""
    identity = judge_identity(judge)
    model = judge.model.rstrip("/\\")
    if judge.backend == "local":
        model = re.split(r"[/\\]", model)[-1] or model  # a directory's last part
    parts = [judge.backend, model] + ([identity["host"].replace(":", "-")] if identity["host"] else [])
    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", "_".join(parts)).strip("._-")[:80]
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode("utf-8")).hexdigest()[:8]
    return f"{readable}_{digest}"


def cache_key(identity: dict[str, Any], system: str, user: str) -> str:
    """sha256 of the judge identity (with the prompt's name), the system prompt and the user prompt
    (which holds the answer judged): one judgment per (answer, judge)."""
    payload = json.dumps({"judge": identity, "system": system, "user": user}, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()
