"""The example consumer's image (examples/consumer/Dockerfile), built FROM the Debian base of
tests/support/images.py and cached by content like every image there:

    image = consumer_image()     # image.name for a pod's `image:`, image.archive for `ctr images import`
"""

from __future__ import annotations

from tests.support import images
from tests.support.images import REPO, Image

CONSUMER_DOCKERFILE = REPO / "examples" / "consumer" / "Dockerfile"


def consumer_image() -> Image:
    base = images.base_image()
    return images.dockerfile_image("flowkeeper-consumer", REPO, CONSUMER_DOCKERFILE, build_args={"BASE": base.name}, bases=[base])
