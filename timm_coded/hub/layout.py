"""Where an artifact lives on the Hub: the one function that maps it to a branch.

Layout: one repository per (model, dataset); the full model on `main`, the binary classifier of
class c on branch `binary-<c>`, the class-subset classifier s on branch `subset-<s>`. timm reads any of them with
`timm.create_model('hf-hub:ORG/NAME@binary-cat', pretrained=True)`. Exports hold no branch: the
layout is decided here, at publish time, so publishing to another layout is a change to this file.
"""
from __future__ import annotations

import re
from typing import Optional

from ..errors import TimmCodedError


__all__ = ['artifact_branch', 'MAIN_BRANCH']

MAIN_BRANCH = 'main'


def artifact_branch(kind: str, name: Optional[str] = None) -> str:
    """Branch of an artifact: `main` for the full model, `binary-<class>` for a binary classifier,
    `subset-<name>` for a class-subset classifier (`name`: the class's or the subset's name)."""
    if kind == 'full':
        return MAIN_BRANCH
    if kind not in ('binary', 'subset') or not name:
        raise TimmCodedError(f"a sliced classifier's branch needs its kind and name, got kind={kind!r} name={name!r}")
    slug = re.sub(r'[^a-z0-9]+', '-', name.lower()).strip('-')
    if not slug:
        raise TimmCodedError(f'{kind} name {name!r} has no letters or digits to name a branch with')
    return f'{kind}-{slug}'
