output "function_name" {
  description = "Name of the trigger Lambda."
  value       = aws_lambda_function.trigger.function_name
}

output "function_arn" {
  description = "ARN of the trigger Lambda."
  value       = aws_lambda_function.trigger.arn
}

output "dead_letter_queue_url" {
  description = "Queue of S3 events the trigger could not handle."
  value       = aws_sqs_queue.dead_letters.url
}
