output "api_url" {
  description = "Base URL of the stage (https://<id>.execute-api.<region>.amazonaws.com/<stage>)."
  value       = aws_api_gateway_stage.this.invoke_url
}

output "predict_url" {
  description = "POST an image here with an x-api-key header."
  value       = "${aws_api_gateway_stage.this.invoke_url}/predict"
}

output "api_key_value" {
  description = "The pipeline's API key."
  value       = aws_api_gateway_api_key.pipeline.value
  sensitive   = true
}

output "rest_api_id" {
  description = "Id of the REST API."
  value       = aws_api_gateway_rest_api.this.id
}

output "function_name" {
  description = "Name of the predict Lambda."
  value       = aws_lambda_function.predict.function_name
}
