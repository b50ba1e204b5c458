"""The prompt catalog: each version's content schema (content), the SQL store of prompts,
versions and labels (store), version diffs (changes), Jinja templates in a sandbox
(templates) and the YAML files on disk (files).

The functions most callers need are re-exported here, so `catalog.resolve(...)` reads as what
it does; each lives in exactly one module below.
"""

from tunebot.catalog.changes import Diff, diff
from tunebot.catalog.content import (
    VERSION_META,
    PromptContent,
    check_content,
    content_hash,
    parse_content,
    validation_text,
)
from tunebot.catalog.store import (
    History,
    LabelMove,
    PromptSummary,
    check_meta,
    delete,
    ensure_prompt,
    get_prompt,
    get_version,
    history,
    insert_version,
    labels_of,
    latest_version,
    list_prompts,
    prompt_of,
    resolve,
    save_version,
    set_label,
    set_metadata,
    versions_of,
)

__all__ = [
    "VERSION_META", "Diff", "History", "LabelMove", "PromptContent", "PromptSummary",
    "check_content", "check_meta", "content_hash", "delete", "diff", "ensure_prompt",
    "get_prompt", "get_version", "history", "insert_version", "labels_of", "latest_version",
    "list_prompts", "parse_content", "prompt_of", "resolve", "save_version", "set_label",
    "set_metadata", "validation_text", "versions_of",
]
