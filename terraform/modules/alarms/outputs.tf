output "alarm_names" {
  description = "Names of the rollback alarms, errors first."
  value       = [aws_cloudwatch_metric_alarm.errors.alarm_name, aws_cloudwatch_metric_alarm.latency.alarm_name]
}

output "drift_alarm_name" {
  description = "The alarm on inv monitor.report's Drift metric (not a rollback alarm)."
  value       = aws_cloudwatch_metric_alarm.drift.alarm_name
}
