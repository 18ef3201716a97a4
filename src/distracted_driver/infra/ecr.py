"""The serving image in ECR: is a tag there already, and what would the lifecycle policy expire.

``image_exists`` lets ``inv infra.push-image`` skip a push that an IMMUTABLE
repository would refuse ("tag already exists"): a second build of the same
commit (the S3 trigger starts those) pushes nothing and says so.

``lifecycle_expired`` applies an ECR lifecycle policy as ECR documents it, so
that the Terraform policy can be checked against the images a deploy keeps:

- rules are applied lowest ``priority`` first; an image matched by a rule's
  selection is never seen by a later rule, whether that rule expires it or not;
- ``tagStatus`` ``tagged`` with ``tagPrefixList`` matches an image with any tag
  starting with any of the prefixes; ``untagged`` matches images without tags;
  ``any`` matches every image (and must be the last rule);
- ``imageCountMoreThan`` N keeps the newest N matched images (by push time) and
  expires the rest.
"""

from __future__ import annotations

from dataclasses import dataclass

from botocore.exceptions import ClientError


@dataclass(frozen=True)
class Image:
    digest: str
    tags: tuple[str, ...]
    pushed: float  # seconds; only the order matters


def _matches(selection: dict, image: Image) -> bool:
    status = selection.get("tag_status", selection.get("tagStatus"))
    prefixes = selection.get("tag_prefix_list", selection.get("tagPrefixList")) or []
    if status == "any":
        return True
    if status == "untagged":
        return not image.tags
    if status == "tagged":
        return any(tag.startswith(prefix) for tag in image.tags for prefix in prefixes)
    raise ValueError(f"unknown tagStatus {status!r}")


def lifecycle_expired(rules: list[dict], images: list[Image]) -> set[str]:
    """Digests of the images the rules expire (rules as Terraform's lifecycle policy document blocks)."""
    ordered = sorted(rules, key=lambda rule: int(rule["priority"]))
    if any(_selection(rule).get("tag_status") == "any" for rule in ordered[:-1]):
        raise ValueError("a rule with tag_status any must come last (ECR refuses the policy otherwise)")
    remaining = sorted(images, key=lambda image: image.pushed, reverse=True)  # newest first
    expired: set[str] = set()
    for rule in ordered:
        selection = _selection(rule)
        matched = [image for image in remaining if _matches(selection, image)]
        count_type = selection.get("count_type")
        if count_type != "imageCountMoreThan":
            raise ValueError(f"count_type {count_type!r} is not modelled here")
        if _action(rule) == "expire":
            expired |= {image.digest for image in matched[int(selection["count_number"]) :]}
        remaining = [image for image in remaining if image not in matched]
    return expired


def _selection(rule: dict) -> dict:
    selection = rule.get("selection")
    return selection[0] if isinstance(selection, list) else selection


def _action(rule: dict) -> str:
    action = rule.get("action") or [{"type": "expire"}]
    return (action[0] if isinstance(action, list) else action).get("type", "expire")


def image_exists(ecr, repository: str, tag: str) -> bool:
    """Is ``repository:tag`` in ECR already? (DescribeImages; an unknown tag is ImageNotFoundException.)"""
    try:
        found = ecr.describe_images(repositoryName=repository, imageIds=[{"imageTag": tag}])["imageDetails"]
    except ClientError as error:
        if error.response.get("Error", {}).get("Code") == "ImageNotFoundException":
            return False
        raise
    return bool(found)


def split_image(image: str) -> tuple[str, str, str]:
    """``registry/repository:tag`` → (registry, repository, tag)."""
    name, _, tag = image.rpartition(":")
    registry, _, repository = name.partition("/")
    if not (registry and repository and tag):
        raise ValueError(f"not registry/repository:tag: {image!r}")
    return registry, repository, tag
