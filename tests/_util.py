"""Small helpers for tests: file checksums to prove inputs are never modified."""

import hashlib
from pathlib import Path


def tree_checksums(root) -> dict:
    """sha256 and mtime of every file under ``root`` (or of one file)."""
    root = Path(root)
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    return {
        str(p): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns) for p in files
    }
