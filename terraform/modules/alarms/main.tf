# The two alarms that SageMaker's blue/green update watches (AutoRollbackConfiguration):
# any of them in ALARM during a traffic shift or bake rolls all traffic back to blue.
# Their names are what distracted_driver.hosting.aws.rollback_alarm_names() passes.
locals {
  dimensions = {
    EndpointName = var.endpoint_name
    VariantName  = var.variant_name
  }
}

resource "aws_cloudwatch_metric_alarm" "errors" {
  alarm_name          = "${var.endpoint_name}-invocation-5xx-errors"
  alarm_description   = "Share of ${var.endpoint_name}/${var.variant_name} invocations answered 5xx above ${var.max_error_rate} (minutes under ${var.min_requests} invocations do not count)"
  comparison_operator = "GreaterThanThreshold"
  threshold           = var.max_error_rate
  evaluation_periods  = var.evaluation_periods
  datapoints_to_alarm = var.evaluation_periods
  treat_missing_data  = "notBreaching"
  alarm_actions       = var.alarm_actions

  metric_query {
    id          = "error_rate"
    expression  = "IF(invocations >= ${var.min_requests}, errors / invocations, 0)"
    label       = "5xx share"
    return_data = true
  }

  metric_query {
    id = "errors"

    metric {
      namespace   = "AWS/SageMaker"
      metric_name = "Invocation5XXErrors"
      dimensions  = local.dimensions
      period      = 60
      stat        = "Sum"
    }
  }

  metric_query {
    id = "invocations"

    metric {
      namespace   = "AWS/SageMaker"
      metric_name = "Invocations"
      dimensions  = local.dimensions
      period      = 60
      stat        = "Sum"
    }
  }
}

resource "aws_cloudwatch_metric_alarm" "latency" {
  alarm_name          = "${var.endpoint_name}-model-latency"
  alarm_description   = "p99 ModelLatency of ${var.endpoint_name}/${var.variant_name} above ${var.p99_latency_ms} ms"
  namespace           = "AWS/SageMaker"
  metric_name         = "ModelLatency"
  dimensions          = local.dimensions
  extended_statistic  = "p99"
  period              = 60
  comparison_operator = "GreaterThanThreshold"
  threshold           = var.p99_latency_ms * 1000 # CloudWatch reports ModelLatency in microseconds
  evaluation_periods  = var.evaluation_periods
  datapoints_to_alarm = var.evaluation_periods
  treat_missing_data  = "notBreaching"
  alarm_actions       = var.alarm_actions
}
