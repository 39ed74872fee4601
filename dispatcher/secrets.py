"""Secrets referenced from config, never written into it.

A secret reference is a string of one of these forms:

* ``env:NAME`` — the environment variable NAME;
* ``file:/path/to/file`` — the file's content, trailing newline stripped;
* ``credential:NAME`` — ``$CREDENTIALS_DIRECTORY/NAME``, as systemd's ``LoadCredential=``
  provides it.

Resolved values are held as :class:`pydantic.SecretStr`, so printing or logging a config object
shows ``**********`` instead of the value.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import SecretStr


class SecretError(ValueError):
    """A secret reference that cannot be resolved; the message never contains the value."""


SCHEMES = ("env", "file", "credential")


def resolve_secret(reference: str, *, base_dir: Path | None = None) -> SecretStr:
    scheme, sep, name = reference.partition(":")
    if not sep or scheme not in SCHEMES or not name:
        # Never echo the value: it may be a secret pasted in by mistake.
        raise SecretError(
            "the value is not a secret reference; write env:NAME, file:PATH or "
            "credential:NAME (secrets are never written into config files)"
        )
    if scheme == "env":
        value = os.environ.get(name)
        if value is None:
            raise SecretError(f"environment variable {name} is not set")
        return SecretStr(value)
    if scheme == "file":
        path = Path(name)
        if not path.is_absolute() and base_dir is not None:
            path = base_dir / path
        return SecretStr(_read_secret_file(path))
    directory = os.environ.get("CREDENTIALS_DIRECTORY")
    if not directory:
        raise SecretError(
            f"credential {name} requested but CREDENTIALS_DIRECTORY is not set "
            "(run under systemd with LoadCredential= or set it)"
        )
    path = Path(directory) / name
    if not path.exists():
        # systemd skips a LoadCredentialEncrypted=NAME it finds no file for: say where it looks.
        raise SecretError(
            f"credential {name} is not in {directory}: encrypt it into "
            f"/etc/credstore.encrypted/{name} and list it in the unit as "
            f"LoadCredentialEncrypted={name} (deploy/systemd/README.md)"
        )
    return SecretStr(_read_secret_file(path))


def _read_secret_file(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8").rstrip("\r\n")
    except FileNotFoundError:
        raise SecretError(f"secret file {path} does not exist") from None
    except PermissionError:
        raise SecretError(f"secret file {path} is not readable by this user") from None
    except UnicodeDecodeError:
        raise SecretError(f"secret file {path} is not UTF-8 text") from None
