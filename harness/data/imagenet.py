"""Moved to `embedded.imagenet`; this name is the same module object, kept until the last importer of
`harness.data.imagenet` is updated (then this file goes)."""

import sys

from embedded import imagenet

sys.modules[__name__] = imagenet
