# The two alarms that SageMaker's blue/green update watches (AutoRollbackConfiguration):
# any of them in ALARM during a traffic shift or bake rolls all traffic back to blue.
# Their names are what distracted_driver.hosting.aws.rollback_alarm_names() passes.
# The drift alarm at the end is not one of them: drift calls for new data, not a rollback.
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

# inv monitor.report --backend aws puts Drift = 1 (drift) or 0 (none) for the endpoint's captured
# traffic (distracted_driver.monitor.cloudwatch: DRIFT_NAMESPACE, DRIFT_METRIC, VariantName
# AllVariants for a report over every variant). The thresholds stay in load_test/drift.toml:
# the alarm only carries the report's verdict. Reports run now and then, so missing data keeps
# the last state.
resource "aws_cloudwatch_metric_alarm" "drift" {
  alarm_name          = "${var.endpoint_name}-input-drift"
  alarm_description   = "The captured traffic of ${var.endpoint_name} drifted from the live model's training baseline (inv monitor.report; thresholds in load_test/drift.toml): review reports/monitor, label with inv monitor.export"
  namespace           = "DistractedDriver/Drift"
  metric_name         = "Drift"
  dimensions          = { EndpointName = var.endpoint_name, VariantName = "AllVariants" }
  statistic           = "Maximum"
  period              = var.drift_period_seconds
  comparison_operator = "GreaterThanOrEqualToThreshold"
  threshold           = 1
  evaluation_periods  = 1
  treat_missing_data  = "ignore"
  alarm_actions       = var.alarm_actions
  ok_actions          = var.alarm_actions
}
