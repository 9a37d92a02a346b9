"""Moved to `embedded.fashion_mnist`; this name is the same module object, kept until the last importer of
`harness.data.fashion_mnist` is updated (then this file goes)."""

import sys

from embedded import fashion_mnist

sys.modules[__name__] = fashion_mnist
