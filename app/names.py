"""The spelling rule of names that appear in URL paths (datasets, models, aliases).

No ':' (it introduces actions such as `/aliases/{alias}:rollback`) and no '/'.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import StringConstraints

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"

Name = Annotated[str, StringConstraints(pattern=NAME_PATTERN, min_length=1, max_length=100)]
