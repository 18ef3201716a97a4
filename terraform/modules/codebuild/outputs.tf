output "project_name" {
  description = "Name of the CodeBuild project."
  value       = aws_codebuild_project.this.name
}

output "project_arn" {
  description = "ARN of the CodeBuild project (the trigger may start builds of it and nothing else)."
  value       = aws_codebuild_project.this.arn
}

output "parameter_names" {
  description = "SSM parameters holding the pipeline's settings."
  value       = concat([for p in aws_ssm_parameter.setting : p.name], [aws_ssm_parameter.api_key.name])
}
