output "resource_id" {
  description = "endpoint/<endpoint>/variant/<variant>, or null while disabled."
  value       = var.enabled ? aws_appautoscaling_target.variant[0].resource_id : null
}
