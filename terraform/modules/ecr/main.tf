# The model server's image (scripts/serve.py, the SageMaker hosting contract). Tags
# are immutable: each build pushes a tag named after its commit, and the deploy task
# names that exact tag in the SageMaker model, so a model never changes under it.
resource "aws_ecr_repository" "this" {
  name                 = var.name
  image_tag_mutability = "IMMUTABLE"
  force_delete         = var.force_delete

  image_scanning_configuration {
    scan_on_push = true
  }

  encryption_configuration {
    encryption_type = "KMS"
    kms_key         = var.kms_key_arn
  }
}

# ECR applies the rules lowest priority first; an image that a rule's selection matches is
# never looked at by a later rule. The deploy task adds a "model-<version>" tag to the image
# of every SageMaker model it keeps (the live version and the rollback targets) and removes
# that tag when it deletes the model. Rule 1 holds those images (far fewer than its count),
# so rule 2 only ever expires images that no kept model names: scale-out pulls the image
# again, and it must still be there.
data "aws_ecr_lifecycle_policy_document" "this" {
  rule {
    priority    = 1
    description = "never expire an image a kept model version names (tag ${var.model_tag_prefix}<version>)"

    selection {
      tag_status      = "tagged"
      tag_prefix_list = [var.model_tag_prefix]
      count_type      = "imageCountMoreThan"
      count_number    = 1000
    }

    action {
      type = "expire"
    }
  }

  rule {
    priority    = 2
    description = "keep the newest ${var.images_to_keep} of the other images"

    selection {
      tag_status   = "any"
      count_type   = "imageCountMoreThan"
      count_number = var.images_to_keep
    }

    action {
      type = "expire"
    }
  }
}

resource "aws_ecr_lifecycle_policy" "this" {
  repository = aws_ecr_repository.this.name
  policy     = data.aws_ecr_lifecycle_policy_document.this.json
}
