# Target tracking on invocations per instance for the endpoint's stable variant.
#
# Ordering: the deploy task creates the endpoint (Terraform does not, see the root
# README), and Application Auto Scaling refuses to register a variant that does not
# exist. So this module is empty until `endpoint_exists = true`; `inv infra.apply`
# sets it by looking the endpoint up. Until that second apply, the deploy task's first
# create registers the same target and policy (same names, default values) with boto3;
# both calls are upserts, so this module then adopts the registration. Blue/green
# updates keep the variant name and the instance count, so the registration holds.
locals {
  resource_id = "endpoint/${var.endpoint_name}/variant/${var.variant_name}"
}

resource "aws_appautoscaling_target" "variant" {
  count = var.enabled ? 1 : 0

  service_namespace  = "sagemaker"
  resource_id        = local.resource_id
  scalable_dimension = "sagemaker:variant:DesiredInstanceCount"
  min_capacity       = var.min_instances
  max_capacity       = var.max_instances
}

resource "aws_appautoscaling_policy" "invocations" {
  count = var.enabled ? 1 : 0

  name               = "${var.endpoint_name}-${var.variant_name}-invocations-per-instance"
  policy_type        = "TargetTrackingScaling"
  service_namespace  = aws_appautoscaling_target.variant[0].service_namespace
  resource_id        = aws_appautoscaling_target.variant[0].resource_id
  scalable_dimension = aws_appautoscaling_target.variant[0].scalable_dimension

  target_tracking_scaling_policy_configuration {
    target_value       = var.target_invocations
    scale_out_cooldown = var.scale_out_cooldown_seconds
    scale_in_cooldown  = var.scale_in_cooldown_seconds

    predefined_metric_specification {
      predefined_metric_type = "SageMakerVariantInvocationsPerInstance"
    }
  }
}
