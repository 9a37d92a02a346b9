"""Moved to `embedded.coco`; this name is the same module object, kept until the last importer of
`harness.data.coco` is updated (then this file goes)."""

import sys

from embedded import coco

sys.modules[__name__] = coco
