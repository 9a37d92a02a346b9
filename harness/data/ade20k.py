"""Moved to `embedded.ade20k`; this name is the same module object, kept until the last importer of
`harness.data.ade20k` is updated (then this file goes)."""

import sys

from embedded import ade20k

sys.modules[__name__] = ade20k
