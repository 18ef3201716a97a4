locals {
  # One entry per bucket: every per-bucket resource below is a for_each over this map
  # (or over the part of it a setting applies to), so a bucket's settings read in one place.
  buckets = {
    # the pipeline's bucket: raw images and manifests, channels, models, registry, run records
    data = {
      sse_kms           = true    # SSE-KMS with the pipeline's key, bucket keys on
      access_log_prefix = "data/" # where its S3 server access logs go in the log bucket
      lifecycle_rules = [
        { id = "expire-replaced-models", prefix = "${var.models_prefix}/", expiration_days = null, noncurrent_days = var.noncurrent_model_version_days, abort_upload_days = null },
        { id = "abort-incomplete-uploads", prefix = "", expiration_days = null, noncurrent_days = null, abort_upload_days = 7 },
      ]
    }
    # CodeBuild artifacts and test reports
    artifacts = {
      sse_kms           = true
      access_log_prefix = "artifacts/"
      lifecycle_rules = [
        { id = "expire-build-artifacts", prefix = "", expiration_days = var.artifact_expiration_days, noncurrent_days = 7, abort_upload_days = 7 },
      ]
    }
    # the S3 server access logs of the other two: the log target itself logs nowhere, and
    # takes SSE-S3 because access logging cannot deliver to SSE-KMS buckets
    logs = {
      sse_kms           = false
      access_log_prefix = null
      lifecycle_rules = [
        { id = "expire-access-logs", prefix = "", expiration_days = 365, noncurrent_days = 7, abort_upload_days = 7 },
      ]
    }
  }
  access_logged = { for name, bucket in local.buckets : name => bucket.access_log_prefix if bucket.access_log_prefix != null }
}

# --- the key ---------------------------------------------------------------------

data "aws_iam_policy_document" "key" {
  #checkov:skip=CKV_AWS_109:A key policy's "*" resource means this key only; administration stays with the account's IAM policies, as AWS's default key policy does.
  #checkov:skip=CKV_AWS_111:A key policy's "*" resource means this key only; writes need an IAM policy of this account that names the key.
  #checkov:skip=CKV_AWS_356:A key policy's "*" resource means this key only; it cannot name the key's own ARN before the key exists.
  # Key administration and use stay with the account's IAM policies (the roles in the
  # iam module are granted use of this key by ARN); CloudWatch Logs needs the key
  # policy itself to encrypt this account's log groups.
  statement {
    sid       = "AccountAdministers"
    actions   = ["kms:*"]
    resources = ["*"]

    principals {
      type        = "AWS"
      identifiers = ["arn:${var.partition}:iam::${var.account_id}:root"]
    }
  }

  statement {
    sid       = "CloudWatchLogsEncrypt"
    actions   = ["kms:Encrypt*", "kms:Decrypt*", "kms:ReEncrypt*", "kms:GenerateDataKey*", "kms:Describe*"]
    resources = ["*"]

    principals {
      type        = "Service"
      identifiers = ["logs.${var.region}.amazonaws.com"]
    }

    condition {
      test     = "ArnLike"
      variable = "kms:EncryptionContext:aws:logs:arn"
      values   = ["arn:${var.partition}:logs:${var.region}:${var.account_id}:log-group:*"]
    }
  }
}

resource "aws_kms_key" "this" {
  description             = "${var.name}: buckets, logs, parameters, images"
  enable_key_rotation     = true
  deletion_window_in_days = 30
  policy                  = data.aws_iam_policy_document.key.json
}

resource "aws_kms_alias" "this" {
  name          = "alias/${var.name}"
  target_key_id = aws_kms_key.this.key_id
}

# --- buckets -------------------------------------------------------------------------

resource "aws_s3_bucket" "this" {
  #checkov:skip=CKV_AWS_144:Cross-region replication doubles storage cost; the data bucket's contents are rebuilt from its versioned raw images, build artifacts by rerunning a build, and access logs stay in-region.
  #checkov:skip=CKV2_AWS_62:The trigger module's aws_s3_bucket_notification sends the data bucket's new manifests to the trigger Lambda (checkov cannot follow the bucket across modules; `inv infra.check` verifies that wiring); nothing reacts to new artifacts or access logs.
  #checkov:skip=CKV_AWS_18:The log bucket is the access-log target and logging it into itself would loop; every other bucket logs into it (the bucket-access-logs check of `inv infra.check`).
  #checkov:skip=CKV_AWS_145:S3 server access logging only delivers to targets encrypted with SSE-S3, so the log bucket uses SSE-S3; every other bucket is SSE-KMS with the pipeline's key (the bucket-encryption check of `inv infra.check`).
  #checkov:skip=CKV_AWS_19:checkov does not join a for_each bucket to its for_each encryption configuration; every bucket has one, SSE-KMS or (the log target) SSE-S3 (the bucket-settings and bucket-encryption checks of `inv infra.check`).
  for_each = local.buckets

  bucket        = "${var.name}-${each.key}-${var.account_id}-${var.region}"
  force_destroy = var.force_destroy
}

resource "aws_s3_bucket_public_access_block" "this" {
  for_each = local.buckets

  bucket                  = aws_s3_bucket.this[each.key].id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_ownership_controls" "this" {
  for_each = local.buckets

  bucket = aws_s3_bucket.this[each.key].id

  rule {
    object_ownership = "BucketOwnerEnforced"
  }
}

resource "aws_s3_bucket_versioning" "this" {
  for_each = local.buckets

  bucket = aws_s3_bucket.this[each.key].id

  versioning_configuration {
    status = "Enabled"
  }
}

resource "aws_s3_bucket_server_side_encryption_configuration" "this" {
  for_each = local.buckets

  bucket = aws_s3_bucket.this[each.key].id

  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm     = each.value.sse_kms ? "aws:kms" : "AES256"
      kms_master_key_id = each.value.sse_kms ? aws_kms_key.this.arn : null
    }
    bucket_key_enabled = each.value.sse_kms ? true : null
  }
}

resource "aws_s3_bucket_logging" "this" {
  for_each = local.access_logged

  bucket        = aws_s3_bucket.this[each.key].id
  target_bucket = aws_s3_bucket.this["logs"].id
  target_prefix = each.value
}

resource "aws_s3_bucket_lifecycle_configuration" "this" {
  #checkov:skip=CKV_AWS_300:checkov does not evaluate the rules' dynamic abort_incomplete_multipart_upload blocks; every bucket has a rule that aborts incomplete uploads (the bucket-abort-uploads check of `inv infra.check`).
  for_each = local.buckets

  bucket = aws_s3_bucket.this[each.key].id

  dynamic "rule" {
    for_each = each.value.lifecycle_rules

    content {
      id     = rule.value.id
      status = "Enabled"

      filter {
        prefix = rule.value.prefix # "" is every object; an empty filter {} warns from provider 5.90 on
      }

      dynamic "expiration" {
        for_each = rule.value.expiration_days == null ? [] : [rule.value.expiration_days]

        content {
          days = expiration.value
        }
      }

      dynamic "noncurrent_version_expiration" {
        for_each = rule.value.noncurrent_days == null ? [] : [rule.value.noncurrent_days]

        content {
          noncurrent_days = noncurrent_version_expiration.value
        }
      }

      dynamic "abort_incomplete_multipart_upload" {
        for_each = rule.value.abort_upload_days == null ? [] : [rule.value.abort_upload_days]

        content {
          days_after_initiation = abort_incomplete_multipart_upload.value
        }
      }
    }
  }

  depends_on = [aws_s3_bucket_versioning.this]
}

# --- bucket policies: TLS only; the log bucket also takes S3's access-log deliveries ----

data "aws_iam_policy_document" "bucket" {
  for_each = local.buckets

  statement {
    sid       = "DenyInsecureTransport"
    effect    = "Deny"
    actions   = ["s3:*"]
    resources = [aws_s3_bucket.this[each.key].arn, "${aws_s3_bucket.this[each.key].arn}/*"]

    principals {
      type        = "*"
      identifiers = ["*"]
    }

    condition {
      test     = "Bool"
      variable = "aws:SecureTransport"
      values   = ["false"]
    }
  }

  dynamic "statement" {
    for_each = each.key == "logs" ? ["S3ServerAccessLogs"] : []

    content {
      sid       = statement.value
      actions   = ["s3:PutObject"]
      resources = ["${aws_s3_bucket.this[each.key].arn}/*"]

      principals {
        type        = "Service"
        identifiers = ["logging.s3.amazonaws.com"]
      }

      condition {
        test     = "StringEquals"
        variable = "aws:SourceAccount"
        values   = [var.account_id]
      }

      condition {
        test     = "ArnLike"
        variable = "aws:SourceArn"
        values   = [for name, _ in local.access_logged : aws_s3_bucket.this[name].arn]
      }
    }
  }
}

resource "aws_s3_bucket_policy" "this" {
  for_each = local.buckets

  bucket = aws_s3_bucket.this[each.key].id
  policy = data.aws_iam_policy_document.bucket[each.key].json

  depends_on = [aws_s3_bucket_public_access_block.this]
}
