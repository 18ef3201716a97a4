output "alarm_names" {
  description = "Names of the rollback alarms, errors first."
  value       = [aws_cloudwatch_metric_alarm.errors.alarm_name, aws_cloudwatch_metric_alarm.latency.alarm_name]
}
