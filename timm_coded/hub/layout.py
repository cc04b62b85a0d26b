"""Where an artifact lives on the Hub: the one function that maps it to a branch.

Layout: one repository per (model, dataset); the full model on `main`, the binary classifier of
class c on branch `binary-<c>`. timm reads any of them with
`timm.create_model('hf-hub:ORG/NAME@binary-cat', pretrained=True)`. Exports hold no branch: the
layout is decided here, at publish time, so publishing to another layout is a change to this file.
"""
from __future__ import annotations

import re
from typing import Optional

from ..errors import TimmCodedError


__all__ = ['artifact_branch', 'MAIN_BRANCH']

MAIN_BRANCH = 'main'


def artifact_branch(kind: str, class_name: Optional[str] = None) -> str:
    """Branch of an artifact: `main` for the full model, `binary-<class>` for a binary classifier."""
    if kind == 'full':
        return MAIN_BRANCH
    if kind != 'binary' or not class_name:
        raise TimmCodedError(f"a binary classifier's branch needs its class name, got kind={kind!r} class={class_name!r}")
    slug = re.sub(r'[^a-z0-9]+', '-', class_name.lower()).strip('-')
    if not slug:
        raise TimmCodedError(f'class name {class_name!r} has no letters or digits to name a branch with')
    return f'binary-{slug}'
